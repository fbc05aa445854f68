#!/usr/bin/env bash
# The side-by-side benchmark of issue 5: onair vs FFmpeg vs GStreamer relaying the same
# 1080p30 ≈6.35 Mbit/s MPEG-TS feeds (UDP, 1316-byte datagrams) to the same measuring RTMP sink
# on 127.0.0.1, K streams at a time, repetitions interleaved. See docs/performance.md.
#
#   scripts/bench.sh [--k "1 16"] [--reps 2] [--tools "onair ffmpeg gst"] [--measure-s 15]
#                    [--warmup-s 8] [--no-doc] [--base-bin PATH] [--tls] [--results FILE]
#   --tls:      every tool publishes rtmps:// to stunnel4 (test CA made with openssl) in front of
#               the sink; stunnel's CPU is not counted (it plays the ingest's TLS end). onair
#               verifies with the test CA as its CA bundle; FFmpeg does not verify (its default);
#               GStreamer's rtmp2sink runs with tls-validation-flags=0 (no verification).
#               Labels get " rtmps" (e.g. "onair rtmps"), ratios are to "ffmpeg rtmps".
#   --results:  append to this results file (a matrix over several invocations, one table)
#   --start-at-gate: onair relays are started at their consent gate (as the supervisor starts
#               one at confirm: ingest bound, egress connecting then) instead of all at once
#               and gated; labels get "@gate" (e.g. "onair@gate")
#   --stage recv|core: cost breakdown of onair (nothing is delivered, runs are not valid):
#               `recv` only receives the datagrams, `core` also runs the media core; labels
#               get ":recv" / ":core"
#   --base-bin: an older build of examples/bench, run as the tool `onair-base` (A/B of a change
#               in one run, e.g. --tools "onair-base onair")
#   scripts/bench.sh --smoke     # CI: K=1, onair only, the bundled clip, a few seconds;
#                                # checks delivery only, never fails on speed
#
# The load tool (examples/bench.rs `load`) plays the K streams from one process (sendmmsg,
# each stream on its own clock, starts staggered over one GOP), runs the sink, samples the
# relays' on-CPU time (/proc/PID/task/*/schedstat) over the measured window and matches each
# received video message to the frame the sender sent. A run counts only if every stream
# delivered every frame of the window without a DTS gap.
set -euo pipefail
cd "$(dirname "$0")/.."

base_bin=; tls=0; at_gate=0; results=; smoke=0; stage=; ks="1 16"; reps=2; tools="onair ffmpeg gst"; measure=15; warmup=8; doc=1
while [ $# -gt 0 ]; do
  case "$1" in
    --smoke) smoke=1 ;;
    --k) ks=$2; shift ;;
    --reps) reps=$2; shift ;;
    --tools) tools=$2; shift ;;
    --measure-s) measure=$2; shift ;;
    --warmup-s) warmup=$2; shift ;;
    --no-doc) doc=0 ;;
    --base-bin) base_bin=$2; shift ;;
    --tls) tls=1 ;;
    --start-at-gate) at_gate=1 ;;
    --results) results=$2; shift ;;
    --stage) stage=$2; shift ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done

work=target/bench; mkdir -p "$work"
# Every process this script starts is a background job of this shell: on exit, the jobs still
# running (and only those, by PID) are stopped.
cleanup() {
  local left; left=$(jobs -pr)
  [ -n "$left" ] || return 0
  kill $left 2>/dev/null || true
  sleep 0.3
  kill -9 $(jobs -pr) 2>/dev/null || true
}
trap cleanup EXIT INT TERM

# Stops the given PIDs: TERM, up to 3 s, then KILL.
stop_pids() {
  [ $# -gt 0 ] || return 0
  kill "$@" 2>/dev/null || true
  for _ in $(seq 30); do
    alive=0; for p in "$@"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ $alive -eq 0 ] && break
    sleep 0.1
  done
  kill -9 "$@" 2>/dev/null || true
  for p in "$@"; do wait "$p" 2>/dev/null || true; done
}

# Waits (at most 20 s) until the machine is quiet: less than 10 % of the CPU time busy over
# one second. A run that started right after 64 FFmpeg or GStreamer processes measured 2.4 x
# its quiet figure (onair, K = 1: 10.0 against 4.1 ms per stream-second, 1-min load 5.3).
settle() {
  local i j a b total busy
  for i in $(seq 20); do
    read -ra a < /proc/stat; sleep 1; read -ra b < /proc/stat
    total=0; for j in 1 2 3 4 5 6 7 8; do total=$((total + b[j] - a[j])); done
    busy=$((total - (b[4] - a[4]) - (b[5] - a[5])))
    [ $((busy * 10)) -lt "$total" ] && return 0
  done
  echo "  (the machine stayed busy: $busy of $total ticks in the last second)" >&2
}

require=()
if [ $smoke -eq 1 ]; then
  ks=1; reps=1; tools=onair; measure=4; warmup=2; doc=0; require=(--require-delivery)
  feed=assets/sample.ts; stagger=0
  cargo build --quiet --example bench
  bench=target/debug/examples/bench
else
  pkgs=()
  command -v python3 >/dev/null 2>&1 || pkgs+=(python3)
  command -v ffmpeg >/dev/null 2>&1 || pkgs+=(ffmpeg)
  command -v gst-launch-1.0 >/dev/null 2>&1 || pkgs+=(gstreamer1.0-tools)
  [ $tls -eq 1 ] && ! command -v stunnel4 >/dev/null 2>&1 && pkgs+=(stunnel4)
  [ $tls -eq 1 ] && ! command -v openssl >/dev/null 2>&1 && pkgs+=(openssl)
  for p in gstreamer1.0-plugins-good gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly; do
    dpkg -s "$p" >/dev/null 2>&1 || pkgs+=("$p")
  done
  if [ ${#pkgs[@]} -gt 0 ]; then
    echo "==> installing ${pkgs[*]}"
    SUDO=; [ "$(id -u)" -eq 0 ] || SUDO=sudo
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
  fi
  feed=$work/feed_1080p30_6M_60s.ts; stagger=2000
  if [ ! -s "$feed" ]; then
    echo "==> making the feed once (1080p30 H.264 High, GOP 2 s, AAC 128k, mux 6.35 Mbit/s, 60 s)"
    ffmpeg -v error -nostdin -y -f lavfi -i "testsrc2=size=1920x1080:rate=30" \
      -f lavfi -i "sine=frequency=440:sample_rate=48000" -t 60 -map 0:v -map 1:a \
      -c:v libx264 -preset ultrafast -profile:v high -bf 2 -g 60 -keyint_min 60 \
      -b:v 6M -minrate 6M -maxrate 6M -bufsize 6M -x264-params nal-hrd=cbr -pix_fmt yuv420p \
      -c:a aac -b:a 128k -f mpegts -muxrate 6350k "$feed.tmp"
    mv "$feed.tmp" "$feed"
  fi
  cargo build --release --quiet --example bench
  bench=target/release/examples/bench
fi

if [ -z "$results" ]; then
  results=$work/results-$(date +%Y%m%d-%H%M%S).jsonl
  : > "$results"
fi

# RTMPS: a test CA and a server certificate for 127.0.0.1 (as tests/common TestCa), once.
ca=$work/tls
if [ $tls -eq 1 ] && [ ! -s "$ca/server.pem" ]; then
  mkdir -p "$ca"
  ( cd "$ca"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout ca.key \
      -out ca.pem -days 30 -subj "/CN=onair bench test CA" \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout server.key \
      -out server.csr -subj "/CN=localhost"
    printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' > ext.cnf
    openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem \
      -days 30 -extfile ext.cnf ) > /dev/null 2>&1
fi

# One measured run: prints nothing, appends a JSON line to $results.
run_one() {
  local tool=$1 k=$2 rep=$3
  local label=$tool
  [ $at_gate -eq 1 ] && label="$label@gate"
  [ -n "$stage" ] && label="$label:$stage"
  [ $tls -eq 1 ] && label="$label rtmps"
  local dir=$work/run/${label// /-}-k$k-r$rep
  rm -rf "$dir"; mkdir -p "$dir"
  local base=$((20000 + RANDOM % 20000))
  "$bench" load --file "$feed" --label "$label" --streams "$k" --udp-base "$base" \
    --ready-file "$dir/ready" --pids-file "$dir/pids" --stagger-ms "$stagger" \
    --warmup-s "$warmup" --measure-s "$measure" --gates-file "$dir/gates" "${require[@]}" \
    > "$dir/result.json" 2> "$dir/load.log" &
  local load=$!
  for _ in $(seq 100); do [ -s "$dir/ready" ] && break; sleep 0.1; done
  local sport; sport=$(cat "$dir/ready")
  local url="rtmp://127.0.0.1:$sport/live" tls_args=() tunnel=()
  if [ $tls -eq 1 ]; then
    # A random port may be taken: up to 3 tries, each until stunnel accepts (≤ 5 s).
    local tport try up=0
    for try in 1 2 3; do
      tport=$((40000 + RANDOM % 20000))
      printf 'foreground = yes\npid =\noutput = %s/stunnel.log\n[rtmps]\naccept = 127.0.0.1:%s\nconnect = 127.0.0.1:%s\ncert = %s/server.pem\nkey = %s/server.key\n' \
        "$PWD/$dir" "$tport" "$sport" "$PWD/$ca" "$PWD/$ca" > "$dir/stunnel.conf"
      stunnel4 "$dir/stunnel.conf" > "$dir/stunnel.out" 2>&1 &
      tunnel=($!)
      for _ in $(seq 50); do
        (exec 3<>"/dev/tcp/127.0.0.1/$tport") 2>/dev/null && { up=1; break; }
        kill -0 "${tunnel[0]}" 2>/dev/null || break
        sleep 0.1
      done
      [ $up -eq 1 ] && break
      stop_pids "${tunnel[@]}"; tunnel=()
      echo "stunnel did not start (try $try, see $dir/stunnel.out)" >&2
    done
    url="rtmps://127.0.0.1:$tport/live"; tls_args=(--ca "$ca/ca.pem")
  fi
  # Confirm → first frame: relay i's gate falls 3–5 s after the relays start (every stream
  # is flowing by then), anywhere in a GOP; smoke: gates at start.
  local gate_args=(--gates-file "$dir/gates")
  [ $smoke -eq 1 ] || gate_args+=(--gate-delay-ms 3000 --gate-spread-ms 2000)
  [ $at_gate -eq 1 ] && gate_args+=(--start-at-gate)
  local pids=() i
  case "$tool" in
    onair|onair-socket|onair-base)
      local extra=() bin=$bench; [ "$tool" = onair-socket ] && extra=(--socket)
      [ -n "$stage" ] && extra+=(--stage "$stage")
      if [ "$tool" = onair-base ]; then
        [ -x "$base_bin" ] || { echo "onair-base needs --base-bin" >&2; return 1; }
        bin=$base_bin
      fi
      "$bin" relays --streams "$k" --udp-base "$base" --url "$url" "${tls_args[@]}" \
        "${gate_args[@]}" "${extra[@]}" > /dev/null 2> "$dir/relay.log" &
      pids+=($!) ;;
    ffmpeg)
      for ((i = 0; i < k; i++)); do
        ffmpeg -nostdin -v error -i "udp://127.0.0.1:$((base + i))?fifo_size=50000&overrun_nonfatal=1" \
          -map 0 -c copy -f flv "$url/bench-$i" 2> "$dir/relay-$i.log" &
        pids+=($!)
      done ;;
    gst)
      for ((i = 0; i < k; i++)); do
        gst-launch-1.0 -q udpsrc address=127.0.0.1 port=$((base + i)) buffer-size=4194304 \
          caps="video/mpegts,systemstream=(boolean)true,packetsize=(int)188" ! tsdemux name=d \
          d. ! queue ! h264parse ! flvmux name=m streamable=true \
          ! rtmp2sink location="$url/bench-$i" $([ $tls -eq 1 ] && echo tls-validation-flags=0) \
          d. ! queue ! aacparse ! m. > /dev/null 2> "$dir/relay-$i.log" &
        pids+=($!)
      done ;;
    *) echo "unknown tool $tool" >&2; return 1 ;;
  esac
  echo "${pids[*]}" > "$dir/pids.tmp"; mv "$dir/pids.tmp" "$dir/pids"
  local rc=0
  wait "$load" || rc=$?
  stop_pids "${pids[@]}"
  stop_pids "${tunnel[@]}"
  if [ -s "$dir/result.json" ]; then
    cat "$dir/result.json" >> "$results"
  else
    echo "{\"label\":\"$tool\",\"streams\":$k,\"valid\":false,\"error\":\"load tool failed, see $dir/load.log\"}" >> "$results"
  fi
  return $rc
}

echo "==> $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg); K = $ks; tools: $tools; $reps repetition(s)"
for ((r = 1; r <= reps; r++)); do
  for k in $ks; do
    for tool in $tools; do
      printf '  run %d  K=%-3s %-12s' "$r" "$k" "$tool$([ $at_gate -eq 1 ] && echo '@gate')$([ $tls -eq 1 ] && echo ' rtmps')"
      if [ $smoke -eq 1 ]; then
        echo
        rc=0; run_one "$tool" "$k" "$r" || rc=$?
        tail -1 "$work/run/$tool-k$k-r$r/load.log"
        if command -v python3 >/dev/null 2>&1; then python3 scripts/bench_report.py --last "$results" || true; fi
        [ $rc -eq 0 ] && echo "bench smoke: ok" || echo "bench smoke: FAILED (see $work/run/$tool-k$k-r$r/)"
        exit $rc
      fi
      settle
      run_one "$tool" "$k" "$r" || true
      python3 scripts/bench_report.py --last "$results"
    done
  done
done


doc_arg=; [ $doc -eq 1 ] && doc_arg=docs/performance.md
python3 scripts/bench_report.py "$results" $doc_arg
