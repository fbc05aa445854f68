#!/usr/bin/env bash
# Soak (issue 6, item 5; not part of CI): 8 concurrent sessions of `onair run` for MINUTES
# (default 10), the product path end to end on loopback, then writes the figures to the "soak"
# section of docs/reliability.md.
#
#   scripts/soak.sh [MINUTES]            SOAK_SESSIONS=8  SOAK_TLS=1|0  SOAK_INTERVAL_S=10
#   scripts/soak.sh --relays [MINUTES]   the older relay-only soak (scripts/soak-relays.sh:
#                                        relays inside the bench tool → nginx-rtmp)
#
# What runs (everything under target/soak/, wiped at each run):
# - `onair receive`, the private ingest: RTMPS with a throwaway private CA (openssl), or plain
#   RTMP with SOAK_TLS=0; one [[stream]] per session, each publish recorded as FLV;
# - `onair run` with its own config (temp data_dir, free API port, plain HTTP on loopback);
# - driven through the admin API with curl, as the demo does: entitlement on, policy allowing
#   the ingest (custom service, host `localhost` / 127.0.0.0/8, plain RTMP only if SOAK_TLS=0),
#   a subscriber with its token, a fabric token, one profile per session (its stream key, the
#   CA bundle), then per session: create (source udp://127.0.0.1:BASE+i) → confirm → live;
# - one `onair fabric-sim` per session on its own UDP port, looping assets/sample.ts (10 s,
#   300 video + 470 audio frames per pass, so 30 video fps); the first also plays the fabric's
#   indicator side (`--api`), acknowledging every session's indicator each second.
# Every SOAK_INTERVAL_S seconds: RSS, open fds and threads of the `onair run` process, and each
# session's state (a session that leaves `live` is reported). At the end: each session's API
# stats (last seen while it was active), stop → ended, then ffprobe counts the packets of each
# recording (video, audio) and ffmpeg decodes it (`-v error -f null -`). Expected video frames
# = 30 × the live window (live since → stop requested); the edges (the first keyframe after the
# gate opens, the frames still queued at stop) make a few tens of frames of difference, so the
# exact numbers are reported and compared with the relay's own `frames_out`.
set -uo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = --relays ]; then
  shift
  exec scripts/soak-relays.sh "$@"
fi
. scripts/reliability/lib.sh

minutes=${1:-10}
n=${SOAK_SESSIONS:-8}
tls=${SOAK_TLS:-1}
interval=${SOAK_INTERVAL_S:-10}
work=$PWD/target/soak
rm -rf "$work"; mkdir -p "$work"
for t in curl jq ffprobe ffmpeg; do
  command -v $t >/dev/null || { echo "soak: needs $t" >&2; exit 2; }
done
[ "$tls" = 1 ] && { command -v openssl >/dev/null || { echo "soak: SOAK_TLS=1 needs openssl" >&2; exit 2; }; }

echo "==> building onair (release)"
cargo build -q --release --bin onair || exit 2
bin=$PWD/target/release/onair

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_tcp() {
  local _
  for _ in $(seq 150); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done
  echo "soak: $2 did not come up on port $1" >&2; return 1
}

pids=()
cleanup() {
  local p
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null; done
}
trap cleanup EXIT

# --- the private ingest ---------------------------------------------------------------------
rx_port=$(free_port)
scheme=rtmp host=127.0.0.1
tls_conf=""
if [ "$tls" = 1 ]; then
  scheme=rtmps host=localhost
  pki=$work/pki; mkdir -p "$pki"
  (
    cd "$pki"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
      -subj "/CN=onair soak private CA" -keyout ca.key -out ca.pem \
      -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=localhost" \
      -keyout server.key -out server.csr
    printf 'subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n' >ext.cnf
    openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
      -extfile ext.cnf -out server.pem
  ) >"$work/pki.log" 2>&1 || { cat "$work/pki.log" >&2; exit 2; }
  chmod 600 "$pki"/*.key
  tls_conf="tls_cert = \"$pki/server.pem\"
tls_key = \"$pki/server.key\""
fi
{
  echo "listen = \"127.0.0.1:$rx_port\""
  [ -n "$tls_conf" ] && echo "$tls_conf"
  echo "record_dir = \"$work/recordings\""
  for ((i = 0; i < n; i++)); do
    key=$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')
    echo "$key" >"$work/key-$i"
    printf '[[stream]]\nname = "soak-%d"\napp = "live"\nkey = "%s"\n' "$i" "$key"
  done
} >"$work/receive.toml"
"$bin" receive --config "$work/receive.toml" 2>"$work/receive.log" &
rx_pid=$!; pids+=($rx_pid)
wait_tcp "$rx_port" "onair receive" || exit 1

# --- the appliance ----------------------------------------------------------------------------
api_port=$(free_port)
printf 'data_dir = "%s"\n[api]\nlisten = "127.0.0.1:%d"\n[log]\nlevel = "info"\n' \
  "$work/state" "$api_port" >"$work/onair.toml"
"$bin" run --config "$work/onair.toml" 2>"$work/run.log" &
run_pid=$!; pids+=($run_pid)
wait_tcp "$api_port" "onair run" || exit 1
for _ in $(seq 50); do [ -s "$work/state/admin.token" ] && break; sleep 0.1; done
admin=$(tr -d '\n' <"$work/state/admin.token")
API=http://127.0.0.1:$api_port

# api METHOD PATH TOKEN [BODY]: prints the response body; fails (with the body) unless 2xx.
api() {
  local out code
  out=$(curl -sS -X "$1" -H "Authorization: Bearer $3" -H 'Content-Type: application/json' \
    ${4:+--data "$4"} -w '\n%{http_code}' "$API$2") || return 1
  code=${out##*$'\n'}; out=${out%$'\n'*}
  if [ "${code:0:1}" != 2 ]; then echo "soak: $1 $2 → $code $out" >&2; return 1; fi
  printf '%s\n' "$out"
}
now_ms() { date +%s%3N; }

set -e
api PUT /v1/entitlement "$admin" '{"enabled": true, "recording_allowed": true}' >/dev/null
plain=false; [ "$tls" = 1 ] || plain=true
api PUT /v1/policy "$admin" "{\"allow_plain_rtmp\": $plain, \"allowed_services\": [\"custom\"],
  \"allowed_hosts\": [\"localhost\"], \"allowed_cidrs\": [\"127.0.0.0/8\"]}" >/dev/null
sub_id=$(api POST /v1/subscribers "$admin" '{"name": "soak"}' | jq -r .id)
subtok=$(api POST /v1/tokens "$admin" "{\"role\": \"subscriber\", \"subscriber_id\": \"$sub_id\", \"label\": \"soak\"}" | jq -r .token)
(umask 077; api POST /v1/tokens "$admin" '{"role": "fabric", "label": "soak-fabric"}' | jq -r .token >"$work/fabric.token")
ca_json=null
[ "$tls" = 1 ] && ca_json=$(jq -Rs . <"$work/pki/ca.pem")
profiles=()
for ((i = 0; i < n; i++)); do
  profiles+=("$(api POST /v1/profiles "$subtok" "{\"name\": \"soak $i\", \"service\": \"custom\",
    \"url\": \"$scheme://$host:$rx_port/live\", \"stream_key\": \"$(cat "$work/key-$i")\",
    \"ca_bundle_pem\": $ca_json, \"destination_records\": true}" | jq -r .id)")
done
set +e

# --- the fabric: one player per session, its own UDP port; the first acknowledges indicators --
base=$((40000 + RANDOM % 20000))
sims=()
for ((i = 0; i < n; i++)); do
  extra=()
  [ "$i" = 0 ] && extra=(--api "$API" --token-file "$work/fabric.token")
  RUST_LOG=warn "$bin" fabric-sim --to "127.0.0.1:$((base + i))" "${extra[@]}" >"$work/sim-$i.log" 2>&1 &
  sims+=($!); pids+=($!)
done

# --- sessions: create, confirm, wait for live ------------------------------------------------
ids=()
set -e
for ((i = 0; i < n; i++)); do
  s=$(api POST /v1/sessions "$subtok" "{\"profile_id\": \"${profiles[$i]}\", \"meeting_id\": \"soak-$i\",
    \"source\": \"udp://127.0.0.1:$((base + i))\"}")
  id=$(jq -r .id <<<"$s"); ids+=("$id")
  api POST "/v1/sessions/$id/confirm" "$subtok" "{\"confirm_id\": $(jq .confirm_id <<<"$s")}" >/dev/null
  echo "$id,$(now_ms)" >>"$work/confirmed.csv"
  sleep 0.5 # staggered, like meetings starting at different times
done
set +e
for id in "${ids[@]}"; do
  for _ in $(seq 150); do
    st=$(api GET "/v1/sessions/$id" "$subtok" | jq -r .state)
    [ "$st" = live ] && break
    sleep 0.1
  done
  [ "$st" = live ] || { echo "soak: session $id is $st, not live" >&2; exit 1; }
done
echo "==> $n sessions live; soaking for $minutes min (samples every ${interval} s in $work/samples.csv)"

# --- soak ---------------------------------------------------------------------------------------
secs=$((minutes * 60))
echo "t_s,rss_kib,fds,threads,live,load1" >"$work/samples.csv"
start=$(date +%s)
while :; do
  t=$(($(date +%s) - start))
  kill -0 "$run_pid" 2>/dev/null || { echo "soak: onair run died" >&2; break; }
  rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$run_pid/status")
  thr=$(awk '/^Threads:/ {print $2}' "/proc/$run_pid/status")
  fds=$(ls "/proc/$run_pid/fd" | wc -l)
  live=0
  for id in "${ids[@]}"; do
    st=$(api GET "/v1/sessions/$id" "$subtok" | jq -r .state)
    if [ "$st" = live ]; then live=$((live + 1)); else echo "$t,$id,$st" >>"$work/not-live.csv"; fi
  done
  echo "$t,$rss,$fds,$thr,$live,$(cut -d' ' -f1 /proc/loadavg)" >>"$work/samples.csv"
  [ "$t" -ge "$secs" ] && break
  sleep "$interval"
done

# --- stop: stats, stop, ended ----------------------------------------------------------------
for id in "${ids[@]}"; do api GET "/v1/sessions/$id" "$subtok" >"$work/before-stop-$id.json"; done
for id in "${ids[@]}"; do
  echo "$id,$(now_ms)" >>"$work/stopped.csv"
  api POST "/v1/sessions/$id/stop" "$subtok" >/dev/null
done
for id in "${ids[@]}"; do
  for _ in $(seq 150); do
    api GET "/v1/sessions/$id" "$subtok" >"$work/s.json" || break
    # The last stats shown while the session was still active (stopping: its queue draining).
    jq -e '.stats != null' "$work/s.json" >/dev/null && cp "$work/s.json" "$work/last-stats-$id.json"
    [ "$(jq -r .state "$work/s.json")" = ended ] && break
    sleep 0.1
  done
  cp "$work/s.json" "$work/end-$id.json"
done
for p in "${sims[@]}"; do kill "$p" 2>/dev/null; done
api GET "/v1/audit/verify" "$admin" >"$work/audit-verify.json"
kill -TERM "$run_pid"; wait "$run_pid"; echo "exited with status $?" >"$work/run.exit"
sleep 0.5
kill -TERM "$rx_pid"; wait "$rx_pid"
trap - EXIT; cleanup

# --- recordings ---------------------------------------------------------------------------------
echo "==> counting and decoding the recordings"
for ((i = 0; i < n; i++)); do
  for f in "$work"/recordings/soak-$i-*.flv; do
    [ -e "$f" ] || continue
    v=$(ffprobe -v error -select_streams v -count_packets -show_entries stream=nb_read_packets -of csv=p=0 "$f")
    a=$(ffprobe -v error -select_streams a -count_packets -show_entries stream=nb_read_packets -of csv=p=0 "$f")
    # Every packet's PTS, to count the frames of each pass of the looping clip (below).
    ffprobe -v error -select_streams v -show_entries packet=pts -of csv=p=0 "$f" >"$work/pts-v-$i.txt"
    ffprobe -v error -select_streams a -show_entries packet=pts -of csv=p=0 "$f" >"$work/pts-a-$i.txt"
    d=$(ffprobe -v error -show_entries format=duration -of csv=p=0 "$f")
    # -enc_time_base -1: keep the FLV's millisecond time base, so the null muxer does not
    # complain about timestamps rounded onto a 1/30 s grid; what remains are decoding errors.
    errs=$(nice ffmpeg -nostdin -v error -threads 1 -i "$f" -enc_time_base -1 -f null - 2>&1 | tee -a "$work/decode-errors.log" | wc -l)
    echo "$i,$(basename "$f"),${v:-0},${a:-0},${d:-0},$errs" >>"$work/recordings.csv"
  done
done

python3 - "$work" "$n" "$minutes" "$tls" >"$work/section.md" <<'PY'
import csv, glob, json, os, sys
work, n, minutes, tls = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"
rows = [{k: float(v) for k, v in r.items()} for r in csv.DictReader(open(f"{work}/samples.csv"))]
conf = dict(l.strip().split(",") for l in open(f"{work}/confirmed.csv"))
stop = dict(l.strip().split(",") for l in open(f"{work}/stopped.csv"))
ids = list(conf)
recs = {}
for l in open(f"{work}/recordings.csv") if os.path.exists(f"{work}/recordings.csv") else []:
    i, name, v, a, d, errs = l.strip().split(",")
    recs.setdefault(int(i), []).append((name, int(v), int(a), float(d), int(errs)))
notlive = [l.strip() for l in open(f"{work}/not-live.csv")] if os.path.exists(f"{work}/not-live.csv") else []
load = lambda p: json.load(open(p)) if os.path.exists(p) else {}
ran = rows[-1]["t_s"]
fmt = lambda k: f"{k / 1024:.1f}"

def slope(key):  # least squares over the second half, per minute
    h = [r for r in rows if r["t_s"] >= ran / 2]
    if len(h) < 2: return 0.0
    mx = sum(r["t_s"] for r in h) / len(h); my = sum(r[key] for r in h) / len(h)
    den = sum((r["t_s"] - mx) ** 2 for r in h)
    return 60 * sum((r["t_s"] - mx) * (r[key] - my) for r in h) / den if den else 0.0

rss = [r["rss_kib"] for r in rows]; fds = [int(r["fds"]) for r in rows]; thr = [int(r["threads"]) for r in rows]
loads = [r["load1"] for r in rows]
print("## Soak")
print()
print(f"Generated by `scripts/soak.sh {minutes}` (release build): **{n} concurrent sessions of `onair run`**, "
      f"each created, confirmed and acknowledged through the admin API (curl) as the demo does, fed by its "
      f"own looping `onair fabric-sim` (assets/sample.ts: 30 fps H.264 + 48 kHz AAC, ~1.2 Mbit/s) on its own "
      f"UDP port (the first fabric-sim also acks the indicators, `--api`), publishing over "
      f"{'RTMPS (private CA in the profiles)' if tls else 'plain RTMP'} to `onair receive` on loopback, which records "
      f"one FLV per publish. Sampled every {int(rows[1]['t_s'] - rows[0]['t_s']) if len(rows) > 1 else 0} s "
      f"over **{int(ran)} s** ({ran / 60:.1f} min) live. Load average (1 min) during the run: "
      f"{min(loads):.2f}–{max(loads):.2f} (mean {sum(loads) / len(loads):.2f}) on 2 cores shared with other work.")
print()
print("`onair run` process:")
print()
print("| Figure | first | last | max | slope over the 2nd half |")
print("|---|---|---|---|---|")
print(f"| RSS (MiB) | {fmt(rss[0])} | {fmt(rss[-1])} | {fmt(max(rss))} | {slope('rss_kib'):+.1f} KiB/min |")
print(f"| Open fds | {fds[0]} | {fds[-1]} | {max(fds)} (min {min(fds)}) | {slope('fds'):+.2f} /min |")
print(f"| Threads | {thr[0]} | {thr[-1]} | {max(thr)} (min {min(thr)}) | {slope('threads'):+.2f} /min |")
print(f"| Sessions live at each sample | {int(rows[0]['live'])} | {int(rows[-1]['live'])} | min {int(min(r['live'] for r in rows))} | |")
print()
print("Per session: the live window (`state_detail.since_ms` → stop requested), the video frames "
      "fabric-sim sent in it (30 × window), what the recording holds (ffprobe `-count_packets`), the "
      "relay's API stats (last seen while active: frames in, frames out, dropped, reconnects) and "
      "whether the recording decodes (`ffmpeg -v error -enc_time_base -1 -f null -`, lines of errors). "
      "The video gate opens on a keyframe (every 2 s in the clip) after the fabric's acknowledgement, so a session "
      "may start up to 60 frames after its live instant: that, and the frames still queued at the stop, are the edges.")
print()
print("| Session | live window (s) | video expected | video recorded | audio recorded | API video/audio in | API frames out | recorded (v+a) | dropped | reconnects | end state | decode errors |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|")
tot = dict(exp=0, v=0, a=0, out=0, rec=0, drop=0, rc=0, err=0)
for k, sid in enumerate(ids):
    pre = load(f"{work}/before-stop-{sid}.json"); last = load(f"{work}/last-stats-{sid}.json") or pre
    end = load(f"{work}/end-{sid}.json")
    since = (pre.get("state_detail") or {}).get("since_ms") or int(conf[sid])
    win = (int(stop[sid]) - since) / 1000
    st = last.get("stats") or {}
    r = recs.get(k, [])
    v = sum(x[1] for x in r); a = sum(x[2] for x in r); errs = sum(x[4] for x in r)
    exp = round(30 * win)
    tot["exp"] += exp; tot["v"] += v; tot["a"] += a; tot["out"] += st.get("frames_out", 0); tot["rec"] += v + a
    tot["drop"] += st.get("frames_dropped", 0); tot["rc"] += st.get("reconnects", 0); tot["err"] += errs
    print(f"| {k} | {win:.1f} | {exp} | {v} ({v - exp:+d}) | {a} | {st.get('video_frames', '?')}/{st.get('audio_frames', '?')} | "
          f"{st.get('frames_out', '?')} | {v + a} | {st.get('frames_dropped', '?')} | {st.get('reconnects', '?')} | "
          f"{end.get('state', '?')} | {errs if r else 'no recording'}{'' if len(r) <= 1 else f' ({len(r)} files)'} |")
# The clip is 300 video + 470 audio frames; each loop shows in the recording as one timestamp
# step of several frames (the timeline's rebase: ~117 ms video, ~79 ms audio). Every pass
# between two such steps must hold exactly the clip's frames: frame loss checked at the ingest,
# pass by pass. (Smaller steps at the very end are B-frames cut by the stop.)
def passes(path, gap_ms):
    pts = sorted(int(x) for x in open(path) if x.strip()) if os.path.exists(path) else []
    segs, cur, steps = [], 1, []
    for a, b in zip(pts, pts[1:]):
        if b - a > gap_ms:
            segs.append(cur); cur = 1; steps.append(b - a)
        else:
            cur += 1
    segs.append(cur)
    return segs[1:-1], steps  # interior passes (the first and last are cut by start/stop)
pass_rows = []
for k in range(len(ids)):
    vs, vsteps = passes(f"{work}/pts-v-{k}.txt", 100)
    as_, asteps = passes(f"{work}/pts-a-{k}.txt", 60)
    pass_rows.append((vs, as_, vsteps, asteps))
print(f"| all | | {tot['exp']} | {tot['v']} ({tot['v'] - tot['exp']:+d}) | {tot['a']} | | {tot['out']} | {tot['rec']} | {tot['drop']} | {tot['rc']} | | {tot['err']} |")
print()
allv = [x for r in pass_rows for x in r[0]]; alla = [x for r in pass_rows for x in r[1]]
steps_v = sorted(set(x for r in pass_rows for x in r[2])); steps_a = sorted(set(x for r in pass_rows for x in r[3]))
print(f"Frames per complete pass of the clip in the recordings (all sessions): {len(allv)} passes; video "
      f"{min(allv) if allv else '-'}–{max(allv) if allv else '-'} per pass (clip: 300), audio "
      f"{min(alla) if alla else '-'}–{max(alla) if alla else '-'} (clip: 470): "
      f"{'**no frame lost**' if allv and set(allv) == {300} and set(alla) == {470} else '**frames missing or extra**'}. "
      f"Timestamp step at each loop: video {steps_v} ms, audio {steps_a} ms (one frame is 33/21 ms).")
print()
step = max(1, len(rows) // 12)
pick = rows[::step] + ([rows[-1]] if (len(rows) - 1) % step else [])
print("RSS (MiB) / fds / threads over time: " + ", ".join(
    f"{int(r['t_s'])} s: {fmt(r['rss_kib'])}/{int(r['fds'])}/{int(r['threads'])}" for r in pick))
print()
if notlive:
    print("Sessions seen not live during the soak (t_s, session, state): " + "; ".join(notlive))
    print()
av = load(f"{work}/audit-verify.json")
print(f"Audit log hash chain after the run: intact = {av.get('intact')}. "
      f"`onair run` {open(f'{work}/run.exit').read().strip()} after SIGTERM.")
print()
PY
rc=$?
cat "$work/section.md"
[ $rc = 0 ] && replace_section soak "$work/section.md" && echo "==> written to $RELIABILITY_DOC (soak section)"
exit $rc
