#!/usr/bin/env bash
# The long fuzz campaign: builds the `fuzz` preset and runs every libFuzzer
# harness for a bounded time (default 60 s each), starting from the committed
# seeds in fuzz/corpus/ and keeping what it finds in build/fuzz/corpus/.
# Prints each harness's executions and coverage; exits non-zero on a finding
# (the input is saved as build/fuzz/findings/<harness>/crash-*).
#   scripts/fuzz.sh [seconds per harness] [harness ...]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
shift || true
scripts/build.sh fuzz
harnesses=("$@")
[ ${#harnesses[@]} -gt 0 ] || harnesses=(fuzz_forward_training fuzz_forward_inference fuzz_backward fuzz_layer)
status=0
for h in "${harnesses[@]}"; do
  [ -x "build/fuzz/fuzz/$h" ] || continue
  work=build/fuzz/corpus/$h findings=build/fuzz/findings/$h
  mkdir -p "$work" "$findings"
  log=build/fuzz/$h.log
  if UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 "build/fuzz/fuzz/$h" \
      -max_total_time="$seconds" -max_len=512 -print_final_stats=1 \
      -artifact_prefix="$findings/" "$work" "fuzz/corpus/$h" >"$log" 2>&1; then
    result=ok
  else
    result="FINDING (see $log and $findings)"
    status=1
  fi
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo ?)
  cov=$(grep -E '^#[0-9]+' "$log" | tail -1 | grep -o 'cov: [0-9]*' || echo 'cov: ?')
  ft=$(grep -E '^#[0-9]+' "$log" | tail -1 | grep -o 'ft: [0-9]*' || echo 'ft: ?')
  echo "$h: ${seconds} s, $execs executions, $cov edges, $ft features: $result"
done
exit $status
