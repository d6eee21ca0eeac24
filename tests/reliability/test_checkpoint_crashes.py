"""What a writer killed mid-save leaves in checkpoints/ never hides, breaks or outlives a good checkpoint.

The subprocess tests (test_interruption.py) kill a real run inside a save; here the two states a kill can
leave are built by hand, so each is checked in milliseconds: a half-written `.tmp-checkpoint-N.<pid>`
folder (and `.tmp-latest.<pid>` file), and a complete checkpoint moved aside to `.old-checkpoint-N.<pid>`
by a re-save of the same step that died before putting the new one in place.
"""

from __future__ import annotations

from rl.grpo.checkpoint import (
    LATEST_POINTER,
    atomic_checkpoint,
    find_latest_checkpoint,
    load_trainer_state,
    save_trainer_state,
)


def write_checkpoint(checkpoints_dir, step: int, keep_last: int = 0):
    with atomic_checkpoint(checkpoints_dir, step, keep_last=keep_last) as folder:
        (folder / "weights.bin").write_bytes(bytes([step]) * 8)
        save_trainer_state(folder, {"version": step, "step": step, "extra_state": {}})
    return checkpoints_dir / f"checkpoint-{step}"


def test_a_half_written_save_is_ignored_then_cleared_by_the_next_save(tmp_path):
    checkpoints_dir = tmp_path / "checkpoints"
    first = write_checkpoint(checkpoints_dir, 1)
    half_written = checkpoints_dir / ".tmp-checkpoint-2.4242"  # killed before the rename
    half_written.mkdir()
    (half_written / "weights.bin").write_bytes(b"partial")
    (checkpoints_dir / ".tmp-latest.4242").write_text("checkpoint-2\n")  # killed while moving `latest`

    assert find_latest_checkpoint(tmp_path) == first
    assert load_trainer_state(first)["version"] == 1

    write_checkpoint(checkpoints_dir, 2)
    assert sorted(path.name for path in checkpoints_dir.iterdir()) == [
        "checkpoint-1",
        "checkpoint-2",
        LATEST_POINTER,
    ]
    assert find_latest_checkpoint(tmp_path).name == "checkpoint-2"


def test_a_checkpoint_moved_aside_by_a_killed_re_save_is_put_back(tmp_path):
    checkpoints_dir = tmp_path / "checkpoints"
    write_checkpoint(checkpoints_dir, 1)
    second = write_checkpoint(checkpoints_dir, 2)
    second.rename(checkpoints_dir / ".old-checkpoint-2.4242")  # re-save of step 2 killed mid-swap

    assert find_latest_checkpoint(tmp_path).name == "checkpoint-1"  # `latest` names a missing folder
    write_checkpoint(checkpoints_dir, 3)
    assert sorted(path.name for path in checkpoints_dir.iterdir()) == [
        "checkpoint-1",
        "checkpoint-2",
        "checkpoint-3",
        LATEST_POINTER,
    ]
    assert (second / "weights.bin").read_bytes() == bytes([2]) * 8
    assert load_trainer_state(second)["version"] == 2
