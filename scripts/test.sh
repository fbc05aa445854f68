#!/usr/bin/env bash
# The whole test suite, from a clean clone on Debian: installs the real peers the tests talk to
# (ffmpeg/ffprobe, nginx with the RTMP module, stunnel, openssl, iproute2) when missing, checks format,
# lints and purity, then runs every unit, golden-file and end-to-end test.
set -euo pipefail
cd "$(dirname "$0")/.."

pkgs=()
command -v ffmpeg >/dev/null 2>&1 || pkgs+=(ffmpeg)
command -v ffprobe >/dev/null 2>&1 || pkgs+=(ffmpeg)
command -v nginx >/dev/null 2>&1 || pkgs+=(nginx)
[ -e /usr/lib/nginx/modules/ngx_rtmp_module.so ] || pkgs+=(libnginx-mod-rtmp)
command -v stunnel4 >/dev/null 2>&1 || pkgs+=(stunnel4)
command -v openssl >/dev/null 2>&1 || pkgs+=(openssl)
# tests/init_net.rs: network namespaces and veth pairs (as root; it skips itself otherwise).
command -v ip >/dev/null 2>&1 || pkgs+=(iproute2)
if [ ${#pkgs[@]} -gt 0 ]; then
  echo "==> installing test peers: ${pkgs[*]}"
  SUDO=; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  # Packages must not start their system services (nginx on :80): tests start their own.
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
  $SUDO chmod +x /usr/sbin/policy-rc.d
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
  $SUDO rm -f /usr/sbin/policy-rc.d
fi

echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> cargo clippy"
cargo clippy --all-targets --quiet -- -D warnings
echo "==> purity of the sans-IO cores"
scripts/check-pure.sh
echo "==> cargo test"
mkdir -p target
cargo test --all-targets 2>&1 | tee target/test.log
# Every fuzz target for a short bounded time on the committed corpus (fuzz/, its own
# workspace; scripts/fuzz.sh runs them longer). ONAIR_SKIP_FUZZ=1 skips it.
rm -f target/fuzz.log
if [ "${ONAIR_SKIP_FUZZ:-0}" = 1 ]; then
  echo "==> fuzz skipped (ONAIR_SKIP_FUZZ=1)"
else
  echo "==> fuzz (${ONAIR_FUZZ_SECONDS:-10} s per target)"
  scripts/fuzz.sh --ci "${ONAIR_FUZZ_SECONDS:-10}" 2>&1 | tee target/fuzz.log
fi
echo "==> bench smoke (K=1, onair only, a few seconds: checks delivery, never speed)"
scripts/bench.sh --smoke
# The appliance image, booted in qemu. TCG only (this machine's /dev/kvm cannot boot stock
# kernels, and CI may have none): the test never asks for KVM, so it runs with or without
# /dev/kvm. ONAIR_SKIP_IMAGE_TEST=1 skips it (e.g. a quick local run).
rm -f target/image-test.log
if [ "${ONAIR_SKIP_IMAGE_TEST:-0}" = 1 ]; then
  echo "==> image test skipped (ONAIR_SKIP_IMAGE_TEST=1)"
else
  echo "==> image test (build, boot under TCG, flash)"
  tests/image.sh 2>&1 | tee target/image-test.log
fi
# One closing line with the totals: every cargo test binary, plus the fuzz targets and the
# image test's checks.
image_ok=$(grep -c '^image test: ok:' target/image-test.log 2>/dev/null || true)
fuzz_ok=$(grep -c '^fuzz: ok:' target/fuzz.log 2>/dev/null || true)
awk -v img="${image_ok:-0}" -v fz="${fuzz_ok:-0}" '/^test result:/ { p += $4; f += $6 } END { printf "onair: %d passed, %d failed\n", p + img + fz, f }' target/test.log
