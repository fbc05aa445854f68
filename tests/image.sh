#!/usr/bin/env bash
# The appliance image, tested by booting it (TCG only: never KVM):
#  1. build the qemu-x86_64 image twice: the root squashfs must be byte-identical; the A/B
#     layout as far as it exists (both root slots, one UKI per slot, slot a by default), read
#     from the image without mounting it;
#  2. boot it (OVMF + systemd-boot, 2 vCPU) with a provisioned admin token (fw_cfg), wait for
#     GET /healthz over the forwarded port (bounded), then GET /v1/system: onair is PID 1, the
#     root is a read-only squashfs, /data is ext4; the first-boot banner is on the console;
#  3. stream through the VM: `onair receive` on the host (RTMPS, a test CA whose server
#     certificate names 10.0.2.2, qemu's address for the host), `onair fabric-sim` on the host
#     sending media into the forwarded UDP ingest port and playing the fabric's indicator side;
#     all set up with `onair ctl` over the forwarded API port, pinned to the fingerprint the
#     console showed: entitlement, policy, subscriber, tokens, profile, session, confirm, 10 s
#     live, stop; the recording on the host decodes (ffmpeg/ffprobe);
#  4. power cut: a second session live, qemu killed with SIGKILL, the same disk booted again:
#     profiles and the audit chain intact, the session `interrupted`, nothing streams while the
#     fabric keeps sending and acknowledging;
#  5. power it off with the ACPI power button (QMP system_powerdown): clean, /data unmounted;
#  6. flash.sh refuses the mounted system disk and non-device targets; --to-file verifies.
# Prints the image size, the time from qemu start to a healthy API on each boot and the
# recorded stream's size.
set -euo pipefail
cd "$(dirname "$0")/.."
board=qemu-x86_64
out=target/image/$board
img=$out/onair-$board.img
fail() { echo "image test: FAIL: $*" >&2; exit 1; }
pass() { echo "image test: ok: $*"; }
t_all=$(date +%s)

t0=$(date +%s)
scripts/build-image.sh "$board" | tail -1
build_s=$(( $(date +%s) - t0 ))
root1=$(sha256sum < "$out/root.sqfs" | cut -d' ' -f1)
scripts/build-image.sh "$board" >/dev/null
root2=$(sha256sum < "$out/root.sqfs" | cut -d' ' -f1)
[ "$root1" = "$root2" ] || fail "two builds gave different root squashfs ($root1 vs $root2)"
pass "reproducible root squashfs: sha256 $root1"

onair=
for b in target/x86_64-unknown-linux-musl/release/onair target/x86_64-unknown-linux-gnu/release/onair; do
  [ -x "$b" ] && { onair=$b; break; }
done
[ -n "$onair" ] || fail "no static onair binary after the build"

tmp=$(mktemp -d)
qemu_pid= rx_pid= fabric_pid=
cleanup() {
  local rc=$?
  for p in $qemu_pid $fabric_pid $rx_pid; do kill "$p" 2>/dev/null || true; done
  for p in $qemu_pid $fabric_pid $rx_pid; do wait "$p" 2>/dev/null || true; done
  # On failure keep the consoles, logs and recordings for a look (ONAIR_IMAGE_TEST_KEEP=1 always).
  if [ "$rc" = 0 ] && [ "${ONAIR_IMAGE_TEST_KEEP:-0}" != 1 ]; then rm -rf "$tmp"; else echo "image test: logs kept in $tmp" >&2; fi
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# A/B as far as it exists (docs/image.md): both root slots hold the built squashfs; the ESP has
# one UKI per slot (same kernel and initramfs, onair.slot=a|b) and boots slot a. Read from the
# image itself (GPT parsed here, the ESP read with mtools at its offset): no loop device.
esp_off=$(python3 - "$img" "$out/root.sqfs" <<'PY'
import struct, sys
f = open(sys.argv[1], "rb")
f.seek(512); h = f.read(92)
assert h[:8] == b"EFI PART", "no GPT header"
lba, n, size = struct.unpack_from("<QII", h, 72)
parts = {}
for i in range(n):
    f.seek(lba * 512 + i * size); e = f.read(size)
    if e[:16] != bytes(16):
        first, last = struct.unpack_from("<QQ", e, 32)
        parts[e[56:128].decode("utf-16-le").rstrip("\0")] = first * 512
root = open(sys.argv[2], "rb").read()
for slot in ("root_a", "root_b"):
    f.seek(parts[slot])
    assert f.read(len(root)) == root, f"{slot} does not hold root.sqfs"
print(parts["esp"])
PY
) || fail "GPT: root_a/root_b do not both hold root.sqfs"
mkdir -p "$tmp/esp"
MTOOLS_SKIP_CHECK=1 mcopy -n -i "$img@@$esp_off" ::/EFI/Linux/onair-a.efi ::/EFI/Linux/onair-b.efi \
  ::/loader/loader.conf "$tmp/esp/" || fail "reading the ESP"
for slot in a b; do
  for sec in cmdline linux initrd; do
    objcopy --dump-section ".$sec=$tmp/esp/$slot.$sec" "$tmp/esp/onair-$slot.efi" "$tmp/esp/scratch" ||
      fail "onair-$slot.efi has no .$sec section"
  done
  grep -q "onair.slot=$slot " "$tmp/esp/$slot.cmdline" || fail "onair-$slot.efi: cmdline $(cat "$tmp/esp/$slot.cmdline")"
done
cmp -s "$tmp/esp/a.linux" "$tmp/esp/b.linux" && cmp -s "$tmp/esp/a.initrd" "$tmp/esp/b.initrd" ||
  fail "the slots' UKIs carry different kernels or initramfs"
grep -qx 'default onair-a.efi' "$tmp/esp/loader.conf" || fail "loader.conf: $(cat "$tmp/esp/loader.conf")"
rm -rf "$tmp/esp"
pass "A/B layout: root_a and root_b hold root.sqfs; onair-a.efi and onair-b.efi (same kernel and initramfs, onair.slot=a|b); systemd-boot defaults to slot a"

api=$(free_port); ingest=$(free_port)
token="onair_$(openssl rand -hex 32)"
printf '%s' "$token" > "$tmp/token"
now() { date +%s.%N; }
since() { python3 -c "import time; print(f'{time.time() - $1:.1f}')"; }

# boot LOG [--fresh]: starts qemu (run-qemu.sh execs it, so $qemu_pid is qemu) and waits for a
# healthy API (bounded); sets boot_s.
boot() {
  local log=$1 start
  start=$(now)
  ONAIR_API_PORT=$api ONAIR_INGEST_PORT=$ingest ONAIR_ADMIN_TOKEN_FILE=$tmp/token ONAIR_QEMU_LOG=$log \
    scripts/run-qemu.sh "$board" ${2:-} </dev/null >"$log.out" 2>&1 &
  qemu_pid=$!
  for _ in $(seq 1 360); do
    if curl -skf --max-time 2 "https://127.0.0.1:$api/healthz" >/dev/null 2>&1; then
      boot_s=$(since "$start"); return 0
    fi
    kill -0 "$qemu_pid" 2>/dev/null || { tail -30 "$log.out" >&2; fail "qemu exited before the API was healthy"; }
    sleep 0.5
  done
  tail -30 "$log" >&2; fail "no healthy API within 180 s"
}

log1=$tmp/console.log
boot "$log1" --fresh
boot1_s=$boot_s
pass "GET /healthz answered ${boot1_s} s after qemu start"

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
[ "$(grep -c 'onair: first boot' "$log1")" = 1 ] || fail "first-boot banner not shown exactly once"
grep -q 'admin token      /data/onair/admin.token' "$log1" || fail "banner lacks the token path"
! grep -q "$token" "$log1" || fail "the admin token appeared on the console"
pass "first-boot banner (URL, fingerprint, token path) on the console, token itself not"

# ---- Streaming through the VM -------------------------------------------------------------
# The admin trusts the API by the fingerprint the console showed (not --insecure-loopback).
fp=$(sed -n 's/^certificate *SHA-256 \([0-9A-F:]*\).*/\1/p' "$log1" | tr -d '\r' | head -1)
[ ${#fp} = 95 ] || fail "no certificate fingerprint in the first-boot banner"
ctl() { # ctl TOKEN_FILE METHOD PATH [JSON]
  local tok=$1 m=$2 p=$3
  if [ $# -ge 4 ]; then
    printf '%s' "$4" | "$onair" ctl --url "https://127.0.0.1:$api" --pin "$fp" --token-file "$tok" "$m" "$p" --data-file -
  else
    "$onair" ctl --url "https://127.0.0.1:$api" --pin "$fp" --token-file "$tok" "$m" "$p"
  fi
}
# poll SECONDS CMD...: runs CMD every 0.25 s until it succeeds; false after SECONDS.
poll() {
  local end=$(( $(date +%s) + $1 )); shift
  until "$@"; do [ "$(date +%s)" -lt "$end" ] || return 1; sleep 0.25; done
}

# The receiver on the host: RTMPS with a test CA; the guest reaches the host as 10.0.2.2.
pki=$tmp/pki; mkdir -p "$pki" "$tmp/rec"
(
  cd "$pki"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout ca.key -out ca.pem \
    -days 2 -subj "/CN=image test CA" -addext basicConstraints=critical,CA:TRUE \
    -addext keyUsage=critical,keyCertSign,cRLSign
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout server.key -out server.csr \
    -subj "/CN=10.0.2.2"
  printf 'subjectAltName=IP:10.0.2.2\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' > ext.cnf
  openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 2 -extfile ext.cnf
) >/dev/null 2>&1 || fail "making the test CA (openssl)"
stream_key="sk-image-$(openssl rand -hex 8)"
printf '%s' "$stream_key" > "$tmp/stream.key"
rx_port=$(free_port)
cat > "$tmp/receive.toml" <<TOML
listen = "127.0.0.1:$rx_port"
tls_cert = "$pki/server.pem"
tls_key = "$pki/server.key"
record_dir = "$tmp/rec"
[[stream]]
name = "vm"
app = "live"
key_file = "stream.key"
TOML
rxlog=$tmp/receive.log
NO_COLOR=1 "$onair" receive --config "$tmp/receive.toml" 2>"$rxlog" &
rx_pid=$!
poll 10 grep -q 'receiver listening' "$rxlog" || { cat "$rxlog" >&2; fail "onair receive did not start"; }
# Counted from the receiver's log on every call (poll re-runs these, not a value expanded once).
publishes() { grep -c ' recording peer=' "$rxlog" || true; }
completed() { grep -c 'recording complete' "$rxlog" || true; }
publishes_above() { [ "$(publishes)" -gt "$1" ]; }
completed_at_least() { [ "$(completed)" -ge "$1" ]; }

# Admin: entitlement on, the private ingest allowed by address; a subscriber; its token and
# the fabric's. Subscriber: a profile with the receiver's CA bundle.
ctl "$tmp/token" put /v1/entitlement '{"enabled":true,"recording_allowed":false}' >/dev/null ||
  fail "PUT /v1/entitlement"
ctl "$tmp/token" put /v1/policy '{"allowed_services":["custom"],"allowed_cidrs":["10.0.2.2/32"],"private_only":true}' >/dev/null ||
  fail "PUT /v1/policy"
sub=$(ctl "$tmp/token" post /v1/subscribers '{"name":"image test"}' | jq -r .id) || fail "POST /v1/subscribers"
ctl "$tmp/token" post /v1/tokens "$(jq -nc --arg s "$sub" '{role:"subscriber",subscriber_id:$s,label:"image test"}')" |
  jq -j .token > "$tmp/sub.token" || fail "POST /v1/tokens (subscriber)"
ctl "$tmp/token" post /v1/tokens '{"role":"fabric","label":"fabric-sim on the host"}' |
  jq -j .token > "$tmp/fabric.token" || fail "POST /v1/tokens (fabric)"
profile=$(ctl "$tmp/sub.token" post /v1/profiles "$(jq -nc --arg u "rtmps://10.0.2.2:$rx_port/live" \
  --arg k "$stream_key" --rawfile ca "$pki/ca.pem" \
  '{name:"host ingest",service:"custom",url:$u,stream_key:$k,ca_bundle_pem:$ca}')" | jq -r .id) ||
  fail "POST /v1/profiles"

# The fabric: media into the forwarded ingest port, and the indicator side (SSE + acks).
NO_COLOR=1 "$onair" fabric-sim --to "127.0.0.1:$ingest" --packets-per-datagram 7 \
  --api "https://127.0.0.1:$api" --token-file "$tmp/fabric.token" --pin "$fp" 2>"$tmp/fabric.log" &
fabric_pid=$!

state() { ctl "$tmp/sub.token" get "/v1/sessions/$1" | jq -r .state; }
is_state() { [ "$(state "$1")" = "$2" ]; }
# confirm_live ID: the owner confirms (confirm_id from the session), then waits for live and for
# the publish on the host.
confirm_live() {
  local id=$1 cid n
  n=$(publishes)
  is_state "$id" awaiting_confirmation || fail "session is $(state "$id"), not awaiting_confirmation"
  cid=$(ctl "$tmp/sub.token" get "/v1/sessions/$id" | jq -r .confirm_id)
  ctl "$tmp/sub.token" post "/v1/sessions/$id/confirm" "$(jq -nc --arg c "$cid" '{confirm_id:$c}')" >/dev/null ||
    fail "confirm"
  poll 30 is_state "$id" live ||
    { tail -5 "$tmp/fabric.log" >&2; fail "session not live within 30 s of the confirm: $(state "$id")"; }
  poll 20 publishes_above "$n" ||
    { tail -5 "$rxlog" >&2; fail "session is live but the host receiver saw no publish within 20 s"; }
}
# go_live MEETING: a new session on the forwarded ingest, confirmed and live; prints its id.
go_live() {
  local id
  id=$(ctl "$tmp/sub.token" post /v1/sessions "$(jq -nc --arg p "$profile" --arg m "$1" \
    '{profile_id:$p,meeting_id:$m,source:"udp://10.0.2.15:5000"}')" | jq -r .id) || fail "POST /v1/sessions"
  confirm_live "$id"
  echo "$id"
}

s1=$(go_live vm-stream)
# Media leaves from the first keyframe after the confirm (the clip's GOP is 2 s): 10 s from then.
sent() { [ "$(ctl "$tmp/sub.token" get "/v1/sessions/$1" | jq -r '.stats.frames_out // 0')" -gt 0 ]; }
poll 10 sent "$s1" || fail "live, but no frame sent within 10 s"
t_live=$(now)
sleep 10
ctl "$tmp/sub.token" post "/v1/sessions/$s1/stop" >/dev/null || fail "stop"
poll 15 is_state "$s1" ended || fail "session not ended within 15 s of the stop: $(state "$s1")"
streamed_s=$(since "$t_live")
poll 10 completed_at_least 1 || fail "the host recording did not complete after the stop"
rec=$(sed -n 's/.*recording complete.* path=\([^ ]*\).*/\1/p; s/.*path=\([^ ]*\).*recording complete.*/\1/p' "$rxlog" | head -1)
[ -f "$rec" ] || rec=$(ls "$tmp"/rec/*.flv | head -1)
# Decode everything. The encoder time base is the input's (1 ms): with the default (1/30 s) the
# null muxer itself complains about equal DTS after rounding once the clip's loop shifts the
# frame phase (fabric-sim loops the 10 s clip), which is not a decode error.
err=$(ffmpeg -v error -nostdin -i "$rec" -enc_time_base:v -1 -f null - 2>&1) || fail "ffmpeg cannot decode the recording: $err"
[ -z "$err" ] || fail "decode errors in the recording: $err"
rec_bytes=$(stat -c %s "$rec")
# Frames and span (first to last timestamp) per stream; 30 fps video, 48 kHz AAC (~46.9 frames/s).
counts=$(ffprobe -v error -show_entries packet=stream_index,pts -show_entries stream=index,codec_type \
  -of json "$rec" | python3 -c '
import json, sys
d = json.load(sys.stdin)
kind = {s["index"]: s["codec_type"] for s in d["streams"]}
pts = {"video": [], "audio": []}
for p in d["packets"]:
    if kind.get(p["stream_index"]) in pts and "pts" in p:
        pts[kind[p["stream_index"]]].append(int(p["pts"]))
span = lambda t: (max(t) - min(t)) / 1000 if t else 0.0
print(len(pts["video"]), "%.2f" % span(pts["video"]), len(pts["audio"]), "%.2f" % span(pts["audio"]))
') || fail "ffprobe cannot read the recording"
read -r vframes vspan aframes aspan <<<"$counts"
python3 - "$vframes" "$vspan" "$aframes" "$aspan" <<'PY' || fail "recording: $vframes video frames over $vspan s, $aframes audio frames over $aspan s (want 10 s of each)"
import sys
v, vs, a, as_ = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
assert 9.5 <= vs <= 14 and 9.5 <= as_ <= 14, "10 s of media (plus the stop's latency)"
# The clip loops every 10 s with a short gap (audio 9.83 s of 10): a few frames of slack.
assert abs(v - 30 * vs) <= 15, "video frames match 30 fps over the span"
assert abs(a - 46.875 * as_) <= 20, "audio frames match 48 kHz AAC over the span"
PY
pass "streamed through the VM (${streamed_s} s from the first frame to ended): $rec_bytes bytes, $vframes video frames over $vspan s, $aframes audio over $aspan s, decodes without errors"

# ---- Power cut ------------------------------------------------------------------------------
s2=$(go_live vm-power-cut)
sleep 2
# Everything audited so far was committed (synchronous=FULL): it must all be there after the cut.
pre_seq=$(ctl "$tmp/token" get /v1/audit/verify | jq -r .last_seq) || fail "GET /v1/audit/verify"
kill -9 "$qemu_pid"; wait "$qemu_pid" 2>/dev/null || true; qemu_pid=
poll 10 completed_at_least 2 || fail "the host receiver still records after qemu was killed"
n_pub=$(publishes)
log2=$tmp/console2.log
boot "$log2"
boot2_s=$boot_s
pass "power cut while live; the same disk booted again, healthy ${boot2_s} s after qemu start"
! grep -q 'onair: first boot' "$log2" || fail "the second boot was a first boot again (state lost)"
[ "$(ctl "$tmp/sub.token" get "/v1/profiles/$profile" | jq -r .id)" = "$profile" ] || fail "the profile is gone"
[ "$(ctl "$tmp/token" get /v1/entitlement | jq -r .enabled)" = true ] || fail "the entitlement is no longer on"
verify=$(ctl "$tmp/token" get /v1/audit/verify) || fail "GET /v1/audit/verify"
[ "$(jq -r .intact <<<"$verify")" = true ] || fail "audit chain broken after the power cut: $verify"
[ "$(jq -r .last_seq <<<"$verify")" -ge "$pre_seq" ] || fail "audit entries lost in the power cut (had $pre_seq): $verify"
ctl "$tmp/token" get '/v1/audit?limit=1000' | jq -e --arg s "$s2" '[.entries[].entry | select(.action == "session.state"
  and (.target | contains($s)) and (.detail | tostring | test("live -> interrupted")))] | length == 1' >/dev/null ||
  fail "no audit entry for the session's live -> interrupted at boot"
[ "$(state "$s1")" = ended ] || fail "the stopped session is $(state "$s1") after the power cut"
[ "$(state "$s2")" = interrupted ] || fail "the live session came back $(state "$s2"), not interrupted"
# The fabric keeps sending media and acknowledging: nothing may reach the host.
sleep 6
[ "$(publishes)" = "$n_pub" ] || fail "a publish reached the host after the power cut"
[ "$(state "$s2")" = interrupted ] || fail "the interrupted session became $(state "$s2")"
pass "after the power cut: profile, entitlement and audit chain intact ($(jq -c . <<<"$verify"); $pre_seq before the cut), session interrupted (audited), nothing streamed in 6 s"
# Only a new confirm by its owner makes it live again (and the restored store still unseals the
# profile's stream key, and the fabric acknowledges the new boot's indicator).
ctl "$tmp/sub.token" post "/v1/sessions/$s2/rearm" >/dev/null || fail "rearm the interrupted session"
confirm_live "$s2"
ctl "$tmp/sub.token" post "/v1/sessions/$s2/stop" >/dev/null || fail "stop"
poll 15 is_state "$s2" ended || fail "re-confirmed session not ended within 15 s of the stop: $(state "$s2")"
pass "the interrupted session went live again only after rearm + a new confirm, and stopped"

# ---- Power button ---------------------------------------------------------------------------
t_button=$(now)
python3 - "$out/run/qmp.sock" <<'PY' || fail "QMP system_powerdown"
import json, socket, sys
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); f = s.makefile("rw")
f.readline()
for cmd in ("qmp_capabilities", "system_powerdown"):
    f.write(json.dumps({"execute": cmd}) + "\n"); f.flush()
    while "return" not in json.loads(f.readline()): pass
PY
for _ in $(seq 1 120); do kill -0 "$qemu_pid" 2>/dev/null || break; sleep 0.5; done
if kill -0 "$qemu_pid" 2>/dev/null; then tail -20 "$log2" >&2; fail "no power off within 60 s of the power button"; fi
off_s=$(since "$t_button")
wait "$qemu_pid" || true
qemu_pid=
grep -q 'power button pressed' "$log2" && grep -q '/data unmounted' "$log2" && grep -q 'onair: power off' "$log2" ||
  { tail -20 "$log2" >&2; fail "unclean power off"; }
pass "power button → service stopped, /data unmounted, powered off (qemu gone ${off_s} s after the button)"
kill "$fabric_pid" "$rx_pid" 2>/dev/null || true
wait "$fabric_pid" "$rx_pid" 2>/dev/null || true
fabric_pid= rx_pid=

if scripts/flash.sh "$img" "$(findmnt -nvo SOURCE /)" 2>"$tmp/err"; then fail "flash.sh wrote to the mounted system disk"; fi
grep -qE 'mounted|holds the running system' "$tmp/err" || fail "flash.sh refused for another reason: $(cat "$tmp/err")"
for bad in /dev/null "$tmp/plain-file"; do
  touch "$tmp/plain-file"
  if scripts/flash.sh "$img" "$bad" 2>"$tmp/err"; then fail "flash.sh accepted $bad"; fi
  grep -q 'not a block device' "$tmp/err" || fail "flash.sh: $bad: $(cat "$tmp/err")"
done
scripts/flash.sh "$img" --to-file "$tmp/flashed.img" >/dev/null || fail "--to-file flash did not verify"
pass "flash.sh refuses the mounted system disk, /dev/null and a plain file; --to-file verifies"

echo "image test: image $(( $(stat -c %s "$img") / 1048576 )) MiB raw ($(( $(stat -c %s "$img.zst") / 1048576 )) MiB zstd), first build ${build_s} s, qemu start → healthy API ${boot1_s} s (first boot), ${boot2_s} s (after the power cut); stream ${rec_bytes} bytes, ${vframes} video frames over ${vspan} s; whole test $(( $(date +%s) - t_all )) s"
