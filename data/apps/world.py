"""The apps world as a whole: the base state of the apps and the tasks, generated or read from a folder.

`generate_apps_world(config)` builds the base state (data/apps/state.py) and the train / validation /
test tasks (data/apps/tasks.py) from one AppsWorldConfig, with no download; it checks that every gold
round replays on the base state (a generator bug fails here, not in training). `write_apps_world`
saves it as `base_state.json` and `<split>.jsonl` (one AppTask row each); `load_apps_world` reads it back.

    world = generate_apps_world(AppsWorldConfig(seed=0))
    write_apps_world("apps_world/", AppsWorldConfig(seed=0))
    world = load_apps_world("apps_world/")
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from data.apps.state import generate_base_state
from data.apps.tasks import AppTask, generate_tasks
from data.apps.verify import replay_rounds
from data.config import AppsWorldConfig
from data.corpus import iter_jsonl, write_jsonl
from data.errors import DataError

SPLITS = ("train", "validation", "test")


@dataclass
class AppsWorld:
    base_state: dict  # the state every episode starts from
    splits: dict[str, list[AppTask]]  # "train", "validation", "test"

    def task(self, task_id: str) -> AppTask:
        for tasks in self.splits.values():
            for task in tasks:
                if task.id == task_id:
                    return task
        raise KeyError(f"no apps task {task_id!r}")


def generate_apps_world(config: AppsWorldConfig) -> AppsWorld:
    base_state = generate_base_state(config)
    splits = generate_tasks(base_state, config)
    for tasks in splits.values():
        for task in tasks:
            replay_rounds(base_state, task.gold_rounds)  # raises AppError naming the round and call
    return AppsWorld(base_state=base_state, splits=splits)


def write_apps_world(out_dir: str | os.PathLike, config: AppsWorldConfig) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    world = generate_apps_world(config)
    (out / "base_state.json").write_text(json.dumps(world.base_state, indent=1, sort_keys=True))
    for split, tasks in world.splits.items():
        write_jsonl(out / f"{split}.jsonl", (task.to_row() for task in tasks))
    return out


def load_apps_world(directory: str | os.PathLike) -> AppsWorld:
    folder = Path(directory)
    state_path = folder / "base_state.json"
    if not state_path.is_file():
        raise DataError("no base_state.json here; write the world with write_apps_world first", str(folder))
    splits = {split: [AppTask.from_row(row, str(folder / f"{split}.jsonl"), line)
                      for line, row in iter_jsonl(folder / f"{split}.jsonl")] for split in SPLITS}
    return AppsWorld(base_state=json.loads(state_path.read_text()), splits=splits)


__all__ = ["AppsWorld", "generate_apps_world", "load_apps_world", "write_apps_world"]
