#!/usr/bin/env bash
# The demo: the bundled clip → fabric simulator → onair relay → onair receive, on loopback,
# for two passes of the clip (~20 s); then shows what was recorded. Needs only cargo;
# uses ffprobe to describe the recording when it is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo run --release --quiet --example demo -- "$@" | tee /tmp/onair-demo.log
rec=$(sed -n 's/^recorded: //p' /tmp/onair-demo.log | tail -1)
if [ -n "$rec" ] && command -v ffprobe >/dev/null 2>&1; then
  echo "--- ffprobe of $rec"
  ffprobe -v error -show_entries stream=codec_name,width,height,sample_rate,channels:format=duration -of compact "$rec"
fi
