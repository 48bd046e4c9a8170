#!/usr/bin/env bash
# Fuzzing (issue 18): builds every cargo-fuzz target of macula_nat_proto
# (native/macula_nat_proto/fuzz, nightly) and runs each for a fixed time,
# one after the other with one job each (the CPU is shared), then rewrites
# bench/fuzz.md: target, runs, time, corpus size, crashes.
# Usage: bench/fuzz.sh [seconds_per_target]   (default 60)
# The corpus (native/macula_nat_proto/fuzz/corpus/<target>, not committed)
# is kept between runs, so a later run starts where the last one stopped
# (plus the committed seeds of fuzz/seeds/<target>, if any);
# a crash leaves its input in fuzz/artifacts/<target>/ and fails the script
# after every target has run.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
SECS="${1:-60}"
command -v cargo-fuzz >/dev/null || { echo "cargo-fuzz missing: cargo install cargo-fuzz" >&2; exit 1; }
fuzz=native/macula_nat_proto/fuzz
(cd native/macula_nat_proto && cargo +nightly fuzz build -O) >&2
targets=$(cd native/macula_nat_proto && cargo +nightly fuzz list)
rows=$(mktemp)
logs=$(mktemp -d)
trap 'rm -rf "$rows" "$logs"' EXIT
failed=0
for t in $targets; do
  mkdir -p "$fuzz/corpus/$t"
  before=$(ls "$fuzz/corpus/$t" | wc -l)
  start=$(date +%s.%N)
  status=0
  # Committed seeds (fuzz/seeds/<target>, valid inputs the fuzzer is slow
  # to find alone) are read, never written.
  dirs=("$PWD/$fuzz/corpus/$t")
  [[ -d "$fuzz/seeds/$t" ]] && dirs+=("$PWD/$fuzz/seeds/$t")
  (cd native/macula_nat_proto && cargo +nightly fuzz run -O "$t" "${dirs[@]}" -- \
      -max_total_time="$SECS" -print_final_stats=1) > "$logs/$t.log" 2>&1 || status=$?
  secs=$(echo "$(date +%s.%N) - $start" | bc)
  # libFuzzer's own count: "Done N runs in S second(s)" (absent after a
  # crash: then the last "#N" status line).
  runs=$(grep -oE 'Done [0-9]+ runs' "$logs/$t.log" | grep -oE '[0-9]+' | tail -1 || true)
  [[ -n "$runs" ]] || runs=$(grep -oE '^#[0-9]+' "$logs/$t.log" | tr -d '#' | tail -1 || echo 0)
  after=$(ls "$fuzz/corpus/$t" | wc -l)
  crashes=$(ls "$fuzz/artifacts/$t" 2>/dev/null | grep -cE '^(crash|oom|timeout|leak)-' || true)
  if [[ $status -ne 0 ]]; then
    failed=1
    echo "== $t failed (exit $status); its log:" >&2
    tail -40 "$logs/$t.log" >&2
    [[ "$crashes" -gt 0 ]] || crashes="exit $status"
  fi
  printf '| %s | %s | %.0f s | %s (%s new) | %s |\n' "$t" "$runs" "$secs" "$after" "$((after - before))" "$crashes" >> "$rows"
  echo "$t: $runs runs, corpus $after, crashes $crashes" >&2
done
{
  echo "# Fuzzing: cargo-fuzz targets of macula_nat_proto"
  echo
  echo "\`bench/fuzz.sh $SECS\` at commit $(git rev-parse --short HEAD), $(date -u '+%Y-%m-%d %H:%M') UTC, $(nproc) cores (shared with other work), one libFuzzer job per target, run one after another."
  echo "Targets are in \`native/macula_nat_proto/fuzz/fuzz_targets/\`; each asserts more than \"no panic\" (see its doc: round trips, agreement between accessors, signatures)."
  echo "**Runs**: libFuzzer's executions. **Corpus**: inputs kept after the run (the corpus is kept between runs; \"new\": added by this one)."
  echo "**Crashes**: inputs left in \`fuzz/artifacts/<target>/\` (panics, out-of-memory, timeouts, leaks)."
  echo
  echo "| target | runs | time | corpus | crashes |"
  echo "|---|---|---|---|---|"
  cat "$rows"
  echo
  echo "Message framing on connections is fuzzed through the decoder the runtime reads with (\`message_frame\`: \`macula_nat_proto::frame\`, used by \`Connection::recv\` in \`macula_nat_core/src/quic/conn.rs\`), fed in reads of every size."
} > bench/fuzz.md
cat bench/fuzz.md
exit $failed
