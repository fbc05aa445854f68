#!/usr/bin/env bash
# CPU of one relayed 1080p30 ≈6 Mbit/s stream, measured with /usr/bin/time: fabric-sim plays the
# feed over UDP into a relay process (examples/relay_once), which publishes to nginx-rtmp on
# loopback. Prints user+sys CPU per stream-second and peak RSS. A measurement, not a test.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${SECONDS_TO_RUN:-20}
work=target/cpu-one-stream; mkdir -p "$work/rec" "$work/logs"
feed=$work/feed_1080p30_6M.ts
if [ ! -s "$feed" ]; then
  echo "==> making the feed (1080p30 H.264 High, 6 Mbit/s CBR-ish, GOP 2 s, AAC 128k, 20 s)"
  ffmpeg -v error -y -f lavfi -i "testsrc2=size=1920x1080:rate=30" -f lavfi -i "sine=frequency=440:sample_rate=48000" \
    -t 20 -map 0:v -map 1:a -c:v libx264 -preset ultrafast -profile:v high -bf 2 -g 60 -keyint_min 60 \
    -b:v 6M -minrate 6M -maxrate 6M -bufsize 6M -x264-params nal-hrd=cbr -pix_fmt yuv420p \
    -c:a aac -b:a 128k -f mpegts -muxrate 6350k "$feed"
fi
cargo build --release --quiet --example relay_once --bin onair
port=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
uport=$(python3 -c 'import socket;s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
cat > "$work/nginx.conf" <<CONF
load_module /usr/lib/nginx/modules/ngx_rtmp_module.so;
daemon off; master_process off; worker_processes 1;
error_log $PWD/$work/logs/error.log; pid $PWD/$work/nginx.pid;
events { worker_connections 64; }
rtmp { server { listen 127.0.0.1:$port; application live { live on; } } }
CONF
nginx -p "$PWD/$work" -e "$PWD/$work/logs/error.log" -c "$PWD/$work/nginx.conf" & ngx=$!
trap 'kill $ngx 2>/dev/null || true' EXIT
sleep 0.5
ONAIR_STREAM_KEY=cpu-measure /usr/bin/time -f "%U %S %M" -o "$work/time.txt" \
  target/release/examples/relay_once --ingest "127.0.0.1:$uport" --url "rtmp://127.0.0.1:$port/live" \
  --seconds "$((secs + 1))" "$@" > "$work/stats.json" & relay=$!
sleep 0.5
target/release/onair fabric-sim --file "$feed" --to "127.0.0.1:$uport" --loops 1 2>/dev/null
wait $relay
read -r user sys rss_kb < "$work/time.txt"
echo "relay counters: $(cat "$work/stats.json")"
python3 - "$user" "$sys" "$rss_kb" "$secs" <<'PY'
import sys
u, s, rss, secs = float(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
print(f"CPU user {u:.2f} s + sys {s:.2f} s over {secs:.0f} s of stream = {1000*(u+s)/secs:.2f} ms per stream-second; peak RSS {rss/1024:.1f} MiB")
PY
