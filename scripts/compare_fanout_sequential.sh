#!/usr/bin/env bash
# The fanout vs sequential comparison on the embedded generated world (docs/RESULTS.md).
# 1. fanout: the quickstart (SFT warm-start, then GRPO with decomposition + efficiency rewards);
# 2. sequential: GRPO from the SAME warm-start with correctness + format rewards only (Search-R1 style);
# 3. their training curves side by side (DIR/fanout_vs_sequential.png) and as numbers (first vs last 10 steps);
# 4. greedy evaluation of the warm-start and of both policies on the same test split, per question
#    structure and per structure and number of sub-questions (hops).
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: scripts/compare_fanout_sequential.sh [--dry-run] [--out DIR] [key=value ...]

Runs, from the repository root:
  fanout train configs/quickstart.yaml          experiment.name=fanout     [key=value ...]
  fanout train configs/sequential_baseline.yaml experiment.name=sequential model.path=DIR/fanout/sft sft.enabled=false
  python -m rl.app.plots --compare DIR/fanout_vs_sequential.png ... (training curves side by side)
  python -m rl.app.plots --summary 10 ...                           (first vs last 10 steps of each run)
  fanout eval  ... --checkpoint DIR/fanout/sft                  (the shared warm-start)
  fanout eval  ... --compare DIR/sequential DIR/fanout          (B = fanout, ratios B / A)
  fanout eval  ... --compare DIR/sequential DIR/fanout --group-by hops

Options:
  --out DIR   parent folder of the two runs (default: runs)
  --dry-run   print the commands instead of running them
  -h, --help  show this help
Overrides (e.g. grpo.total_steps=30) go to both training runs.
USAGE
}

dry_run=0
out=runs
overrides=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --dry-run) dry_run=1; shift ;;
    --out) out="${2:?--out needs a folder}"; shift 2 ;;
    *) overrides+=("$1"); shift ;;
  esac
done

# shellcheck source=lib/run.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/run.sh"

cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
common=(experiment.output_dir="$out" experiment.overwrite=true)
run fanout train configs/quickstart.yaml experiment.name=fanout "${common[@]}" "${overrides[@]}"
run fanout train configs/sequential_baseline.yaml experiment.name=sequential "${common[@]}" \
  model.path="$out/fanout/sft" sft.enabled=false data.world_dir="$out/fanout/world" "${overrides[@]}"
run python -m rl.app.plots --compare "$out/fanout_vs_sequential.png" \
  fanout="$out/fanout/metrics.jsonl" sequential="$out/sequential/metrics.jsonl"
run python -m rl.app.plots --summary 10 \
  fanout="$out/fanout/metrics.jsonl" sequential="$out/sequential/metrics.jsonl"
run fanout eval configs/quickstart.yaml experiment.name=fanout experiment.output_dir="$out" \
  --checkpoint "$out/fanout/sft" --out "$out/fanout/eval_warm_start.json"
run fanout eval configs/quickstart.yaml experiment.name=fanout experiment.output_dir="$out" \
  --compare "$out/sequential" "$out/fanout" --out "$out/compare_sequential_fanout.json"
run fanout eval configs/quickstart.yaml experiment.name=fanout experiment.output_dir="$out" \
  --compare "$out/sequential" "$out/fanout" --group-by hops --out "$out/compare_sequential_fanout_hops.json"
