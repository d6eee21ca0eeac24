#!/usr/bin/env bash
# Local CPU quickstart: the whole pipeline on the embedded generated world, no GPU, no download.
# Trains the tiny model (SFT warm-start -> asynchronous GRPO on Ray rollout actors), then evaluates
# the latest checkpoint on the test split. Outputs: runs/<experiment.name>/ (config.yaml,
# metrics.jsonl, checkpoints/, plots/, eval.json).
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: scripts/quickstart_cpu.sh [--dry-run] [--config FILE] [key=value ...]

Runs, from the repository root:
  fanout train CONFIG [key=value ...]
  fanout eval  CONFIG [key=value ...]     (latest checkpoint of the run; writes <run_dir>/eval.json)

Options:
  --config FILE   experiment YAML (default: configs/quickstart.yaml)
  --dry-run       print the commands instead of running them
  -h, --help      show this help

Overrides are passed to both commands, e.g.
  scripts/quickstart_cpu.sh grpo.total_steps=10 experiment.name=smoke
USAGE
}

dry_run=0
config=configs/quickstart.yaml
overrides=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --dry-run) dry_run=1; shift ;;
    --config) config="${2:?--config needs a file}"; shift 2 ;;
    *) overrides+=("$1"); shift ;;
  esac
done

# shellcheck source=lib/run.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/run.sh"

cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export WANDB_MODE="${WANDB_MODE:-offline}"

run fanout train "$config" ${overrides[@]+"${overrides[@]}"}
run fanout eval "$config" ${overrides[@]+"${overrides[@]}"}
