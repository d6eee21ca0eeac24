"""The apps world as a whole: the base state of the apps and the tasks, generated or read from a folder.

`generate_apps_world(config)` builds the base state (data/apps/state.py) and the train / validation /
test tasks (data/apps/tasks.py) from one AppsWorldConfig, with no download; it checks that every gold
round replays on the base state (a generator bug fails here, not in training). `write_apps_world`
saves it as `base_state.json` and `<split>.jsonl` (one AppTask row each); `load_apps_world` reads it back.

With `train_worlds: K`, training tasks also act on K re-drawn worlds `w1`..`wK` (own names and records,
saved as `base_state-w<k>.json`); `num_train` is split evenly over the base world and them (or, with
`world_tasks: N`, the base world keeps `num_train` and each training world adds N, drawn from
`world_families` when it names some), and validation and test act on the base world only. A training
world's task names its world (`AppTask.world`), its question names it as its partition
(`metadata["corpus_partition"]`, which its calls carry to the apps server) and its base state's path, so the
server and the verifier both start from that world's state. With `world_redraw: notes` a training world is the
base world's state with what each note names drawn anew (data/apps/state.py `redraw_notes`).

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
from dataclasses import dataclass, field
from pathlib import Path

from data.apps.state import generate_base_state, redraw_notes
from data.apps.tasks import AppTask, generate_tasks, generate_world_tasks
from data.apps.verify import replay_rounds
from data.config import WORLD_REDRAWS, AppsWorldConfig
from data.corpus import iter_jsonl, write_jsonl
from data.errors import DataError
from data.types import Question

SPLITS = ("train", "validation", "test")
BASE_STATE_FILE = "base_state.json"
WORLD_STATE_FILE = "base_state-{world}.json"  # the base state of training world <world> (train_worlds)
BASE_STATE_PATH_KEY = "apps_base_state_path"  # Question.metadata: the base_state.json its episode starts from
APPS_SOURCE_NAME = "apps"  # the tools.mcp_servers name of the apps server (Trajectory.episode_states key)


@dataclass
class AppsWorld:
    base_state: dict  # the state every episode of the base world starts from
    splits: dict[str, list[AppTask]]  # "train", "validation", "test"
    world_states: dict[str, dict] = field(default_factory=dict)  # training world ("w1", ...) -> its base state

    def state_of(self, task: AppTask) -> dict:
        """The base state `task` starts from: its training world's, or the base world's."""
        if not task.world:
            return self.base_state
        if task.world not in self.world_states:
            raise DataError(f"apps task {task.id!r} acts on world {task.world!r}, which this apps world does not "
                            f"hold (it holds {sorted(self.world_states) or 'no training worlds'})")
        return self.world_states[task.world]

    def all_states(self) -> list[dict]:
        return [self.base_state, *self.world_states.values()]

    def task(self, task_id: str) -> AppTask:
        for tasks in self.splits.values():
            for task in tasks:
                if task.id == task_id:
                    return task
        raise KeyError(f"no apps task {task_id!r}")


def world_name(index: int) -> str:
    return f"w{index}"


def train_counts(config: AppsWorldConfig) -> list[int]:
    """Training tasks of the base world, then of each training world: num_train split evenly, or with
    world_tasks > 0, num_train in the base world and world_tasks in each training world."""
    if config.train_worlds < 0:
        raise DataError(f"data.apps.train_worlds is {config.train_worlds}; use 0 or more")
    if config.world_tasks < 0:
        raise DataError(f"data.apps.world_tasks is {config.world_tasks}; use 0 or more "
                        "(0: num_train split evenly)")
    if config.world_tasks:
        return [config.num_train] + [config.world_tasks] * config.train_worlds
    parts = config.train_worlds + 1
    return [config.num_train // parts + (index < config.num_train % parts) for index in range(parts)]


def training_world_state(base_state: dict, config: AppsWorldConfig, index: int) -> dict:
    """The base state of training world `w<index>`: a state of its own ("all"), or the base world's with the
    notes re-drawn ("notes")."""
    if config.world_redraw not in WORLD_REDRAWS:
        raise DataError(f"data.apps.world_redraw is {config.world_redraw!r}; "
                        f"valid: {', '.join(WORLD_REDRAWS)}")
    if config.world_redraw == "notes":
        return redraw_notes(base_state, config.seed, index)
    return generate_base_state(config, world_index=index)


def generate_apps_world(config: AppsWorldConfig) -> AppsWorld:
    counts = train_counts(config)
    base_state = generate_base_state(config)
    splits = generate_tasks(base_state, config, num_train=counts[0])
    world_states = {}
    for index, count in enumerate(counts[1:], start=1):
        name = world_name(index)
        world_states[name] = training_world_state(base_state, config, index)
        splits["train"].extend(generate_world_tasks(world_states[name], config, name, count))
    world = AppsWorld(base_state=base_state, splits=splits, world_states=world_states)
    for tasks in splits.values():
        for task in tasks:
            replay_rounds(world.state_of(task), task.gold_rounds)  # raises AppError naming the round and call
    return world


def write_state(path: Path, state: dict) -> None:
    path.write_text(json.dumps(state, indent=1, sort_keys=True))


def write_apps_world(out_dir: str | os.PathLike, config: AppsWorldConfig) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    world = generate_apps_world(config)
    write_state(out / BASE_STATE_FILE, world.base_state)
    for name, state in world.world_states.items():
        write_state(out / WORLD_STATE_FILE.format(world=name), state)
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
    return AppsWorld(base_state=json.loads(state_path.read_text()), splits=splits,
                     world_states=read_world_states(folder))


def read_world_states(folder: Path) -> dict[str, dict]:
    """{training world: its base state} of the base_state-<world>.json files in folder."""
    prefix, suffix = WORLD_STATE_FILE.split("{world}")
    return {path.name[len(prefix):-len(suffix)]: json.loads(path.read_text())
            for path in sorted(folder.glob(WORLD_STATE_FILE.format(world="*")))}


def ensure_apps_world(folder: str | os.PathLike, config: AppsWorldConfig) -> AppsWorld:
    """The world in `folder`, written from `config` first when the folder holds none."""
    if not (Path(folder) / BASE_STATE_FILE).is_file():
        write_apps_world(folder, config)
    return load_apps_world(folder)


def apps_questions(tasks: list[AppTask], world_dir: str | os.PathLike) -> list[Question]:
    """The tasks as questions whose metadata names the base state (of the world in world_dir) they start from."""
    folder = Path(world_dir).resolve()
    questions = []
    for task in tasks:
        question = task.to_question()
        state_file = WORLD_STATE_FILE.format(world=task.world) if task.world else BASE_STATE_FILE
        question.metadata[BASE_STATE_PATH_KEY] = str(folder / state_file)
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
           "ensure_apps_world", "generate_apps_world", "load_apps_world", "read_world_states", "train_counts",
           "write_apps_world"]
