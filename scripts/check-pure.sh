#!/usr/bin/env bash
# The protocol and policy cores take bytes and timestamps and return actions: no sockets, files,
# clocks or async runtime. This fails if one of them names any of those.
set -euo pipefail
cd "$(dirname "$0")/.."
cores=(src/media src/control/consent.rs src/control/destination.rs src/control/model.rs src/egress/session.rs src/egress/queue.rs src/egress/backoff.rs src/egress/url.rs
       src/receive/session.rs src/rtmp_guard.rs src/init/netplan.rs src/init/cmdline.rs)
pattern='tokio|std::net::(Tcp|Udp)|std::fs|std::thread|Instant|SystemTime|::now\(\)|UdpSocket|TcpStream|TcpListener|File::'
if hits=$(grep -rnE "$pattern" "${cores[@]}" | grep -vE '^\S+:\s*//|include_bytes'); then
  echo "I/O or clock use in a pure core:"
  echo "$hits"
  exit 1
fi
echo "pure cores: ok (${cores[*]})"
