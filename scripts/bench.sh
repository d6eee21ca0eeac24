#!/usr/bin/env bash
# Run every benchmark suite (`fanout bench SUITE`) and collect the figures each prints as its last
# line (one JSON object {"suite": SUITE, ...}) into one JSONL file. Full tables stay in per-suite logs.
# docs/BENCHMARKS.md explains every suite and figure.
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: scripts/bench.sh [--dry-run] [--quick] [--out FILE] [SUITE ...]

For each suite (default: every registered suite, `python -c "from rl.bench import SUITES"`):
  fanout bench SUITE [--quick] > <logs>/SUITE.log
then the last line of each log is appended to FILE.

Options:
  --out FILE   where the collected JSON lines go (default: runs/bench/results.jsonl;
               per-suite logs next to it)
  --quick      tiny settings (seconds; checks the plumbing, figures are not meaningful)
  --dry-run    print the commands instead of running them
  -h, --help   show this help

A suite that fails is reported and skipped; the script exits 1 if any suite failed.
USAGE
}

dry_run=0
quick_flag=""
out=runs/bench/results.jsonl
suites=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --dry-run) dry_run=1; shift ;;
    --quick) quick_flag="--quick"; shift ;;
    --out) out="${2:?--out needs a file}"; shift 2 ;;
    -*) echo "bench.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
    *) suites+=("$1"); shift ;;
  esac
done

cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false WANDB_MODE="${WANDB_MODE:-disabled}"
if [[ ${#suites[@]} -eq 0 ]]; then
  read -r -a suites <<< "$(python -c 'from rl.bench import SUITES; print(" ".join(SUITES))')"
fi
log_dir="$(dirname "$out")/logs"

if [[ "$dry_run" -eq 0 ]]; then mkdir -p "$log_dir" && : > "$out"; fi
failed=()
for suite in "${suites[@]}"; do
  log="$log_dir/$suite.log"
  echo "+ fanout bench $suite${quick_flag:+ $quick_flag} > $log"
  if [[ "$dry_run" -eq 1 ]]; then
    echo "+ tail -n 1 $log >> $out"
    continue
  fi
  if fanout bench "$suite" $quick_flag > "$log" 2>&1; then
    last_line="$(tail -n 1 "$log")"
    if python -c 'import json, sys; json.loads(sys.argv[1])' "$last_line" 2>/dev/null; then
      echo "$last_line" | tee -a "$out"
    else
      echo "bench.sh: suite '$suite' did not end with a JSON line (see $log)" >&2
      failed+=("$suite")
    fi
  else
    echo "bench.sh: suite '$suite' failed (see $log)" >&2
    failed+=("$suite")
  fi
done

if [[ "$dry_run" -eq 0 ]]; then echo "collected $(wc -l < "$out") result line(s) in $out"; fi
if [[ ${#failed[@]} -gt 0 ]]; then
  echo "bench.sh: failed suites: ${failed[*]}" >&2
  exit 1
fi
