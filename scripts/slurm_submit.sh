#!/usr/bin/env bash
# Submit fanout-rl training to Slurm: a thin wrapper that turns a few options into sbatch flags for
# scripts/slurm_ray.sbatch (which starts Ray on the allocated nodes and submits `fanout train`).
# NEEDS a Slurm cluster with GPUs for the GPU recipes.
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: scripts/slurm_submit.sh [--dry-run] [--nodes N] [--gpus-per-node G] [--cpus-per-node C]
                               [--partition P] [--time HH:MM:SS] [--account A] CONFIG [key=value ...]

Runs:
  sbatch --nodes N --gpus-per-node G --cpus-per-task C [--partition P] [--time T] [--account A] \
         scripts/slurm_ray.sbatch CONFIG [key=value ...]

Defaults: 2 nodes, 8 GPUs and 32 CPUs per node, 24:00:00 (the #SBATCH lines of slurm_ray.sbatch).
Example:
  MODEL_PATH=/models/Qwen2.5-7B-Instruct DATA_DIR=/data/search_r1 \
    scripts/slurm_submit.sh --nodes 4 --partition gpu configs/parallelsearch_qwen2.5_7b.yaml

Options:
  --dry-run   print the sbatch command instead of running it
  -h, --help  show this help
USAGE
}

dry_run=0
nodes=2
gpus_per_node=8
cpus_per_node=32
time_limit=24:00:00
extra_flags=()
arguments=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --dry-run) dry_run=1; shift ;;
    --nodes) nodes="${2:?--nodes needs a number}"; shift 2 ;;
    --gpus-per-node) gpus_per_node="${2:?--gpus-per-node needs a number}"; shift 2 ;;
    --cpus-per-node) cpus_per_node="${2:?--cpus-per-node needs a number}"; shift 2 ;;
    --time) time_limit="${2:?--time needs HH:MM:SS}"; shift 2 ;;
    --partition) extra_flags+=(--partition "${2:?--partition needs a name}"); shift 2 ;;
    --account) extra_flags+=(--account "${2:?--account needs a name}"); shift 2 ;;
    -*) echo "slurm_submit.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
    *) arguments+=("$1"); shift ;;
  esac
done
[[ ${#arguments[@]} -ge 1 ]] || { echo "slurm_submit.sh: needs a CONFIG file (see --help)" >&2; exit 2; }

# shellcheck source=lib/run.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/run.sh"

# The job runs from the repository root (sbatch records it as SLURM_SUBMIT_DIR): paths are relative to it.
cd "$(dirname "$0")/.."
[[ -f "${arguments[0]}" || "$dry_run" -eq 1 ]] || { echo "slurm_submit.sh: config '${arguments[0]}' not found (paths are relative to the repository root)" >&2; exit 2; }
run sbatch --nodes "$nodes" --gpus-per-node "$gpus_per_node" --cpus-per-task "$cpus_per_node" \
  --time "$time_limit" ${extra_flags[@]+"${extra_flags[@]}"} scripts/slurm_ray.sbatch "${arguments[@]}"
