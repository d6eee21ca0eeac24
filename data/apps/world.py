"""The apps world as a whole: the base state of the apps and the tasks, generated or read from a folder.

`generate_apps_world(config)` builds the base state (data/apps/state.py) and the train / validation /
test tasks (data/apps/tasks.py) from one AppsWorldConfig, with no download; it checks that every gold
round replays on the base state (a generator bug fails here, not in training). `write_apps_world`
saves it as `base_state.json` and `<split>.jsonl` (one AppTask row each); `load_apps_world` reads it back.

    world = generate_apps_world(AppsWorldConfig(seed=0))
    write_apps_world("apps_world/", AppsWorldConfig(seed=0))
    world = load_apps_world("apps_world/")

For training and evaluation, `apps_questions(tasks, folder)` turns tasks into the agent loop's questions:
each carries its task (`metadata["app_task"]`) and the path of the base state it starts from
(`metadata["apps_base_state_path"]`), which is all a verifier of its end state needs (`base_state_of`,
read once per process).
"""

from __future__ import annotations

import functools
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
from data.types import Question

SPLITS = ("train", "validation", "test")
BASE_STATE_FILE = "base_state.json"
BASE_STATE_PATH_KEY = "apps_base_state_path"  # Question.metadata: the base_state.json its episode starts from
APPS_SOURCE_NAME = "apps"  # the tools.mcp_servers name of the apps server (Trajectory.episode_states key)


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
    (out / BASE_STATE_FILE).write_text(json.dumps(world.base_state, indent=1, sort_keys=True))
    for split, tasks in world.splits.items():
        write_jsonl(out / f"{split}.jsonl", (task.to_row() for task in tasks))
    return out


def load_apps_world(directory: str | os.PathLike) -> AppsWorld:
    folder = Path(directory)
    state_path = folder / BASE_STATE_FILE
    if not state_path.is_file():
        raise DataError("no base_state.json here; write the world with write_apps_world first", str(folder))
    splits = {split: [AppTask.from_row(row, str(folder / f"{split}.jsonl"), line)
                      for line, row in iter_jsonl(folder / f"{split}.jsonl")] for split in SPLITS}
    return AppsWorld(base_state=json.loads(state_path.read_text()), splits=splits)


def ensure_apps_world(folder: str | os.PathLike, config: AppsWorldConfig) -> AppsWorld:
    """The world in `folder`, written from `config` first when the folder holds none."""
    if not (Path(folder) / BASE_STATE_FILE).is_file():
        write_apps_world(folder, config)
    return load_apps_world(folder)


def apps_questions(tasks: list[AppTask], world_dir: str | os.PathLike) -> list[Question]:
    """The tasks as questions whose metadata names the base state (of the world in world_dir) they start from."""
    state_path = str((Path(world_dir) / BASE_STATE_FILE).resolve())
    questions = []
    for task in tasks:
        question = task.to_question()
        question.metadata[BASE_STATE_PATH_KEY] = state_path
        questions.append(question)
    return questions


@functools.lru_cache(maxsize=8)
def _read_base_state(path: str, modified_ns: int) -> dict:
    return json.loads(Path(path).read_text())


def base_state_of(question: Question) -> dict:
    """The base state an apps question's episode started from (shared, read once per file: do not modify it)."""
    path = question.metadata.get(BASE_STATE_PATH_KEY)
    if not path:
        raise DataError(f"question {question.id!r} names no base state (metadata {BASE_STATE_PATH_KEY!r}); "
                        "build apps questions with data.apps.world.apps_questions")
    if not Path(path).is_file():
        raise DataError("the base state of this apps question is gone; write the world again", path)
    return _read_base_state(path, Path(path).stat().st_mtime_ns)


__all__ = ["APPS_SOURCE_NAME", "BASE_STATE_PATH_KEY", "AppsWorld", "apps_questions", "base_state_of",
           "ensure_apps_world", "generate_apps_world", "load_apps_world", "write_apps_world"]
