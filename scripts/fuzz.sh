#!/usr/bin/env bash
# Runs every fuzz target in fuzz/ for SECONDS each (default 60) on the committed corpus.
#
#   scripts/fuzz.sh [SECONDS]          build with cargo-fuzz (installed when missing), run all
#   scripts/fuzz.sh --merge [SECONDS]  also merge new coverage into fuzz/corpus/<target>
#   scripts/fuzz.sh --ci [SECONDS]     what scripts/test.sh runs: no cargo-fuzz, plain cargo
#                                      build with the same flags (profile fuzz-ci)
#   FUZZ_TARGETS="h264 aac" scripts/fuzz.sh 300   only some targets
#
# Stable toolchain only: no sanitizer (`-s none`; ASan needs nightly's -Zsanitizer, and these
# targets run safe Rust), coverage instrumentation through stable -C flags. New corpus entries
# go to a temporary directory, so the committed corpus only grows with --merge. A crash stops
# the run with its input kept in target/fuzz-artifacts/<target>/ (copy it to fuzz/regressions/
# and add a regression test to the normal suite).
#
# Prints `fuzz: ok: <target> <runs> runs in <s> s` per target (scripts/test.sh counts these).
set -euo pipefail
cd "$(dirname "$0")/.."

mode=run
case "${1:-}" in
  --ci) mode=ci; shift ;;
  --merge) mode=merge; shift ;;
esac
seconds="${1:-60}"
targets="${FUZZ_TARGETS:-ts_demux h264 aac timeline rtmp_receive api_decode config}"
target_dir="${FUZZ_TARGET_DIR:-$PWD/target/fuzz}"
triple="$(rustc -vV | sed -n 's/^host: //p')"
bin_dir="$target_dir/$triple/release"

# The flags `cargo fuzz build -O -a -s none --codegen-units 16` passes (cargo-fuzz 0.13).
rustflags="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4"
rustflags+=" -Cllvm-args=-sanitizer-coverage-inline-8bit-counters"
rustflags+=" -Cllvm-args=-sanitizer-coverage-pc-table"
rustflags+=" -Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing"
rustflags+=" -Cllvm-args=-simplifycfg-branch-fold-threshold=0"
rustflags+=" -Cllvm-args=-sanitizer-coverage-stack-depth -Cdebug-assertions -Ccodegen-units=16"

if [ "$mode" = ci ]; then
  # CI skips installing cargo-fuzz (about a minute of compiling): libfuzzer-sys only needs
  # these flags.
  echo "==> fuzz build (cargo build, libFuzzer instrumentation)"
  # Profile fuzz-ci (fuzz/Cargo.toml): opt-level 1, no debuginfo, for a quicker cold build.
  RUSTFLAGS="$rustflags" cargo build --quiet --manifest-path fuzz/Cargo.toml \
    --target "$triple" --profile fuzz-ci --bins --target-dir "$target_dir"
  bin_dir="$target_dir/$triple/fuzz-ci"
else
  if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "==> installing cargo-fuzz"
    cargo install cargo-fuzz --locked
  fi
  echo "==> cargo fuzz build"
  cargo fuzz build -O -a -s none --codegen-units 16 --target-dir "$target_dir"
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
for t in $targets; do
  mkdir -p "$work/$t" "target/fuzz-artifacts/$t" "fuzz/corpus/$t"
  log="$work/$t.log"
  start=$(date +%s)
  # Inputs that once failed (fuzz/regressions/<target>) are replayed first, with the corpus.
  dirs=("fuzz/corpus/$t")
  [ -d "fuzz/regressions/$t" ] && dirs+=("fuzz/regressions/$t")
  if ! "$bin_dir/$t" "$work/$t" "${dirs[@]}" -max_total_time="$seconds" -timeout=10 \
      -rss_limit_mb=1024 -print_final_stats=1 \
      -artifact_prefix="target/fuzz-artifacts/$t/" >"$log" 2>&1; then
    tail -n 40 "$log"
    echo "fuzz: FAILED: $t (input in target/fuzz-artifacts/$t/)"
    exit 1
  fi
  end=$(date +%s)
  runs=$(sed -n 's/^Done \([0-9]*\) runs.*/\1/p' "$log" | tail -n 1)
  new=$(find "$work/$t" -type f | wc -l)
  # libFuzzer's last status line: "cov: N ft: N corp: N/SIZE ..."
  cov=$(grep -o 'cov: [0-9]* ft: [0-9]* corp: [0-9]*/[0-9]*[a-zA-Z]*' "$log" | tail -n 1 || true)
  echo "fuzz: ok: $t ${runs:-0} runs in $((end - start)) s ($cov; $new new corpus entries)"
  if [ "$mode" = merge ] && [ "$new" -gt 0 ]; then
    "$bin_dir/$t" -merge=1 "fuzz/corpus/$t" "$work/$t" >"$work/$t.merge.log" 2>&1
    echo "fuzz: merged into fuzz/corpus/$t: $(find "fuzz/corpus/$t" -type f | wc -l) files"
  fi
done
