#!/usr/bin/env bash
# Makes assets/sample.ts: the bundled demo clip that `onair fabric-sim` plays by default, so the
# demo needs no encoder. H.264 High with B-frames (GOP 2 s) + AAC-LC 48 kHz stereo, 10 s, 640x360.
# Deterministic enough to re-run: fixed test sources, single-threaded x264.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-assets/sample.ts}
mkdir -p "$(dirname "$out")"
ffmpeg -v error -y \
  -f lavfi -i "testsrc2=size=640x360:rate=30" \
  -f lavfi -i "sine=frequency=523:sample_rate=48000:beep_factor=4" \
  -t 10 -map 0:v -map 1:a \
  -c:v libx264 -profile:v high -preset veryfast -tune zerolatency -bf 2 -g 60 -keyint_min 60 -sc_threshold 0 \
  -b:v 1000k -maxrate 1200k -bufsize 1000k -pix_fmt yuv420p -threads 1 \
  -x264-params "rc-lookahead=0:sliced-threads=0" \
  -c:a aac -b:a 96k -ac 2 -ar 48000 \
  -metadata service_name="onair sample" \
  -f mpegts -mpegts_flags +resend_headers "$out"
ls -l "$out"
ffprobe -v error -show_entries stream=codec_name,profile,width,height,has_b_frames,sample_rate,channels -of compact "$out"
