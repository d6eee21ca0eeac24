#!/usr/bin/env bash
# Multi-node training on a Ray cluster you manage by hand (bare metal, VMs, cloud instances).
#
#   on the head node:     scripts/ray_cluster.sh head
#   on every worker node: scripts/ray_cluster.sh worker --address HEAD_IP:6379
#   from any node:        scripts/ray_cluster.sh submit --address HEAD_IP configs/parallelsearch_qwen2.5_7b.yaml
#
# `submit` hands `fanout train CONFIG` to the cluster with `ray job submit`; inside the job
# `ray.init()` joins the running cluster, rollout actors are placed on nodes with free GPUs
# (rollout.worker_num_gpus each; rollout.worker_resources to choose the nodes, see --help) and the
# trainer runs in the job's driver on the head node. Every node needs the
# same Python environment with fanout-rl installed (`pip install -e .`, plus `.[vllm]` on GPU
# nodes) and the model/data paths visible at the same place (shared filesystem).
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage:
  scripts/ray_cluster.sh [--dry-run] head   [--port 6379] [--dashboard-port 8265] [--dashboard-host 0.0.0.0]
                                           [--num-gpus N] [--num-cpus N] [--resources JSON] [-- RAY_START_ARGS...]
  scripts/ray_cluster.sh [--dry-run] worker --address HEAD_IP:6379 [--num-gpus N] [--num-cpus N] [--resources JSON]
                                           [-- RAY_START_ARGS...]
  scripts/ray_cluster.sh [--dry-run] submit --address HEAD_IP [--dashboard-port 8265] [--trainer-gpus 1]
                                           CONFIG [key=value ...]
  scripts/ray_cluster.sh [--dry-run] stop

Commands run:
  head    ray start --head --port PORT --dashboard-host HOST --dashboard-port DPORT [--num-gpus N] [--num-cpus N]
            [--resources JSON] [RAY_START_ARGS...]
  worker  ray start --address HEAD_IP:6379 [--num-gpus N] [--num-cpus N] [--resources JSON] [RAY_START_ARGS...]
  submit  ray job submit --address http://HEAD_IP:8265 --entrypoint-num-gpus G --runtime-env-json '{...}' \
            -- fanout train CONFIG [key=value ...]
  stop    ray stop   (stops every Ray process of this user on this machine)

--trainer-gpus G (default 1; 0 on CPU clusters) reserves GPUs for the job's driver, where the
trainer runs, so Ray never places a rollout actor on the trainer's GPU.
--resources '{"rollout_node": 8}' gives a node a custom resource; with rollout.worker_resources={rollout_node: 1}
in the config the rollout actors run only on such nodes (8 actors per node here).
Arguments after `--` go to `ray start` as they are (e.g. --block, --object-store-memory BYTES,
--dashboard-agent-listen-port PORT when two nodes share a machine).
The runtime env ships the repository as the job's working_dir (runs/, .git/ and world/ excluded)
and sets HF_HUB_OFFLINE=1, TRANSFORMERS_OFFLINE=1, TOKENIZERS_PARALLELISM=false and WANDB_MODE
(default offline). Environment variables: MODEL_PATH and DATA_DIR are forwarded to the job when set
(use absolute paths on a shared filesystem). The job runs in an uploaded copy of the repository, so
submit sets experiment.output_dir to FANOUT_OUTPUT_DIR (default: runs/ of this checkout, absolute); an
experiment.output_dir=... override on the command line still wins. `ray job submit` streams the job's
logs (the driver's output and the rollout actors' warnings and errors; rollout.actor_logs=all for all
of their output) and exits non-zero when the job fails.

Token authentication (Ray >= 2.59): when this machine has a Ray token (~/.ray/auth_token, RAY_AUTH_TOKEN
or RAY_AUTH_TOKEN_PATH) and RAY_AUTH_MODE is unset, every command runs with RAY_AUTH_MODE=token, which
`ray start --address` and `ray job submit` need to send it. Every node and the submitting shell need
the same token (docs/SCALING.md, "A Ray cluster").

Options:
  --dry-run   print the commands instead of running them
  -h, --help  show this help
USAGE
}

dry_run=0
if [[ "${1:-}" == "--dry-run" ]]; then dry_run=1; shift; fi
command="${1:-}"
[[ -n "$command" ]] && shift
case "$command" in
  -h|--help|"") usage; [[ -n "$command" ]] && exit 0; exit 2 ;;
esac

port=6379
dashboard_port=8265
dashboard_host=0.0.0.0
address=""
trainer_gpus=1
node_args=()  # --num-gpus / --num-cpus / --resources, for head and worker
positional=()
ray_start_args=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --dry-run) dry_run=1; shift ;;
    --port) port="${2:?--port needs a number}"; shift 2 ;;
    --dashboard-port) dashboard_port="${2:?--dashboard-port needs a number}"; shift 2 ;;
    --dashboard-host) dashboard_host="${2:?--dashboard-host needs an address}"; shift 2 ;;
    --address) address="${2:?--address needs HEAD_IP[:PORT]}"; shift 2 ;;
    --num-gpus) node_args+=(--num-gpus "${2:?--num-gpus needs a number}"); shift 2 ;;
    --num-cpus) node_args+=(--num-cpus "${2:?--num-cpus needs a number}"); shift 2 ;;
    --resources) node_args+=(--resources "${2:?--resources needs a JSON object, e.g. '{\"rollout_node\": 8}'}"); shift 2 ;;
    --trainer-gpus) trainer_gpus="${2:?--trainer-gpus needs a number}"; shift 2 ;;
    --) shift; ray_start_args=("$@"); break ;;
    *) positional+=("$1"); shift ;;
  esac
done
if [[ ${#ray_start_args[@]} -gt 0 && "$command" != head && "$command" != worker ]]; then
  echo "ray_cluster.sh: arguments after -- are for ray start (head | worker), not '$command'" >&2; exit 2
fi

# shellcheck source=lib/run.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/run.sh"
# shellcheck source=lib/ray_job.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/ray_job.sh"

case "$command" in
  head)
    use_ray_token_auth
    run ray start --head --port "$port" --dashboard-host "$dashboard_host" --dashboard-port "$dashboard_port" \
      ${node_args[@]+"${node_args[@]}"} ${ray_start_args[@]+"${ray_start_args[@]}"}
    ;;
  worker)
    [[ -n "$address" ]] || { echo "ray_cluster.sh: worker needs --address HEAD_IP:PORT" >&2; exit 2; }
    use_ray_token_auth
    run ray start --address "$address" ${node_args[@]+"${node_args[@]}"} ${ray_start_args[@]+"${ray_start_args[@]}"}
    ;;
  submit)
    [[ -n "$address" ]] || { echo "ray_cluster.sh: submit needs --address HEAD_IP" >&2; exit 2; }
    [[ ${#positional[@]} -ge 1 ]] || { echo "ray_cluster.sh: submit needs a CONFIG file" >&2; exit 2; }
    cd "$(dirname "$0")/.."
    use_ray_token_auth
    # The job runs in an uploaded copy of the repository: write the run folder back here (shared filesystem).
    run ray job submit --address "http://${address%%:*}:$dashboard_port" --entrypoint-num-gpus "$trainer_gpus" \
      --runtime-env-json "$(runtime_env_json)" -- fanout train "${positional[0]}" \
      experiment.output_dir="${FANOUT_OUTPUT_DIR:-$PWD/runs}" "${positional[@]:1}"
    ;;
  stop)
    run ray stop
    ;;
  *)
    echo "ray_cluster.sh: unknown command '$command' (head | worker | submit | stop; see --help)" >&2
    exit 2
    ;;
esac
