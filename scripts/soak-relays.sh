#!/usr/bin/env bash
# Relay-only soak (`scripts/soak.sh --relays [MINUTES]` runs this file; the default soak
# drives `onair run` sessions instead): 8 concurrent relays fed by 8 looping fabric-sim
# players for MINUTES (default 10), publishing to nginx-rtmp on loopback. Samples the relay
# process's RSS, open file descriptors and threads over time, then checks that they stayed
# flat and that no frame was lost, and writes the figures to the "soak-relays" section of
# docs/reliability.md.
#
#   scripts/soak.sh --relays [MINUTES]        SOAK_STREAMS=8  SOAK_PROFILE=release|debug
#
# The relays run in one process the way `onair run` hosts them (examples/bench.rs `relays`:
# tokio, 2 workers; stream i = UDP base+i → rtmp://…/live/bench-i). Each fabric-sim plays the
# bundled 10 s clip (assets/sample.ts, 640x360 H.264 + AAC, ~1.2 Mbit/s) forever, so every
# pass is a source restart with timestamps jumping back (continuity counters kept continuous).
#
# "No frame lost" is checked from the relays' own counters: no continuity error at the ingest
# (fabric-sim keeps the counters continuous across passes, so any lost datagram shows), no
# video dropped waiting for a keyframe, nothing dropped by the egress queues, no reconnect, and
# every frame queued was sent.
set -uo pipefail
cd "$(dirname "$0")/.."
. scripts/reliability/lib.sh

minutes=${1:-10}
streams=${SOAK_STREAMS:-8}
profile=${SOAK_PROFILE:-release}
interval=${SOAK_INTERVAL_S:-10}
work=target/soak-relays
rm -rf "$work"; mkdir -p "$work/nginx/logs"

flag=(); [ "$profile" = release ] && flag=(--release)
echo "==> building onair and the bench tool ($profile)"
cargo build -q "${flag[@]}" --bin onair --example bench || exit 2
bin=target/$profile
[ "$profile" = debug ] || bin=target/release

module=/usr/lib/nginx/modules/ngx_rtmp_module.so
[ -e "$module" ] || module=/usr/share/nginx/modules/ngx_rtmp_module.so
port=$((20000 + RANDOM % 20000))
base=$((40000 + RANDOM % 20000))
cat >"$work/nginx/nginx.conf" <<CONF
load_module $module;
daemon off;
master_process off;
worker_processes 1;
error_log $PWD/$work/nginx/logs/error.log warn;
pid $PWD/$work/nginx/nginx.pid;
events { worker_connections 256; }
rtmp { server { listen 127.0.0.1:$port; chunk_size 4096;
  application live { live on; record off; } } }
CONF

pids=()
cleanup() {
  local p
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null; done
}
trap cleanup EXIT

nginx -p "$PWD/$work/nginx" -c "$PWD/$work/nginx/nginx.conf" -e "$PWD/$work/nginx/logs/error.log" &
pids+=($!)
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done

secs=$((minutes * 60))
"$bin/examples/bench" relays --streams "$streams" --udp-base "$base" \
  --url "rtmp://127.0.0.1:$port/live" --seconds $((secs + 120)) 2>"$work/relays.log" &
relay=$!
pids+=($relay)
sleep 1
sims=()
for ((i = 0; i < streams; i++)); do
  "$bin/onair" fabric-sim --to "127.0.0.1:$((base + i))" >"$work/sim-$i.log" 2>&1 &
  sims+=($!); pids+=($!)
  sleep 0.5 # staggered, like meetings starting at different times
done

echo "==> soaking: $streams streams for $minutes min (samples every ${interval} s in $work/samples.csv)"
echo "t_s,rss_kib,fds,threads" >"$work/samples.csv"
start=$(date +%s)
while :; do
  now=$(date +%s); t=$((now - start))
  if ! kill -0 "$relay" 2>/dev/null; then echo "relay process died" >&2; break; fi
  rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$relay/status")
  thr=$(awk '/^Threads:/ {print $2}' "/proc/$relay/status")
  fds=$(ls "/proc/$relay/fd" | wc -l)
  echo "$t,$rss,$fds,$thr" >>"$work/samples.csv"
  [ "$t" -ge "$secs" ] && break
  sleep "$interval"
done
ran=$(( $(date +%s) - start ))

# Feeds stop; the queues drain; then the relays print their counters and exit.
for p in "${sims[@]}"; do kill "$p" 2>/dev/null; done
sleep 2
kill -TERM "$relay" 2>/dev/null
wait "$relay" 2>/dev/null
grep '^{"relay"' "$work/relays.log" >"$work/counters.jsonl"

python3 - "$work" "$streams" "$ran" "$profile" >"$work/section.md" <<'PY'
import csv, json, statistics, sys
work, streams, ran, profile = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
rows = [dict((k, int(v)) for k, v in r.items()) for r in csv.DictReader(open(f"{work}/samples.csv"))]
ctr = [json.loads(l) for l in open(f"{work}/counters.jsonl")]
warm = [r for r in rows if r["t_s"] >= 60] or rows
first, last = warm[0], rows[-1]
rss_growth = last["rss_kib"] - first["rss_kib"]
rss_ok = rss_growth <= max(2048, first["rss_kib"] // 20)
fds = [r["fds"] for r in warm]; thr = [r["threads"] for r in warm]
fd_ok = max(fds) - min(fds) <= 1
tot = lambda k: sum(c.get(k, 0) for c in ctr)
loss_ok = (len(ctr) == streams and tot("cc_errors") == 0 and tot("dropped_waiting_keyframe") == 0
           and tot("frames_dropped") == 0 and tot("reconnects") == 0
           and all(c["frames_out"] == c["frames_in"] for c in ctr))
ok = rss_ok and fd_ok and loss_ok
print("## Soak, relay-only (`scripts/soak.sh --relays`)")
print()
print(f"Generated by `scripts/soak.sh --relays {ran // 60}` ({profile} build): {streams} relays in one process, "
      f"each fed by its own looping `onair fabric-sim` (assets/sample.ts, ~1.2 Mbit/s), publishing "
      f"to nginx-rtmp on loopback; ran **{ran} s** ({ran / 60:.1f} min). Result: **{'pass' if ok else 'FAIL'}**.")
print()
print("| Figure | Value | Check |")
print("|---|---|---|")
print(f"| RSS of the relay process at {first['t_s']} s → end | {first['rss_kib'] / 1024:.1f} → {last['rss_kib'] / 1024:.1f} MiB "
      f"(max {max(r['rss_kib'] for r in rows) / 1024:.1f}) | growth ≤ max(2 MiB, 5 %): {'ok' if rss_ok else 'FAIL'} |")
print(f"| Open fds (after 60 s) | {min(fds)}–{max(fds)} | flat: {'ok' if fd_ok else 'FAIL'} |")
print(f"| Threads (after 60 s) | {min(thr)}–{max(thr)} | |")
print(f"| Video / audio frames relayed | {tot('video_frames')} / {tot('audio_frames')} | |")
print(f"| Datagrams received | {tot('datagrams')} | |")
print(f"| Source restarts (loops) rebased | {tot('rebases')} | |")
print(f"| CC errors · video dropped waiting for a keyframe · queue drops · reconnects | "
      f"{tot('cc_errors')} · {tot('dropped_waiting_keyframe')} · {tot('frames_dropped')} · {tot('reconnects')} | "
      f"no frame lost: {'ok' if loss_ok else 'FAIL'} |")
print(f"| Frames queued = frames sent | {tot('frames_in')} = {tot('frames_out')} | |")
print()
step = max(1, len(rows) // 12)
print("RSS (MiB) / fds over time: " + ", ".join(
    f"{r['t_s']} s: {r['rss_kib'] / 1024:.1f}/{r['fds']}" for r in rows[::step] + ([rows[-1]] if (len(rows) - 1) % step else [])))
print()
sys.exit(0 if ok else 1)
PY
rc=$?
cat "$work/section.md"
replace_section soak-relays "$work/section.md"
echo "==> written to $RELIABILITY_DOC (soak-relays section)"
exit $rc
