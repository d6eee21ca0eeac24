"""The trainer on 2 ranks (torchrun, gloo on CPU) makes the same update as on 1, and ZeRO partitions for real.

One `torchrun --nproc_per_node=2` launch (tests/rl/grpo/data_parallel_worker.py, about 30 s on 2 shared
cores) trains one step of each case on the same global batch as a 1-rank trainer in this process:
ZeRO-0 (DeepSpeed's plain all-reduce); ZeRO-1 with groups that do not split evenly and two epochs (a
proximal pass and two optimizer steps); ZeRO-2 and ZeRO-3 with two epochs; ZeRO-3 with uneven groups
and two micro-batches per rank; ZeRO-2 with a single group (the second rank trains stand-ins only); LoRA
under ZeRO-3 (the adapter gathered for adapter-only sync must equal the 1-rank adapter).
The weights after the step must equal the 1-rank weights to float tolerance, the metrics must be the
whole batch's, each rank must hold half of the optimizer state (ZeRO-1/2/3) and half of the parameters
(ZeRO-3), and a 2-rank ZeRO-3 checkpoint must resume to exactly the same next step.

The pure parts (how groups are shared out, the derived DeepSpeed batch sizes) are checked by hand first.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from trainer_helpers import synthetic_groups, tiny_model, trainer_config

from rl.grpo.deepspeed_setup import build_deepspeed_config, micro_batches_per_rank
from rl.grpo.distributed import DISTRIBUTED_VARIABLES, group_shares, merge_rank_metrics, rows_of_groups
from rl.grpo.trainer import GRPOTrainer

ROOT = Path(__file__).resolve().parents[3]
WORKER = Path(__file__).resolve().parent / "data_parallel_worker.py"
CASES = [
    {"name": "zero0", "zero_stage": 0, "num_groups": 4, "minibatches_per_step": 2, "epochs_per_batch": 1},
    {"name": "zero1", "zero_stage": 1, "num_groups": 3, "minibatches_per_step": 2, "epochs_per_batch": 2},
    {"name": "zero2", "zero_stage": 2, "num_groups": 4, "minibatches_per_step": 2, "epochs_per_batch": 2},
    {"name": "zero3", "zero_stage": 3, "num_groups": 4, "minibatches_per_step": 2, "epochs_per_batch": 2,
     "resume": True},
    {"name": "zero3_uneven", "zero_stage": 3, "num_groups": 3, "minibatches_per_step": 4, "epochs_per_batch": 1},
    {"name": "zero2_one_group", "zero_stage": 2, "num_groups": 1, "minibatches_per_step": 1,
     "epochs_per_batch": 1},
    {"name": "zero3_lora", "zero_stage": 3, "num_groups": 4, "minibatches_per_step": 2, "epochs_per_batch": 1,
     "lora": True},
]
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")  # model.lora.target_modules' default


def is_lora_adapted(name: str) -> bool:
    """A weight that LoRA changes (merged in): the target projections' matrices, not their biases."""
    return any(name.endswith(f"{target}.weight") for target in LORA_TARGETS)
# Adam's first steps move each weight by about lr * sign(gradient), so float noise in a tiny gradient
# (another summation order on 2 ranks) can move a weight by a visible fraction of lr = 1e-2.
WEIGHT_ATOL = 1e-4


# ------------------------------------------------------------------------------------------ pure parts


def test_groups_are_shared_out_whole_and_contiguously():
    assert group_shares([4, 4, 4, 4], 2) == [[0, 1], [2, 3]]
    assert group_shares([4, 4, 4], 2) == [[0, 1], [2]]
    assert group_shares([4], 2) == [[0], []]
    assert rows_of_groups([2, 3, 2], [1, 2]) == [2, 3, 4, 5, 6]
    assert rows_of_groups([2, 3, 2], []) == []


def test_rank_metrics_add_up_except_maxima():
    merged = merge_rank_metrics([{"loss/policy": -0.25, "async/importance_weight_max": 1.5},
                                 {"loss/policy": -0.5, "async/importance_weight_max": 1.25, "loss/kl": 0.1}])
    assert merged == {"loss/policy": -0.75, "async/importance_weight_max": 1.5, "loss/kl": 0.1}


@pytest.mark.parametrize("minibatches, ranks, accumulation, micro_batch", [
    (2, 1, 2, 4), (2, 2, 1, 4), (4, 2, 2, 2), (1, 2, 1, 4), (1, 4, 1, 2), (8, 4, 2, 1),
])
def test_the_global_batch_does_not_depend_on_the_number_of_ranks(minibatches, ranks, accumulation, micro_batch):
    config = trainer_config(minibatches_per_step=minibatches)  # 2 groups x 4 = a global batch of 8
    derived = build_deepspeed_config(config, num_ranks=ranks)
    assert micro_batches_per_rank(config, ranks) == derived["gradient_accumulation_steps"] == accumulation
    assert derived["train_micro_batch_size_per_gpu"] == micro_batch
    assert micro_batch * accumulation * ranks == config.batch_size


# ------------------------------------------------------------------------------------------ 2 ranks


@pytest.fixture(scope="module")
def two_rank_results(tmp_path_factory) -> Path:
    out_dir = tmp_path_factory.mktemp("data_parallel")
    environment = {key: value for key, value in os.environ.items() if key not in DISTRIBUTED_VARIABLES}
    environment.update(PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), environment.get("PYTHONPATH")])),
                       OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(WORKER),
               str(out_dir), json.dumps(CASES)]
    result = subprocess.run(command, cwd=ROOT, env=environment, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return out_dir


@functools.lru_cache(maxsize=None)
def _one_rank_step(case_name: str) -> tuple[dict, dict, dict]:
    """The 1-rank reference (this process): the step's metrics, the weights after it, the bytes held."""
    torch.set_num_threads(1)
    case = next(case for case in CASES if case["name"] == case_name)
    config = trainer_config(zero_stage=case["zero_stage"], minibatches_per_step=case["minibatches_per_step"],
                            epochs_per_batch=case["epochs_per_batch"])
    config.rollout.questions_per_step = case["num_groups"]
    config.model.lora.enabled = bool(case.get("lora"))
    trainer = GRPOTrainer(config, model=tiny_model())
    metrics = trainer.step(synthetic_groups(num_groups=case["num_groups"]))
    return metrics, trainer.export_weights(), trainer.held_bytes()


def test_two_lora_ranks_under_zero3_train_the_one_rank_adapter(two_rank_results):
    """LoRA under ZeRO-3: the adapter each export gathers equals the 1-rank one, and only adapted layers moved."""
    _, weights, _ = _one_rank_step("zero3_lora")
    case = next(case for case in CASES if case["name"] == "zero3_lora")
    config = trainer_config(zero_stage=3, minibatches_per_step=case["minibatches_per_step"])
    config.rollout.questions_per_step = case["num_groups"]
    config.model.lora.enabled = True
    one_rank_adapter = GRPOTrainer(config, model=tiny_model())
    one_rank_adapter.step(synthetic_groups(num_groups=case["num_groups"]))
    adapter = one_rank_adapter.export_weights("adapter")
    two_rank_adapter = torch.load(two_rank_results / "zero3_lora-adapter.pt", weights_only=True)
    assert sorted(two_rank_adapter) == sorted(adapter) and any("lora_B" in name for name in adapter)
    for name, tensor in adapter.items():
        torch.testing.assert_close(two_rank_adapter[name], tensor, atol=WEIGHT_ATOL, rtol=0)
    initial = tiny_model().state_dict()
    moved = {name for name, tensor in weights.items() if not torch.equal(tensor, initial[name])}
    assert moved == {name for name in weights if is_lora_adapted(name)}


@pytest.mark.parametrize("case", CASES, ids=[case["name"] for case in CASES])
def test_two_ranks_make_the_one_rank_update(case, two_rank_results):
    metrics, weights, _ = _one_rank_step(case["name"])
    report = json.loads((two_rank_results / f"{case['name']}.json").read_text())
    two_rank_weights = torch.load(two_rank_results / f"{case['name']}.pt", weights_only=True)
    assert report["world_size"] == 2 and report["version"] == 1
    assert sorted(two_rank_weights) == sorted(weights)
    initial = tiny_model().state_dict()
    for name, tensor in weights.items():
        if not case.get("lora") or is_lora_adapted(name):  # LoRA: the base is frozen
            assert not torch.equal(tensor, initial[name]), name  # the step moved it ...
        torch.testing.assert_close(two_rank_weights[name], tensor, atol=WEIGHT_ATOL, rtol=0)  # ... the same way
    two_rank_metrics = report["metrics"]
    for key in ("loss/policy", "loss/grad_norm", "loss/entropy", "loss/clip_fraction",
                "async/importance_weight_mean", "async/importance_weight_max", "loss/advantage_abs_mean"):
        assert two_rank_metrics[key] == pytest.approx(metrics[key], rel=1e-4, abs=1e-6), key
    assert two_rank_metrics["perf/train_tokens"] == metrics["perf/train_tokens"]  # the global batch's


@pytest.mark.parametrize("case_name, parameter_share, optimizer_share",
                         [("zero0", 1.0, 1.0), ("zero1", 1.0, 0.5), ("zero2", 1.0, 0.5), ("zero3", 0.5, 0.5)])
def test_each_rank_holds_its_partition(case_name, parameter_share, optimizer_share, two_rank_results):
    _, _, one_rank = _one_rank_step(case_name)
    per_rank = json.loads((two_rank_results / f"{case_name}.json").read_text())["held_bytes_by_rank"]
    for held in per_rank:  # partitions are padded to an even split: "about" a half
        assert held["parameter_bytes"] / one_rank["parameter_bytes"] == pytest.approx(parameter_share, abs=0.02)
        assert held["optimizer_bytes"] / one_rank["optimizer_bytes"] == pytest.approx(optimizer_share, abs=0.02)


def test_a_two_rank_zero3_checkpoint_resumes_to_the_same_next_step(two_rank_results):
    continued = torch.load(two_rank_results / "zero3-continued.pt", weights_only=True)
    resumed = torch.load(two_rank_results / "zero3-resumed.pt", weights_only=True)
    for name, tensor in continued.items():
        assert torch.equal(resumed[name], tensor), name
    shards = sorted(path.name for path in (two_rank_results / "zero3-checkpoints" / "checkpoint-1" / "deepspeed"
                                           / "state").iterdir())
    assert shards == [f"zero_pp_rank_{rank}_mp_rank_00_{kind}_states.pt" for rank in (0, 1)
                      for kind in ("model", "optim")]


def test_resuming_on_another_number_of_ranks_is_refused_with_the_fix(two_rank_results):
    from rl.config import ConfigError

    case = next(case for case in CASES if case["name"] == "zero3")
    config = trainer_config(zero_stage=3, minibatches_per_step=case["minibatches_per_step"])
    config.rollout.questions_per_step = case["num_groups"]
    one_rank = GRPOTrainer(config, model=tiny_model())
    with pytest.raises(ConfigError, match=r"written by 2 rank\(s\) and this run has 1.*--nproc_per_node=2"):
        one_rank.load_checkpoint(two_rank_results / "zero3-checkpoints")
