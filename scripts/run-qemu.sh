#!/usr/bin/env bash
# run-qemu.sh BOARD [--fresh] — boots target/image/BOARD/onair-BOARD.img headless under TCG
# (never KVM) with OVMF + systemd-boot, on a working copy of the image (kept between runs so
# the data partition persists; --fresh starts again from the built image).
#
# Forwarded to 127.0.0.1 only (qemu user networking):
#   ONAIR_API_PORT    (default 8443) → guest 10.0.2.15:8443, the admin API (HTTPS)
#   ONAIR_INGEST_PORT (default 5000) → guest 10.0.2.15:5000/udp, a fabric ingest port
# Serial console: stdout and ONAIR_QEMU_LOG (default target/image/BOARD/run/console.log).
# QMP socket: target/image/BOARD/run/qmp.sock (e.g. `system_powerdown` = the power button).
# ONAIR_ADMIN_TOKEN_FILE: provisions the first admin token through fw_cfg (docs/image.md).
set -euo pipefail
cd "$(dirname "$0")/.."
board=${1:?usage: run-qemu.sh BOARD [--fresh]}
fresh=${2:-}
out=target/image/$board
img=$out/onair-$board.img
[ -f "$img" ] || { echo "run-qemu: no $img (run scripts/build-image.sh $board)" >&2; exit 2; }
command -v qemu-system-x86_64 >/dev/null && [ -e /usr/share/OVMF/OVMF_CODE_4M.fd ] || {
  SUDO=; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends qemu-system-x86 ovmf >/dev/null
}
bin=
for b in target/x86_64-unknown-linux-musl/release/onair target/x86_64-unknown-linux-gnu/release/onair; do
  [ -x "$b" ] && { bin=$b; break; }
done
[ -n "$bin" ] || { echo "run-qemu: no static onair (run scripts/build-image.sh $board)" >&2; exit 2; }
eval "$("$bin" board "board/$board/board.toml")"
[ -n "${QEMU_CPUS:-}" ] || { echo "run-qemu: board $board is not an emulated board" >&2; exit 2; }

run=$out/run
mkdir -p "$run"
disk=$run/disk.img
if [ "$fresh" = --fresh ] || [ ! -f "$disk" ] || [ "$img" -nt "$disk" ]; then
  cp --sparse=always "$img" "$disk"
  cp /usr/share/OVMF/OVMF_VARS_4M.fd "$run/OVMF_VARS.fd"
fi
api=${ONAIR_API_PORT:-8443}
ingest=${ONAIR_INGEST_PORT:-5000}
log=${ONAIR_QEMU_LOG:-$run/console.log}
rm -f "$run/qmp.sock"
extra=()
[ -n "${ONAIR_ADMIN_TOKEN_FILE:-}" ] && extra+=(-fw_cfg "name=opt/onair/admin-token,file=$ONAIR_ADMIN_TOKEN_FILE")
echo "run-qemu: $board, TCG, $QEMU_CPUS vCPU, $QEMU_MEMORY_MIB MiB; admin API https://127.0.0.1:$api/, ingest udp 127.0.0.1:$ingest; console log $log" >&2
# shellcheck disable=SC2086
exec qemu-system-x86_64 -accel tcg -smp "$QEMU_CPUS" -m "$QEMU_MEMORY_MIB" $QEMU_ARGS \
  -display none -monitor none -no-user-config -nodefaults \
  -drive if=pflash,format=raw,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd \
  -drive if=pflash,format=raw,file="$run/OVMF_VARS.fd" \
  -drive if=virtio,format=raw,file="$disk" \
  -netdev "user,id=mgmt,net=10.0.2.0/24,hostfwd=tcp:127.0.0.1:$api-10.0.2.15:8443,hostfwd=udp:127.0.0.1:$ingest-10.0.2.15:5000" \
  -device virtio-net-pci,netdev=mgmt \
  -chardev "stdio,id=con,logfile=$log,signal=off" -serial chardev:con \
  -qmp "unix:$run/qmp.sock,server=on,wait=off" \
  "${extra[@]}"
