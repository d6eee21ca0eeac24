#!/usr/bin/env bash
# NEEDS GPUs. One GPU node: vLLM rollout actors (Ray, rollout.worker_num_gpus each) and the DeepSpeed
# trainer on the same machine, then evaluation of the final policy on every data.eval_files dataset.
#
#   MODEL_PATH=/models/Qwen2.5-7B-Instruct DATA_DIR=/data/search_r1 \
#     scripts/single_gpu_node.sh --corpus /data/wiki-18.jsonl
#
# Install on the node: the torch build for its CUDA, then `pip install -e ".[vllm]"`.
# Retrieval: --corpus starts the built-in BM25 server on this node first; without it the config's
# retriever.url (RETRIEVER_URL, default http://127.0.0.1:8000/retrieve) must already answer, e.g. an
# e5/FAISS server from Search-R1 (see scripts/retriever_server.sh and docs/SCALING.md).
# GPU split: the trainer (one DeepSpeed process, also used by the final eval) gets the last GPU;
# a local Ray node started on the other GPUs runs one vLLM actor per GPU (rollout.num_workers is set
# to GPUs - 1). CUDA_VISIBLE_DEVICES keeps the two sets apart.
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: scripts/single_gpu_node.sh [--dry-run] [--config FILE] [--gpus N] [--corpus PATH] [--port PORT]
                                  [--no-eval] [key=value ...]

Runs (N GPUs; rollout GPUs 0..N-2, trainer GPU N-1):
  fanout serve-retriever --corpus PATH --host 127.0.0.1 --port PORT &     (only with --corpus)
  env CUDA_VISIBLE_DEVICES=0,..,N-2 ray start --head --num-gpus N-1 ...
  env RAY_ADDRESS=127.0.0.1:6379 CUDA_VISIBLE_DEVICES=N-1 fanout train CONFIG model.path=$MODEL_PATH \
      rollout.num_workers=N-1 [retriever.url=...] [key=value ...]
  env CUDA_VISIBLE_DEVICES=N-1 fanout eval CONFIG ... (unless --no-eval)
  ray stop

Options:
  --config FILE  experiment YAML (default: configs/parallelsearch_qwen2.5_7b.yaml)
  --gpus N       GPUs of the node to use (default: all that nvidia-smi lists; at least 2)
  --corpus PATH  serve this JSONL corpus with BM25 for the run (index built on first use)
  --port PORT    port of that server (default 8000)
  --no-eval      skip the final evaluation
  --dry-run      print the commands instead of running them
  -h, --help     show this help

Environment: MODEL_PATH (required), DATA_DIR (benchmark files), RETRIEVER_URL, WANDB_MODE (default offline),
RETRIEVER_WAIT_S (seconds to wait for the server to answer, default 3600: indexing wiki-18 takes a while).
USAGE
}

dry_run=0
config=configs/parallelsearch_qwen2.5_7b.yaml
corpus=""
port=8000
evaluate=1
num_gpus=""
overrides=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --dry-run) dry_run=1; shift ;;
    --config) config="${2:?--config needs a file}"; shift 2 ;;
    --corpus) corpus="${2:?--corpus needs a path}"; shift 2 ;;
    --port) port="${2:?--port needs a number}"; shift 2 ;;
    --gpus) num_gpus="${2:?--gpus needs a number}"; shift 2 ;;
    --no-eval) evaluate=0; shift ;;
    -*) echo "single_gpu_node.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
    *) overrides+=("$1"); shift ;;
  esac
done

# shellcheck source=lib/run.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/run.sh"

cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false WANDB_MODE="${WANDB_MODE:-offline}"
if [[ "$dry_run" -eq 0 ]]; then
  command -v nvidia-smi > /dev/null && nvidia-smi -L > /dev/null 2>&1 \
    || { echo "single_gpu_node.sh: no NVIDIA GPU found; on CPU use scripts/quickstart_cpu.sh" >&2; exit 2; }
  [[ -n "${MODEL_PATH:-}" ]] || { echo "single_gpu_node.sh: set MODEL_PATH to a local model folder" >&2; exit 2; }
fi
settings=(model.path="${MODEL_PATH:-/models/Qwen2.5-7B-Instruct}")

server_pid=""
ray_started=0
cleanup() {
  if [[ "$ray_started" -eq 1 ]]; then ray stop > /dev/null 2>&1 || true; fi
  if [[ -n "$server_pid" ]]; then kill "$server_pid" 2> /dev/null || true; fi
}
trap cleanup EXIT

if [[ -n "$corpus" ]]; then
  retriever_url="http://127.0.0.1:$port/retrieve"
  settings+=(retriever.backend=http retriever.url="$retriever_url")
  echo "+ fanout serve-retriever --corpus $corpus --host 127.0.0.1 --port $port &"
  if [[ "$dry_run" -eq 0 ]]; then
    fanout serve-retriever --corpus "$corpus" --host 127.0.0.1 --port "$port" &
    server_pid=$!
    python - "$retriever_url" "${RETRIEVER_WAIT_S:-3600}" <<'PY'
import sys, time
import httpx
url, deadline = sys.argv[1], time.time() + float(sys.argv[2])
while True:
    try:
        httpx.post(url, json={"queries": ["ping"], "topk": 1}, timeout=10).raise_for_status()
        break
    except httpx.HTTPError:
        if time.time() > deadline:
            sys.exit(f"single_gpu_node.sh: the retrieval server at {url} did not answer in time")
        time.sleep(5)
PY
  fi
fi

if [[ -z "$num_gpus" ]]; then
  if [[ "$dry_run" -eq 1 ]]; then num_gpus=8; else num_gpus="$(nvidia-smi -L | wc -l)"; fi
fi
(( num_gpus >= 2 )) || { echo "single_gpu_node.sh: needs at least 2 GPUs (rollouts + trainer); got $num_gpus" >&2; exit 2; }
trainer_gpu=$(( num_gpus - 1 ))
rollout_gpus="$(seq -s, 0 $(( num_gpus - 2 )))"
ray_port=6379

run env CUDA_VISIBLE_DEVICES="$rollout_gpus" ray start --head --port "$ray_port" --num-gpus "$trainer_gpu" \
  --include-dashboard false
ray_started=$(( 1 - dry_run ))
run env RAY_ADDRESS="127.0.0.1:$ray_port" CUDA_VISIBLE_DEVICES="$trainer_gpu" \
  fanout train "$config" "${settings[@]}" rollout.num_workers="$trainer_gpu" rollout.worker_num_gpus=1 \
  ${overrides[@]+"${overrides[@]}"}
if [[ "$evaluate" -eq 1 ]]; then
  run env CUDA_VISIBLE_DEVICES="$trainer_gpu" fanout eval "$config" "${settings[@]}" ${overrides[@]+"${overrides[@]}"}
fi
run ray stop
ray_started=0
