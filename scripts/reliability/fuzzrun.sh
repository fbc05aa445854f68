# Runner for the fuzzing results block (issue 6, item 1). Sourced by
# scripts/reliability-report.sh; defines section_fuzzrun, which runs every fuzz target for
# ONAIR_FUZZ_REPORT_SECONDS (default 60) with scripts/fuzz.sh and prints a table from its
# `fuzz: ok:` / `fuzz: FAILED:` lines. It rewrites only the block between
# <!-- fuzzrun:begin --> and <!-- fuzzrun:end --> inside the Fuzzing section.

section_fuzzrun() {
  local secs=${ONAIR_FUZZ_REPORT_SECONDS:-60} log=target/reliability-fuzz.log rc=0
  mkdir -p target
  scripts/fuzz.sh "$secs" >"$log" 2>&1 || rc=$?
  echo "Latest run of \`scripts/reliability-report.sh fuzzrun\`: $(date -u '+%Y-%m-%d %H:%M UTC'), ${secs} s per target, commit \`$(git rev-parse --short HEAD)\`, load $(cut -d' ' -f1-3 /proc/loadavg) (2 cores)."
  echo
  echo "| target | result | executions, time, coverage, new corpus entries |"
  echo "|---|---|---|"
  sed -n 's/^fuzz: ok: \([^ ]*\) \(.*\)$/| `\1` | ok | \2 |/p; s/^fuzz: FAILED: \([^ ]*\) \(.*\)$/| `\1` | **FAILED** | \2 |/p' "$log"
  echo
  return "$rc"
}
