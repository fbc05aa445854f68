#!/usr/bin/env bash
# Generates the small MPEG-TS golden fixtures in tests/data/ and, for each, the ffprobe packet
# list the golden test (src/media/ts.rs, `golden_*`) compares the demuxer against.
#
#   X.ts              the capture, named <encoder>_<profile>.ts
#   X.ts.packets.csv  ffprobe -show_entries packet=stream_index,pts,dts,size,flags -of csv=p=0
#                     one line per demuxed packet: stream_index,pts,dts,size,flags
#                     (video: one line per PES/access unit; audio: one line per ADTS frame).
#                     Packets carrying side data ("MPEGTS Stream ID") end with a trailing comma
#                     and are followed by a blank line: readers must skip both.
#
# ffmpeg is required; GStreamer fixtures are made only if gst-launch-1.0 and the needed elements
# exist (skipped with a message otherwise). Re-running overwrites the fixtures: the encoders are
# not bit-exact across versions, so commit the outputs together with their CSVs.
set -euo pipefail

cd "$(dirname "$0")/.."
out=tests/data
mkdir -p "$out"

probe() {
    ffprobe -v error -show_entries packet=stream_index,pts,dts,size,flags -of csv=p=0 "$1" \
        >"$1.packets.csv"
}

ff() { # name, then extra ffmpeg args (video/audio encoding)
    local name=$1
    shift
    ffmpeg -hide_banner -loglevel error -y \
        -f lavfi -i testsrc2=size=320x240:rate=25 \
        "$@" -t 2 -f mpegts "$out/$name.ts"
    probe "$out/$name.ts"
}

ff ffmpeg_h264high_bframes_aac48k_stereo \
    -f lavfi -i sine=frequency=440:sample_rate=48000 \
    -c:v libx264 -profile:v high -bf 2 -g 25 -pix_fmt yuv420p \
    -c:a aac -ac 2 -ar 48000 -b:a 96k

ff ffmpeg_h264baseline_aac44k_mono \
    -f lavfi -i sine=frequency=1000:sample_rate=44100 \
    -c:v libx264 -profile:v baseline -bf 0 -g 25 -pix_fmt yuv420p \
    -c:a aac -ac 1 -ar 44100 -b:a 64k

gst() { # name, then the gst-launch pipeline description (muxer named mux, file sink appended)
    local name=$1
    shift
    if ! gst-launch-1.0 -q "$@" ! filesink location="$out/$name.ts"; then
        echo "gstreamer: $name failed, skipped" >&2
        rm -f "$out/$name.ts"
        return 0
    fi
    probe "$out/$name.ts"
}

if ! command -v gst-launch-1.0 >/dev/null; then
    echo "gst-launch-1.0 not found: GStreamer fixtures skipped" >&2
    exit 0
fi
aacenc=""
for e in avenc_aac voaacenc faac fdkaacenc; do
    if gst-inspect-1.0 "$e" >/dev/null 2>&1; then aacenc=$e; break; fi
done
for e in x264enc mpegtsmux h264parse aacparse; do
    if ! gst-inspect-1.0 "$e" >/dev/null 2>&1; then
        echo "GStreamer element $e missing: GStreamer fixtures skipped" >&2
        exit 0
    fi
done
if [ -z "$aacenc" ]; then
    echo "no GStreamer AAC encoder: GStreamer fixtures skipped" >&2
    exit 0
fi

# 50 video frames (2 s at 25 fps), 2 s of audio.
gst gstreamer_h264main_bframes_aac48k_stereo \
    videotestsrc num-buffers=50 pattern=ball \
    ! video/x-raw,width=320,height=240,framerate=25/1,format=I420 \
    ! x264enc bframes=2 key-int-max=25 bitrate=300 \
    ! video/x-h264,profile=main ! h264parse ! mux. \
    audiotestsrc num-buffers=94 samplesperbuffer=1024 freq=440 \
    ! audio/x-raw,rate=48000,channels=2 ! audioconvert ! "$aacenc" ! aacparse ! mux. \
    mpegtsmux name=mux
