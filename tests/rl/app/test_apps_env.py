"""The apps warm-start's task sampling: shuffled passes, the solver's modes, and batches the scripted solver can
play (training worlds share instructions, and the solver finds a task's turns by its prompt)."""

from __future__ import annotations

import random

import pytest

from data.apps.world import generate_apps_world
from data.config import AppsWorldConfig
from rl.app.apps_env import choose_solver_modes, distinct_instruction_batches, sample_passes

WORLD = generate_apps_world(AppsWorldConfig(seed=5, num_train=240, num_validation=10, num_test=20, train_worlds=3))


def test_training_worlds_share_instructions_and_batches_hold_each_once_in_order():
    tasks = WORLD.splits["train"]
    assert len({task.instruction for task in tasks}) < len(tasks)  # e.g. the same note path in two worlds
    batches = distinct_instruction_batches(tasks)
    assert [task for batch in batches for task in batch] == tasks
    assert all(len({task.instruction for task in batch}) == len(batch) for batch in batches)
    assert len(batches) < 10 and distinct_instruction_batches([]) == []


def test_passes_hold_each_task_at_most_once_and_modes_follow_the_parallel_fraction():
    tasks = WORLD.splits["train"]
    passes = sample_passes(tasks, 500, random.Random(0))
    assert [len(tasks_of_pass) for tasks_of_pass in passes] == [240, 240, 20]
    assert all(len({task.id for task in tasks_of_pass}) == len(tasks_of_pass) for tasks_of_pass in passes)
    modes = choose_solver_modes(tasks, 1.0, random.Random(0))
    assert all((mode == "parallel") == (max(map(len, task.gold_rounds)) > 1) for task, mode in zip(tasks, modes))
    assert set(choose_solver_modes(tasks, 0.0, random.Random(0))) == {"sequential"}
    with pytest.raises(ValueError, match="sft.parallel_fraction"):
        choose_solver_modes(tasks, 1.5, random.Random(0))
