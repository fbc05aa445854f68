#!/usr/bin/env bash
# What writing one frame per stream costs here, without a relay (docs/performance.md, session 7):
# a Python reader on loopback, then examples/write_floor.rs for K = 1, 16 and 64 streams of
# 26,000-byte frames (6.35 Mbit/s at 31 frames a second), 10 s each. Prints one JSON line per K.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --example write_floor
# Below the ephemeral range (32768–60999), so no outgoing connection holds it.
port=$((20000 + RANDOM % 10000))
python3 - "$port" <<'PY' &
import selectors, socket, sys
ls = socket.socket(); ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind(("127.0.0.1", int(sys.argv[1]))); ls.listen(512); ls.setblocking(False)
sel = selectors.DefaultSelector(); sel.register(ls, selectors.EVENT_READ)
while True:
    for key, _ in sel.select():
        if key.fileobj is ls:
            c, _ = ls.accept(); c.setblocking(False); sel.register(c, selectors.EVENT_READ)
            continue
        try:
            d = key.fileobj.recv(262144)
        except BlockingIOError:
            continue
        if not d:
            sel.unregister(key.fileobj); key.fileobj.close()
PY
reader=$!
trap 'kill $reader 2>/dev/null || true' EXIT
# Wait until the reader listens (up to 10 s).
for _ in $(seq 100); do
  (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
  sleep 0.1
done
read -r -a ks <<< "${K:-1 16 64}"
for k in "${ks[@]}"; do
  target/release/examples/write_floor "$port" "$k" "${SECONDS_EACH:-10}" 26000
done
