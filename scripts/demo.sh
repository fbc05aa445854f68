#!/usr/bin/env bash
# The demo: onair run (embedded default) + onair receive (private RTMPS ingest) + onair
# fabric-sim (media and indicator), driven through the real admin API: enable, profile,
# session, confirm, ~15 s live with stats, stop, recording. Needs only cargo (ffprobe, when
# installed, describes the recording). Everything stays on 127.0.0.1; files under var/demo/.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet --bin onair --example demo
ONAIR_BIN="$PWD/target/release/onair" exec target/release/examples/demo "$@"
