#!/usr/bin/env bash
# Micro-benchmarks of the pure cores (benches/core.rs, criterion): TS demux, media core, H.264
# and AAC repacking, RTMP chunking (egress) and RTMP input (receiver), in MB/s and per packet.
# A regression guard run by hand:
#   scripts/microbench.sh --save before     # on the old commit: record a baseline
#   scripts/microbench.sh --compare before  # on the new one: criterion prints the change
#                                           # and this script fails if any got >10 % slower
# Without arguments: one run, figures printed. Extra arguments after `--` go to criterion.
set -euo pipefail
cd "$(dirname "$0")/.."
mode=run; name=
case "${1:-}" in
  --save) mode=save; name=${2:?baseline name}; shift 2 ;;
  --compare) mode=compare; name=${2:?baseline name}; shift 2 ;;
esac
[ "${1:-}" = -- ] && shift
args=(--warm-up-time 1 --measurement-time 3 "$@")
case $mode in
  run) cargo bench --bench core -- "${args[@]}" ;;
  save) cargo bench --bench core -- --save-baseline "$name" "${args[@]}" ;;
  compare)
    log=$(mktemp); trap 'rm -f "$log"' EXIT
    cargo bench --bench core -- --baseline "$name" "${args[@]}" | tee "$log"
    # criterion prints "change:" then "time: [low median high]" (a slowdown is +x %, a
    # speed-up −x % with a Unicode minus, which reads as 0 here).
    if awk '/change:/ { c = 1; next }
            c && /time:/ { gsub(/[\[\]%+]/, ""); if ($3 + 0 > 10) bad = 1; c = 0 }
            END { exit !bad }' "$log"; then
      echo "microbench: a core got more than 10 % slower than baseline '$name'" >&2
      exit 1
    fi
    echo "microbench: no core more than 10 % slower than baseline '$name'" ;;
esac
