#!/usr/bin/env bash
# Regenerates the H.264 / AAC golden fixtures in tests/data/ used by src/media/{h264,aac}.rs tests.
#
# Needs ffmpeg + ffprobe (with libx264 and the native aac encoder) and python3 (only to pull the
# AVCDecoderConfigurationRecord out of an FLV sequence-header tag). Output is deterministic for a
# given ffmpeg/x264 build (-threads 1, bitexact). If you regenerate with a different ffmpeg, the
# golden constants in the tests (taken from ffprobe) must be re-checked; print them with:
#   ffprobe -v error -show_streams tests/data/<file>
#   ffprobe -v error -show_packets -show_entries packet=flags tests/data/<file>
set -euo pipefail

cd "$(dirname "$0")/.."
OUT=tests/data
mkdir -p "$OUT"

FF=(ffmpeg -hide_banner -loglevel error -y)
# One AUD at the start of every access unit so tests can split the elementary stream by AUD.
AUD=(-bsf:v h264_metadata=aud=insert)
X264=(-c:v libx264 -threads 1 -pix_fmt yuv420p -flags:v +bitexact -fflags +bitexact)

# $1 = input .h264; writes the avcC record ffmpeg's FLV muxer (ff_isom_write_avcc) produces.
extract_avcc() {
    local src=$1 dst=${1%.h264}.avcC.bin tmp
    tmp=$(mktemp --suffix=.flv)
    # The raw demuxer gives B-frame packets no PTS; PTS=DTS only to let the FLV muxer run.
    "${FF[@]}" -i "$src" -c copy -bsf:v setts=pts=DTS -f flv "$tmp"
    python3 - "$tmp" "$dst" <<'PY'
import struct, sys
data = open(sys.argv[1], "rb").read()
assert data[:3] == b"FLV"
pos = struct.unpack(">I", data[5:9])[0] + 4  # header + PreviousTagSize0
while pos + 11 <= len(data):
    tag_type = data[pos]
    size = int.from_bytes(data[pos + 1:pos + 4], "big")
    body = data[pos + 11:pos + 11 + size]
    # Video tag, codec 7 (AVC), AVCPacketType 0 = sequence header; avcC starts at body[5].
    if tag_type == 9 and body[0] & 0x0F == 7 and body[1] == 0:
        open(sys.argv[2], "wb").write(body[5:])
        break
    pos += 11 + size + 4
else:
    sys.exit("no AVC sequence header in FLV")
PY
    rm -f "$tmp"
}

# High profile, 2 B-frames, GOP 25, 25 fps, 2 s, 320x240.
"${FF[@]}" -f lavfi -i testsrc2=size=320x240:rate=25 -t 2 "${X264[@]}" \
    -profile:v high -bf 2 -g 25 -crf 28 "${AUD[@]}" -f h264 "$OUT/ffmpeg_h264high_bframes_320x240.h264"
extract_avcc "$OUT/ffmpeg_h264high_bframes_320x240.h264"

# Baseline, 1 s, 1280x720 (720 = 45 MBs: no cropping).
"${FF[@]}" -f lavfi -i testsrc2=size=1280x720:rate=25 -t 1 "${X264[@]}" \
    -profile:v baseline -g 25 -preset ultrafast -b:v 600k "${AUD[@]}" \
    -f h264 "$OUT/ffmpeg_h264baseline_1280x720.h264"
extract_avcc "$OUT/ffmpeg_h264baseline_1280x720.h264"

# Baseline, 0.5 s, 1920x1080: coded as 1088 lines, cropped by 8 (frame_crop_bottom_offset=4).
"${FF[@]}" -f lavfi -i testsrc2=size=1920x1080:rate=25 -t 0.5 "${X264[@]}" \
    -profile:v baseline -g 25 -preset ultrafast -b:v 800k "${AUD[@]}" \
    -f h264 "$OUT/ffmpeg_h264baseline_1920x1080.h264"
extract_avcc "$OUT/ffmpeg_h264baseline_1920x1080.h264"

# Small SPS-parser edge cases (2-3 frames each): High 4:2:2 10-bit and High 4:4:4 Predictive
# (avcC high-profile extension with chroma_format_idc 2/3 and bit depth 10), odd sizes needing
# cropping in 4:2:2 / 4:4:4 crop units, and an interlaced (frame_mbs_only_flag=0) Main stream.
# Note: x264 always codes seq_scaling_matrix_present_flag=0 and puts cqm matrices in the PPS;
# SPS scaling lists are covered by the hand-built SPS from scripts/make-sps-scaling-vector.py.
"${FF[@]}" -f lavfi -i testsrc2=size=360x202:rate=25 -frames:v 2 "${X264[@]}" -pix_fmt yuv422p10le \
    -profile:v high422 -x264-params cqm=jvt -preset ultrafast "${AUD[@]}" \
    -f h264 "$OUT/ffmpeg_h264high422_10bit_cqm_360x202.h264"
extract_avcc "$OUT/ffmpeg_h264high422_10bit_cqm_360x202.h264"
# Custom (non-default) 4x4 and 8x8 matrices so every scaling list is coded explicitly.
CQM4=$(seq -s, 16 31)
CQM8=$(seq -s, 10 73)
"${FF[@]}" -f lavfi -i testsrc2=size=170x100:rate=30 -frames:v 2 "${X264[@]}" -pix_fmt yuv444p \
    -profile:v high444 -x264-params "cqm4=$CQM4:cqm8=$CQM8" -preset ultrafast "${AUD[@]}" \
    -f h264 "$OUT/ffmpeg_h264high444_cqmcustom_170x100.h264"
extract_avcc "$OUT/ffmpeg_h264high444_cqmcustom_170x100.h264"
"${FF[@]}" -f lavfi -i testsrc2=size=320x240:rate=25 -frames:v 3 "${X264[@]}" \
    -flags:v +bitexact+ildct+ilme -x264-params interlaced=1:tff=1 -preset ultrafast "${AUD[@]}" \
    -f h264 "$OUT/ffmpeg_h264main_interlaced_320x240.h264"
extract_avcc "$OUT/ffmpeg_h264main_interlaced_320x240.h264"

# AAC-LC in ADTS, 1 s sine.
"${FF[@]}" -f lavfi -i sine=frequency=1000:sample_rate=48000:duration=1 -ac 2 \
    -c:a aac -b:a 128k -fflags +bitexact -flags:a +bitexact -f adts "$OUT/ffmpeg_aaclc_48k_stereo.adts"
"${FF[@]}" -f lavfi -i sine=frequency=440:sample_rate=44100:duration=1 -ac 1 \
    -c:a aac -b:a 64k -fflags +bitexact -flags:a +bitexact -f adts "$OUT/ffmpeg_aaclc_44k_mono.adts"

ls -l "$OUT"
