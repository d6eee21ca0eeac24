#!/usr/bin/env bash
# The fanout-vs-sequential grid (docs/RESULTS.md, docs/GETTING_STARTED.md "Evaluate"): for each seed,
# 1. fanout: the config (default: the quickstart; its own SFT warm-start, or --warm-start's, then GRPO with
#    decomposition + efficiency rewards);
# 2. sequential: GRPO from THAT SAME warm-start (model.path=<warm-start>, sft.enabled=false) with the same
#    config, correctness + format rewards only and one query per turn (tools.max_calls_per_turn=1), as
#    configs/sequential_baseline.yaml is to the quickstart;
# 3. greedy evaluation of both policies on the test split under each search budget, grouped by hops,
#    each policy with its own settings (the sequential one keeps tools.max_calls_per_turn=1);
# then python -m rl.app.grid aggregates every eval into DIR/grid.md and DIR/grid.json: per budget x group x
# policy, EM mean over seeds with a 95% t interval, model calls, and fanout - sequential with its interval.
# All runs share one generated world (DIR/world), so every evaluation sees the same test questions.
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: scripts/fanout_grid.sh [--dry-run] [--out DIR] [--config FILE] [--warm-start PATTERN]
                              [--seeds "0 1 2"] [--budgets "2 3 4 6"] [--eval-only] [--test-questions N]
                              [key=value ...]

Runs, from the repository root, for each seed S (CONFIG: --config, default configs/quickstart.yaml):
  fanout train CONFIG experiment.name=fanout-sS     experiment.seed=S ...
  fanout train CONFIG experiment.name=sequential-sS experiment.seed=S \
         model.path=DIR/fanout-sS/sft sft.enabled=false \
         tools.max_calls_per_turn=1 'reward.weights={exact_match: 1.0, format: 0.1}' ...
  and for each budget B and policy P in (fanout, sequential):
  fanout eval  CONFIG <P's settings> ... --checkpoint DIR/P-sS --search-budget B --group-by hops \
         --out DIR/eval/P/seedS/budgetB.json
then:
  python -m rl.app.grid DIR/eval --out DIR/grid        (DIR/grid.md, DIR/grid.json)

Options:
  --out DIR        parent folder of the runs (default: runs/grid)
  --config FILE    the fanout policy's config; the sequential policy is it with one query per turn and
                   correctness + format rewards (default: configs/quickstart.yaml)
  --warm-start P   start both policies of seed S from the SFT checkpoint P, where {seed} in P is replaced by
                   S (e.g. 'runs/reader-s{seed}/sft'), instead of the fanout run's own SFT
  --seeds "..."    training seeds (default: "0 1 2")
  --budgets "..."  search budgets, in search rounds = rollout.max_turns (default: "2 3 4 6")
  --eval-only      skip training: evaluate the runs already in DIR and aggregate
  --test-questions N
                   evaluate on a test split of N questions instead of the config's (data.world.num_test=N, the
                   world in DIR/world-testN; results in DIR/eval-testN, aggregated into DIR/grid-testN.md/.json),
                   e.g. with --eval-only and eval.structures=[parallel] for more questions per parallel cell.
                   The policies are trained on DIR/world as before: with data.world.train_worlds > 0
                   (configs/reader.yaml) its training questions do not depend on the test split's size; with one
                   shared entity set (the quickstart) they do, so train with data.world.num_test=N instead
  --dry-run        print the commands instead of running them
  -h, --help       show this help
Overrides (e.g. grpo.total_steps=30 eval.num_questions=0) go to every training and evaluation command,
except rollout.max_turns=N, the training budget, which the evaluations replace with --search-budget.
USAGE
}

need_value() {  # an option's value must follow it (it may be empty: the list check below reports that)
  if [[ $# -lt 2 ]]; then echo "fanout_grid.sh: $1 needs a value (see --help)" >&2; exit 2; fi
}

dry_run=0
eval_only=0
out=runs/grid
config=configs/quickstart.yaml
warm_start=""
test_questions=""
seeds="0 1 2"
budgets="2 3 4 6"
overrides=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --dry-run) dry_run=1; shift ;;
    --eval-only) eval_only=1; shift ;;
    --out) need_value "$@"; out="$2"; shift 2 ;;
    --config) need_value "$@"; config="$2"; shift 2 ;;
    --warm-start) need_value "$@"; warm_start="$2"; shift 2 ;;
    --seeds) need_value "$@"; seeds="$2"; shift 2 ;;
    --budgets) need_value "$@"; budgets="$2"; shift 2 ;;
    --test-questions) need_value "$@"; test_questions="$2"; shift 2 ;;
    -*) echo "fanout_grid.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
    *) overrides+=("$1"); shift ;;
  esac
done
read -r -a seed_list <<< "$seeds"
read -r -a budget_list <<< "$budgets"
for value in "${seed_list[@]}" "${budget_list[@]}"; do
  if ! [[ "$value" =~ ^[0-9]+$ ]]; then
    echo "fanout_grid.sh: '$value' in --seeds/--budgets is not a non-negative integer" >&2
    exit 2
  fi
done
if [[ -n "$test_questions" && ! "$test_questions" =~ ^[1-9][0-9]*$ ]]; then
  echo "fanout_grid.sh: --test-questions '$test_questions' is not a positive integer" >&2
  exit 2
fi
if [[ ${#seed_list[@]} -eq 0 || ${#budget_list[@]} -eq 0 ]]; then
  echo "fanout_grid.sh: --seeds and --budgets need at least one value each" >&2
  exit 2
fi

# shellcheck source=lib/run.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/run.sh"

cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
eval_overrides=()
for override in "${overrides[@]}"; do
  if [[ "$override" != rollout.max_turns=* ]]; then eval_overrides+=("$override"); fi
done
# The sequential policy: the same config, Search-R1's one query per search call, correctness + format rewards.
policy_settings() {  # sets policy_args to the overrides that make policy $1 out of the config
  if [[ "$1" == sequential ]]; then
    policy_args=(tools.max_calls_per_turn=1 "reward.weights={exact_match: 1.0, format: 0.1}")
  else
    policy_args=()
  fi
}
common=(experiment.output_dir="$out" data.world_dir="$out/world")
eval_world=("${common[@]}")
results=eval
aggregate=grid
if [[ -n "$test_questions" ]]; then
  eval_world=(experiment.output_dir="$out" data.world_dir="$out/world-test$test_questions"
              data.world.num_test="$test_questions")
  results="eval-test$test_questions"
  aggregate="grid-test$test_questions"
fi
for seed in "${seed_list[@]}"; do
  if [[ "$eval_only" -eq 0 ]]; then
    if [[ -n "$warm_start" ]]; then
      start="${warm_start//\{seed\}/$seed}"
      fanout_start=(model.path="$start" sft.enabled=false)
    else
      start="$out/fanout-s$seed/sft"
      fanout_start=()
    fi
    # eval.at_end=false: the budget evaluations below include the training budget
    run fanout train "$config" experiment.name="fanout-s$seed" experiment.seed="$seed" \
      experiment.overwrite=true eval.at_end=false "${fanout_start[@]}" "${common[@]}" "${overrides[@]}"
    policy_settings sequential
    run fanout train "$config" experiment.name="sequential-s$seed" experiment.seed="$seed" \
      experiment.overwrite=true eval.at_end=false model.path="$start" sft.enabled=false "${policy_args[@]}" \
      "${common[@]}" "${overrides[@]}"
  fi
  for budget in "${budget_list[@]}"; do
    for policy in fanout sequential; do
      policy_settings "$policy"
      run fanout eval "$config" experiment.name="$policy-s$seed" experiment.seed="$seed" "${policy_args[@]}" \
        "${eval_world[@]}" "${eval_overrides[@]}" --checkpoint "$out/$policy-s$seed" --search-budget "$budget" \
        --group-by hops --out "$out/$results/$policy/seed$seed/budget$budget.json"
    done
  done
done
run python -m rl.app.grid "$out/$results" --out "$out/$aggregate"
