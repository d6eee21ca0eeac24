# Sourced by ray_cluster.sh and slurm_ray.sbatch: what `ray start` and `ray job submit` need besides their flags.

# Ray >= 2.59 turns token authentication on by itself on a head node that finds a token (~/.ray/auth_token,
# RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH), but a joining node and `ray job submit` send the token only with
# RAY_AUTH_MODE=token. So export it whenever a token is there; an explicit RAY_AUTH_MODE (e.g. disabled) wins.
# The token itself is never printed, copied or put in the job's runtime env.
use_ray_token_auth() {
  if [[ -n "${RAY_AUTH_MODE:-}" ]]; then return; fi
  if [[ -n "${RAY_AUTH_TOKEN:-}" || -n "${RAY_AUTH_TOKEN_PATH:-}" || -f "${HOME:-/nonexistent}/.ray/auth_token" ]]; then
    export RAY_AUTH_MODE=token
    echo "+ (Ray token authentication: RAY_AUTH_MODE=token, with the token of this machine)"
  fi
}

# The job's runtime env as JSON: the repository as working_dir (without runs, .git, world) and the
# environment every process of the job gets. The driver's ray.init adds only names not set here
# (rollouts/manager.py: driver_runtime_env), because Ray refuses a runtime env that sets a job's name twice.
runtime_env_json() {
  python - <<'PY'
import json, os
env_vars = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
            "WANDB_MODE": os.environ.get("WANDB_MODE", "offline")}
for name in ("MODEL_PATH", "DATA_DIR"):
    if os.environ.get(name):
        env_vars[name] = os.environ[name]
print(json.dumps({"working_dir": ".", "excludes": ["runs/", ".git/", "world/", "*.index"], "env_vars": env_vars}))
PY
}
