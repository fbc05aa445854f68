#!/usr/bin/env bash
# Rewrites docs/reliability.md from the reliability suites' own output (issue 6, item 6).
#
#   scripts/reliability-report.sh [SECTION...]    # default: every section with a runner
#
# Each section has a runner, scripts/reliability/<section>.sh, that defines
# `section_<section>`: it runs its tests and prints the section's Markdown (exit status non-zero
# if a test failed; the section is still written, showing the failure). The output replaces
# only the text between `<!-- <section>:begin -->` and `<!-- <section>:end -->` in
# docs/reliability.md, so sections owned by other runners (fuzzing, crash consistency,
# hostile clients) and scripts/soak.sh's are left alone. To add a section, drop in a runner.
# The crash and hostile sections are rewritten by scripts/reliability-crash-hostile.sh, which
# this script runs for them (section names `crash`, `hostile` or `crash-hostile`).
set -uo pipefail
cd "$(dirname "$0")/.."
. scripts/reliability/lib.sh

sections=("$@")
if [ ${#sections[@]} -eq 0 ]; then
  for f in scripts/reliability/*.sh; do
    n=$(basename "$f" .sh)
    [ "$n" = lib ] || sections+=("$n")
  done
  # Suites whose own script rewrites its sections (crash consistency + hostile clients).
  sections+=(crash-hostile)
fi

status=0
for s in "${sections[@]}"; do
  if [ "$s" = crash-hostile ] || [ "$s" = crash ] || [ "$s" = hostile ]; then
    echo "==> crash, hostile (scripts/reliability-crash-hostile.sh)"
    scripts/reliability-crash-hostile.sh || status=1
    continue
  fi
  runner=scripts/reliability/$s.sh
  if [ ! -f "$runner" ]; then
    echo "no runner for section '$s' ($runner)" >&2
    status=2
    continue
  fi
  # shellcheck source=/dev/null
  . "$runner"
  body=$(mktemp)
  echo "==> $s"
  if ! "section_$s" >"$body"; then
    echo "    $s: some tests failed (the section shows which)" >&2
    status=1
  fi
  replace_section "$s" "$body"
  rm -f "$body"
  echo "    $s: written to $RELIABILITY_DOC"
done
exit $status
