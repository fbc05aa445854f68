#!/usr/bin/env bash
# The appliance image, tested by booting it (TCG only: never KVM):
#  1. build the qemu-x86_64 image twice: the root squashfs must be byte-identical;
#  2. boot it (OVMF + systemd-boot, 2 vCPU) with a provisioned admin token (fw_cfg), wait for
#     GET /healthz over the forwarded port (bounded), then GET /v1/system: onair is PID 1, the
#     root is a read-only squashfs, /data is ext4; the first-boot banner is on the console;
#  3. power it off with the ACPI power button (QMP system_powerdown): clean, /data unmounted;
#  4. flash.sh refuses the mounted system disk and non-device targets; --to-file verifies.
# Prints the image size and the time from qemu start to a healthy API.
set -euo pipefail
cd "$(dirname "$0")/.."
board=qemu-x86_64
out=target/image/$board
img=$out/onair-$board.img
fail() { echo "image test: FAIL: $*" >&2; exit 1; }
pass() { echo "image test: ok: $*"; }

t0=$(date +%s)
scripts/build-image.sh "$board" | tail -1
build_s=$(( $(date +%s) - t0 ))
root1=$(sha256sum < "$out/root.sqfs" | cut -d' ' -f1)
scripts/build-image.sh "$board" >/dev/null
root2=$(sha256sum < "$out/root.sqfs" | cut -d' ' -f1)
[ "$root1" = "$root2" ] || fail "two builds gave different root squashfs ($root1 vs $root2)"
pass "reproducible root squashfs: sha256 $root1"

tmp=$(mktemp -d)
qemu_pid=
cleanup() {
  [ -n "$qemu_pid" ] && kill "$qemu_pid" 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
api=$(free_port); ingest=$(free_port)
token="onair_$(openssl rand -hex 32)"
printf '%s' "$token" > "$tmp/token"
log=$tmp/console.log

start=$(date +%s.%N)
ONAIR_API_PORT=$api ONAIR_INGEST_PORT=$ingest ONAIR_ADMIN_TOKEN_FILE=$tmp/token ONAIR_QEMU_LOG=$log \
  scripts/run-qemu.sh "$board" --fresh </dev/null >"$tmp/qemu.out" 2>&1 &
qemu_pid=$!
healthy=
for _ in $(seq 1 360); do
  if curl -skf --max-time 2 "https://127.0.0.1:$api/healthz" >/dev/null 2>&1; then healthy=1; break; fi
  kill -0 "$qemu_pid" 2>/dev/null || { tail -30 "$tmp/qemu.out" >&2; fail "qemu exited before the API was healthy"; }
  sleep 0.5
done
[ -n "$healthy" ] || { tail -30 "$log" >&2; fail "no healthy API within 180 s"; }
boot_s=$(python3 -c "import time; print(f'{time.time() - $start:.1f}')")
pass "GET /healthz answered ${boot_s} s after qemu start"

sys=$(curl -skf --max-time 5 -H "Authorization: Bearer $token" "https://127.0.0.1:$api/v1/system") ||
  fail "GET /v1/system with the provisioned admin token"
echo "  /v1/system: $sys"
python3 - "$sys" <<'PY' || fail "system report"
import json, sys
s = json.loads(sys.argv[1])
assert s["pid"] == 1, f"onair is not PID 1: {s['pid']}"
assert s["root"]["fstype"] == "squashfs" and s["root"]["read_only"], f"root: {s['root']}"
assert s["data"]["fstype"] == "ext4" and not s["data"]["read_only"], f"data: {s['data']}"
assert s["slot"] == "a" and s["board"] == "qemu-x86_64", s
PY
pass "onair is PID 1, / is a read-only squashfs (root_a), /data is ext4"
[ "$(grep -c 'onair: first boot' "$log")" = 1 ] || fail "first-boot banner not shown exactly once"
grep -q 'admin token      /data/onair/admin.token' "$log" || fail "banner lacks the token path"
! grep -q "$token" "$log" || fail "the admin token appeared on the console"
pass "first-boot banner (URL, fingerprint, token path) on the console, token itself not"

python3 - "$out/run/qmp.sock" <<'PY' || fail "QMP system_powerdown"
import json, socket, sys
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); f = s.makefile("rw")
f.readline()
for cmd in ("qmp_capabilities", "system_powerdown"):
    f.write(json.dumps({"execute": cmd}) + "\n"); f.flush()
    while "return" not in json.loads(f.readline()): pass
PY
for _ in $(seq 1 120); do kill -0 "$qemu_pid" 2>/dev/null || break; sleep 0.5; done
if kill -0 "$qemu_pid" 2>/dev/null; then tail -20 "$log" >&2; fail "no power off within 60 s of the power button"; fi
wait "$qemu_pid" || true
qemu_pid=
grep -q 'power button pressed' "$log" && grep -q '/data unmounted' "$log" && grep -q 'onair: power off' "$log" ||
  { tail -20 "$log" >&2; fail "unclean power off"; }
pass "power button → service stopped, /data unmounted, powered off"

if scripts/flash.sh "$img" "$(findmnt -nvo SOURCE /)" 2>"$tmp/err"; then fail "flash.sh wrote to the mounted system disk"; fi
grep -qE 'mounted|holds the running system' "$tmp/err" || fail "flash.sh refused for another reason: $(cat "$tmp/err")"
for bad in /dev/null "$tmp/plain-file"; do
  touch "$tmp/plain-file"
  if scripts/flash.sh "$img" "$bad" 2>"$tmp/err"; then fail "flash.sh accepted $bad"; fi
  grep -q 'not a block device' "$tmp/err" || fail "flash.sh: $bad: $(cat "$tmp/err")"
done
scripts/flash.sh "$img" --to-file "$tmp/flashed.img" >/dev/null || fail "--to-file flash did not verify"
pass "flash.sh refuses the mounted system disk, /dev/null and a plain file; --to-file verifies"

echo "image test: image $(( $(stat -c %s "$img") / 1048576 )) MiB raw ($(( $(stat -c %s "$img.zst") / 1048576 )) MiB zstd), first build ${build_s} s, qemu start → healthy API ${boot_s} s"
