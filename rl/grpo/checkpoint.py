"""Atomic, self-pruning checkpoints and the RNG/trainer state that makes a resume exact.

Layout of `<run_dir>/checkpoints/`:

    checkpoint-<step>/
        model/               the policy as an HF model folder (save_pretrained; + tokenizer), loadable by eval
        adapter/             LoRA runs only: the peft adapter
        deepspeed/           DeepSpeed engine state (weights, optimizer, LR scheduler)
        trainer_state.pt     policy version, step, RNG states (python, numpy, torch), caller's extra state
        trainer_state.json   the same minus RNG, for people
    latest                   name of the newest complete checkpoint (written atomically)

A checkpoint is written into a hidden temporary folder and renamed into place only once complete,
then `latest` is replaced (write + os.replace), then older checkpoints beyond `keep_last` are
deleted: a crash at any point leaves the previous checkpoint and pointer intact, and the next save
clears what the crashed one left behind (`remove_crash_leftovers`). Every load uses
`torch.load(..., weights_only=True)`, so state is limited to tensors and plain containers; DeepSpeed's
engine files too (`restrict_deepspeed_loads`), with its three state classes allow-listed.

    with atomic_checkpoint(run_dir / "checkpoints", step=20, keep_last=2) as folder:
        ...write files into folder...
    find_latest_checkpoint(run_dir)  # -> Path of checkpoint-20

On N ranks (torchrun; rl/grpo/distributed.py) every rank enters `atomic_checkpoint` together and
writes its own files (DeepSpeed's per-rank shards) into the one temporary folder; rank 0 alone creates,
renames and prunes folders and writes `latest`, with a barrier before the rename (every rank's files are
complete) and after it (no rank moves on before `latest` points at the new checkpoint).

What it simplifies on purpose: one folder writer (rank 0) on a filesystem every rank sees (one node, or a
shared filesystem); no remote storage.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import random
import shutil
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from rl.grpo.distributed import barrier, is_main_process, main_process_result
from rl.grpo.faults import fault_point

CHECKPOINT_PREFIX = "checkpoint-"
LATEST_POINTER = "latest"
TRAINER_STATE_FILE = "trainer_state.pt"
TRAINER_STATE_JSON = "trainer_state.json"
_TEMPORARY_PREFIX = ".tmp-"
_TRASH_PREFIX = ".old-"


def checkpoint_name(step: int) -> str:
    return f"{CHECKPOINT_PREFIX}{step}"


def _step_of(folder: Path) -> int | None:
    suffix = folder.name[len(CHECKPOINT_PREFIX) :]
    return int(suffix) if folder.name.startswith(CHECKPOINT_PREFIX) and suffix.isdigit() else None


def list_checkpoints(checkpoints_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints (those with a trainer state file), oldest first."""
    folder = Path(checkpoints_dir)
    if not folder.is_dir():
        return []
    complete = [
        p
        for p in folder.iterdir()
        if p.is_dir() and _step_of(p) is not None and (p / TRAINER_STATE_FILE).is_file()
    ]
    return sorted(complete, key=lambda p: _step_of(p))


def _checkpoints_dir_of(path: Path) -> Path:
    return path / "checkpoints" if (path / "checkpoints").is_dir() else path


def find_latest_checkpoint(run_or_checkpoints_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint of a run folder (or of a checkpoints folder); None if there is none."""
    checkpoints_dir = _checkpoints_dir_of(Path(run_or_checkpoints_dir))
    pointer = checkpoints_dir / LATEST_POINTER
    if pointer.is_file():
        candidate = checkpoints_dir / pointer.read_text().strip()
        if (candidate / TRAINER_STATE_FILE).is_file():
            return candidate
    complete = list_checkpoints(checkpoints_dir)
    return complete[-1] if complete else None


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint folder itself, or the latest one under a run/checkpoints folder; raises if none exists."""
    path = Path(path)
    if (path / TRAINER_STATE_FILE).is_file():
        return path
    latest = find_latest_checkpoint(path)
    if latest is None:
        raise FileNotFoundError(
            f"no complete checkpoint under '{path}' "
            f"(expected {CHECKPOINT_PREFIX}<step>/{TRAINER_STATE_FILE}); "
            "start without experiment.resume or point to a run folder that has checkpoints"
        )
    return latest


def write_text_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(f"{_TEMPORARY_PREFIX}{path.name}.{os.getpid()}")
    with open(temporary, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


@contextlib.contextmanager
def atomic_checkpoint(checkpoints_dir: str | os.PathLike, step: int, keep_last: int) -> Iterator[Path]:
    """Yield an empty temporary folder to fill; on success it becomes checkpoint-<step> and `latest`.

    On an exception the temporary folder is removed and the exception propagates: the previous
    checkpoints and the `latest` pointer are untouched. On N ranks all of them enter it, each writes
    its own files, and rank 0 does the folder work (a rank that raises stops the job through its
    launcher; the next save clears the folder it left, see `remove_crash_leftovers`).
    """
    checkpoints_dir = Path(checkpoints_dir)
    final = checkpoints_dir / checkpoint_name(step)
    temporary = main_process_result(lambda: _new_temporary_folder(checkpoints_dir, final))
    try:
        yield temporary
    except BaseException:
        if is_main_process():
            shutil.rmtree(temporary, ignore_errors=True)
        raise
    barrier()  # every rank's files are in the folder
    fault_point("save", step)
    if is_main_process():
        _publish(temporary, final, keep_last)
    barrier()  # `latest` names the new checkpoint before any rank goes on


def _new_temporary_folder(checkpoints_dir: Path, final: Path) -> Path:
    checkpoints_dir.mkdir(parents=True, exist_ok=True)
    remove_crash_leftovers(checkpoints_dir)
    temporary = checkpoints_dir / f"{_TEMPORARY_PREFIX}{final.name}.{os.getpid()}"
    shutil.rmtree(temporary, ignore_errors=True)
    temporary.mkdir()
    return temporary


def _publish(temporary: Path, final: Path, keep_last: int) -> None:
    """Rename the complete folder into place, point `latest` at it, prune the oldest (the one writer's job)."""
    checkpoints_dir = final.parent
    if final.exists():  # re-saving a step: move the old one aside first, so a rename is still atomic
        trash = checkpoints_dir / f"{_TRASH_PREFIX}{final.name}.{os.getpid()}"
        os.replace(final, trash)
        os.replace(temporary, final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(temporary, final)
    write_text_atomically(checkpoints_dir / LATEST_POINTER, final.name + "\n")
    prune_checkpoints(checkpoints_dir, keep_last)


def remove_crash_leftovers(checkpoints_dir: str | os.PathLike) -> None:
    """Delete what a writer killed mid-save left behind (rank 0 is the one folder writer, so none is in use).

    A half-written `.tmp-*` folder or file is deleted. An `.old-checkpoint-<step>.*` folder is a complete
    checkpoint moved aside to be replaced by a re-save of the same step: it is put back if the kill came
    before its replacement was in place, else deleted.
    """
    for leftover in Path(checkpoints_dir).iterdir():
        if leftover.name.startswith(_TRASH_PREFIX):
            original = leftover.parent / leftover.name[len(_TRASH_PREFIX) :].rsplit(".", 1)[0]
            if not original.exists():
                os.replace(leftover, original)
                continue
        if leftover.name.startswith((_TEMPORARY_PREFIX, _TRASH_PREFIX)):
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)


def prune_checkpoints(checkpoints_dir: str | os.PathLike, keep_last: int) -> list[Path]:
    """Delete complete checkpoints older than the newest `keep_last` (<= 0: keep all); returns them."""
    if keep_last <= 0:
        return []
    complete = list_checkpoints(checkpoints_dir)
    doomed = complete[:-keep_last]
    for folder in doomed:
        shutil.rmtree(folder, ignore_errors=True)
    return doomed


# ----------------------------------------------------------------------------------------------
# RNG and trainer state (tensors and plain containers only: loadable with weights_only=True)
# ----------------------------------------------------------------------------------------------


def capture_rng_state() -> dict[str, Any]:
    kind, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    version, internal_state, gauss = state["python"]
    random.setstate((version, tuple(internal_state), gauss))
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            numpy_state["kind"],
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["position"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


_ALLOWED_LEAVES = (str, int, float, bool, type(None), torch.Tensor)


def check_loadable_state(value: Any, where: str = "extra_state") -> None:
    """Raise TypeError naming the key of anything torch.load(weights_only=True) would refuse."""
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, (str, int)):
                raise TypeError(f"{where}: key {key!r} must be a str or int")
            check_loadable_state(item, f"{where}[{key!r}]")
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            check_loadable_state(item, f"{where}[{index}]")
    elif not isinstance(value, _ALLOWED_LEAVES):
        raise TypeError(
            f"{where} is a {type(value).__name__}; checkpoint state may hold only dicts, lists, tuples, "
            "str, int, "
            "float, bool, None and tensors (convert it, e.g. dataclasses.asdict)"
        )


def save_trainer_state(folder: str | os.PathLike, state: dict[str, Any]) -> None:
    """Write trainer_state.pt (everything) and trainer_state.json (everything but RNG, when JSON-able)."""
    folder = Path(folder)
    check_loadable_state(state, "trainer state")
    torch.save(state, folder / TRAINER_STATE_FILE)
    readable = {key: value for key, value in state.items() if key != "rng"}
    try:
        text = json.dumps(readable, indent=2, sort_keys=True)
    except TypeError:  # tensors in the extra state: keep the JSON to the scalar fields
        text = json.dumps({k: v for k, v in readable.items() if isinstance(v, (int, float, str))}, indent=2)
    (folder / TRAINER_STATE_JSON).write_text(text + "\n")


def load_trainer_state(folder: str | os.PathLike) -> dict[str, Any]:
    return torch.load(Path(folder) / TRAINER_STATE_FILE, map_location="cpu", weights_only=True)


def deepspeed_state_classes() -> list[type]:
    """DeepSpeed's own classes inside its optimizer state files (ZeRO 1-3, fp32/bf16/fp16)."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


def weights_only_load(path: str | os.PathLike, map_location: Any = None, allowed_classes: list[type] = ()) -> Any:
    """torch.load(weights_only=True) with `allowed_classes` allow-listed; anything else is refused, naming the file."""
    try:
        with torch.serialization.safe_globals(list(allowed_classes)):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        reason = next((line for line in str(error).splitlines() if "Unsupported global" in line), "")
        raise pickle.UnpicklingError(
            f"{path}: refusing to load: it holds pickled objects beyond tensors, plain containers and "
            f"DeepSpeed's state classes ({reason.strip() or error}); checkpoints written by fanout-rl never do"
        ) from None


def restrict_deepspeed_loads(engine: Any) -> None:
    """Make this DeepSpeed engine read checkpoint files with weights_only=True (its default unpickles anything)."""
    allowed_classes = deepspeed_state_classes()
    engine.checkpoint_engine.load = lambda path, map_location=None: weights_only_load(
        path, map_location, allowed_classes)


__all__ = [
    "CHECKPOINT_PREFIX",
    "LATEST_POINTER",
    "atomic_checkpoint",
    "capture_rng_state",
    "check_loadable_state",
    "checkpoint_name",
    "find_latest_checkpoint",
    "list_checkpoints",
    "load_trainer_state",
    "prune_checkpoints",
    "remove_crash_leftovers",
    "restrict_deepspeed_loads",
    "resolve_checkpoint",
    "restore_rng_state",
    "save_trainer_state",
    "weights_only_load",
    "write_text_atomically",
]
