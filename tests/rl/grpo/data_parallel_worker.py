"""One rank of the data-parallel trainer tests: `torchrun --nproc_per_node=N data_parallel_worker.py OUT CASES`.

For each case (a JSON list of {"name", "zero_stage", "num_groups", "minibatches_per_step", "epochs_per_batch"},
optionally "lora": true, which also writes the adapter alone to `OUT/<name>-adapter.pt`)
every rank builds the same tiny model, trains one step on the same global batch of synthetic groups, and
rank 0 writes the updated weights (`OUT/<name>.pt`, gathered under ZeRO-3) and, in `OUT/<name>.json`, the
step's metrics and the bytes of parameters and optimizer state that each rank holds.

A case with "resume": true then saves a checkpoint (`OUT/<name>-checkpoints`), takes a second step, and
has a second trainer load the checkpoint and take the same second step: rank 0 writes both results
(`OUT/<name>-continued.pt`, `OUT/<name>-resumed.pt`).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parents[1])]  # trainer_helpers, tiny_models

import torch  # noqa: E402
from trainer_helpers import synthetic_groups, tiny_model, trainer_config  # noqa: E402

from rl.grpo.distributed import gather_to_all, is_main_process, world_size  # noqa: E402
from rl.grpo.trainer import GRPOTrainer  # noqa: E402


def run_case(case: dict, out_dir: Path) -> None:
    config = trainer_config(zero_stage=case["zero_stage"], minibatches_per_step=case["minibatches_per_step"],
                            epochs_per_batch=case["epochs_per_batch"])
    config.rollout.questions_per_step = case["num_groups"]
    config.model.lora.enabled = bool(case.get("lora"))
    trainer = GRPOTrainer(config, model=tiny_model())
    metrics = trainer.step(synthetic_groups(num_groups=case["num_groups"]))
    held = gather_to_all(trainer.held_bytes())
    weights = trainer.export_weights(main_process_only=True)
    adapter = trainer.export_weights("adapter", main_process_only=True) if case.get("lora") else None
    if is_main_process():
        torch.save(weights, out_dir / f"{case['name']}.pt")
        if adapter is not None:
            torch.save(adapter, out_dir / f"{case['name']}-adapter.pt")
        report = {"metrics": metrics, "held_bytes_by_rank": held, "world_size": world_size(),
                  "version": trainer.version}
        (out_dir / f"{case['name']}.json").write_text(json.dumps(report, indent=1))
    if case.get("resume"):
        checkpoints = out_dir / f"{case['name']}-checkpoints"
        trainer.save_checkpoint(checkpoints, extra_state={"step": 1})
        second_batch = synthetic_groups(seed=2, num_groups=case["num_groups"], policy_version=1)
        trainer.step(second_batch)
        continued = trainer.export_weights(main_process_only=True)
        resumed = GRPOTrainer(config, model=tiny_model(seed=1))  # other initial weights: the checkpoint must win
        assert resumed.load_checkpoint(checkpoints) == {"step": 1} and resumed.version == 1
        resumed.step(second_batch)
        resumed_weights = resumed.export_weights(main_process_only=True)
        if is_main_process():
            torch.save(continued, out_dir / f"{case['name']}-continued.pt")
            torch.save(resumed_weights, out_dir / f"{case['name']}-resumed.pt")


def main() -> None:
    torch.set_num_threads(1)
    out_dir, cases = Path(sys.argv[1]), json.loads(sys.argv[2])
    for case in cases:
        run_case(case, out_dir)
    # Leave the group together: a rank that exits with the group alive can abort in gloo's teardown
    # ("terminate called without an active exception", SIGABRT), failing a run whose work is done.
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
