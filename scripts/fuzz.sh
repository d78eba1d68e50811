#!/usr/bin/env bash
# The long fuzz campaign: builds the `fuzz` preset and runs every libFuzzer
# harness for a bounded time (default 60 s each, one after another, one core),
# starting from the committed seeds in fuzz/corpus/ and keeping what it finds
# in build/fuzz/corpus/.
#
# A finding does not stop the run: libFuzzer runs in fork mode with crashes
# (and timeouts, out-of-memory) ignored, so one run collects every finding.
# Each finding is then minimized (-minimize_crash=1), replayed for its
# message, and copied as a seed to fuzz/corpus/<harness>/finding-<sha1>, so
# that the ctest smoke runs replay it once it is fixed (commit it then).
# The summary gives each harness's executions and coverage and one line per
# distinct failure: the first line of bnorm's message (or the sanitizer's),
# numbers masked, with how many findings gave it and one minimized input.
# Exits non-zero when anything was found.
#   scripts/fuzz.sh [seconds per harness] [harness ...]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
shift || true
scripts/build.sh fuzz
harnesses=("$@")
[ ${#harnesses[@]} -gt 0 ] || harnesses=(fuzz_forward_training fuzz_forward_inference fuzz_backward fuzz_layer fuzz_ops)
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1}
status=0
summary=()
failures=$(mktemp)
trap 'rm -f "$failures"' EXIT

# The first line that says why an input failed: bnorm's own message, else the
# sanitizer's or libFuzzer's.
why() {
  grep -m1 -E '^bnorm fuzz: |^==[0-9]+==ERROR: |^SUMMARY: |runtime error: |^ALARM: |out-of-memory' "$1" ||
    echo "no message (see $1)"
}

for h in "${harnesses[@]}"; do
  bin=build/fuzz/fuzz/$h
  [ -x "$bin" ] || { echo "$h: not built"; status=1; continue; }
  work=build/fuzz/corpus/$h findings=build/fuzz/findings/$h
  mkdir -p "$work" "$findings"
  rm -f "$findings"/crash-* "$findings"/timeout-* "$findings"/oom-* "$findings"/leak-* \
    "$findings"/min-* "$findings"/*.log
  log=build/fuzz/$h.log
  # Fork mode: one child at a time; -ignore_* keep the parent going after a
  # finding (each child's crash is saved under artifact_prefix).
  "$bin" -fork=1 -ignore_crashes=1 -ignore_timeouts=1 -ignore_ooms=1 \
    -max_total_time="$seconds" -max_len=512 -timeout=60 -rss_limit_mb=4096 \
    -print_final_stats=1 -artifact_prefix="$findings/" "$work" "fuzz/corpus/$h" >"$log" 2>&1 || true
  # Fork mode's status lines: "#<executions>: cov: ... ft: ... corp: ...";
  # its cov is not libFuzzer's usual edge count, so the coverage reported is
  # that of a replay of the whole corpus afterwards (edges and features as
  # libFuzzer counts them when it starts; comparable across runs).
  last=$(grep -E '^#[0-9]+: cov: ' "$log" | tail -1 || true)
  execs=$(sed -E 's/^#([0-9]+):.*/\1/' <<<"$last")
  empty=$(mktemp -d)
  inited=$("$bin" -runs=0 -max_len=512 "$empty" "$work" "fuzz/corpus/$h" 2>&1 | grep 'INITED' | tail -1 || true)
  rm -rf "$empty"
  cov=$(grep -o 'cov: [0-9]*' <<<"$inited" | grep -o '[0-9]*' || true)
  ft=$(grep -o 'ft: [0-9]*' <<<"$inited" | grep -o '[0-9]*' || true)
  corp=$(grep -o 'corp: [0-9]*' <<<"$inited" | grep -o '[0-9]*' || true)
  found=0
  for f in "$findings"/crash-* "$findings"/timeout-* "$findings"/oom-* "$findings"/leak-*; do
    [ -e "$f" ] || continue
    found=$((found + 1))
    name=$(basename "$f")
    min=$findings/min-$name
    "$bin" -minimize_crash=1 -max_total_time=60 -runs=100000 -exact_artifact_path="$min" "$f" \
      >"$findings/$name.minimize.log" 2>&1 || true
    [ -s "$min" ] || cp "$f" "$min"
    # Replay the minimized input for its message (it may fail differently
    # from the original; both are kept).
    "$bin" -runs=1 "$min" >"$findings/$name.log" 2>&1 || true
    seed=fuzz/corpus/$h/finding-$(sha1sum "$min" | cut -c1-16)
    cp "$min" "$seed"
    printf '%s\t%s\t%s\n' "$h" "$(why "$findings/$name.log" | sed -E -e 's/0x[0-9a-f]+/0x#/g' -e 's/(^|[^A-Za-z_0-9])[-+]?[0-9][0-9.e+-]*/\1#/g')" \
      "$seed" >>"$failures"
  done
  result=ok
  if [ $found -gt 0 ]; then
    result="$found FINDINGS (see $log and $findings)"
    status=1
  elif grep -q -E '^#[0-9]+: cov: ' "$log"; then
    :
  else
    result="did not run (see $log)"
    status=1
  fi
  summary+=("$h: ${seconds} s, ${execs:-?} executions; corpus of ${corp:-?} inputs covers ${cov:-?} edges, ${ft:-?} features: $result")
done

echo "== fuzz summary (${seconds} s per harness)"
printf '%s\n' "${summary[@]}"
if [ -s "$failures" ]; then
  echo "== distinct failures (count, harness, first line, one minimized seed)"
  sort -t$'\t' -k1,2 "$failures" | awk -F'\t' '
    { key = $1 "\t" $2; n[key]++; if (!(key in seed)) { seed[key] = $3; order[++k] = key } }
    END { for (i = 1; i <= k; i++) { split(order[i], p, "\t");
          printf "%4d  %s  %s  (%s)\n", n[order[i]], p[1], p[2], seed[order[i]] } }'
fi
exit $status
