#!/usr/bin/env bash
# Builds the static `onair` for the appliance: x86_64-unknown-linux-musl (rustup target,
# musl-tools from Debian for ring's C). Falls back to a glibc `+crt-static` build only when the
# musl target or musl-gcc cannot be had. Prints which one it made and where; the path of the
# binary is the last line on stdout (build-image.sh reads it).
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=; [ "$(id -u)" -eq 0 ] || SUDO=sudo
musl=x86_64-unknown-linux-musl
gnu=x86_64-unknown-linux-gnu

have_musl() {
  rustup target list --installed 2>/dev/null | grep -qx "$musl" && command -v musl-gcc >/dev/null
}
if ! have_musl; then
  rustup target add "$musl" >&2 || true
  if ! command -v musl-gcc >/dev/null; then
    { $SUDO apt-get install -y -qq --no-install-recommends musl-tools >/dev/null; } 2>&1 >&2 || true
  fi
fi

if have_musl; then
  echo "==> static build: $musl (musl-gcc for ring)" >&2
  CC_x86_64_unknown_linux_musl=musl-gcc cargo build --release --locked --target "$musl" --bin onair >&2
  out="target/$musl/release/onair"
  kind="musl static"
else
  echo "==> musl not available: glibc +crt-static fallback" >&2
  RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --locked --target "$gnu" --bin onair >&2
  out="target/$gnu/release/onair"
  kind="glibc +crt-static (fallback)"
fi

if file "$out" 2>/dev/null | grep -q dynamically; then
  echo "build-static: $out is dynamically linked" >&2
  exit 1
fi
echo "build-static: built $kind: $out ($(stat -c %s "$out") bytes)" >&2
echo "$out"
