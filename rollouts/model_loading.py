"""Loading a model folder (the tiny default or a real HF checkpoint) and its tokenizer; a hub id is fetched first.

Inference engines (rollouts/engine_*.py) and the trainer load "a model path" the same way, whatever
wrote it: `save_pretrained` of the tiny model (rl/app/modeling.py) or a real checkpoint. `model.path`
may also be a Hugging Face hub id (`Qwen/Qwen2.5-7B-Instruct`): `local_model_folder` downloads it into
the hub cache (or finds it there) once, in the process that resolves it, and everything downstream
(SFT, the trainer, the rollout actors, eval) gets that local folder. When the hub cannot be reached (no
network, or HF_HUB_OFFLINE=1) and the model is not in the cache, the error names the id and the command
that downloads it (`hf download ID --local-dir DIR`). Apart from that one download nothing reaches a hub:
`set_offline_mode` makes an accidental attempt fail fast instead of hanging.

    model, tokenizer = load_model_and_tokenizer("runs/quickstart/sft", dtype="float32")
    folder = local_model_folder("Qwen/Qwen2.5-0.5B-Instruct")  # the hub cache's snapshot folder
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

from data.errors import ConfigError

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def set_offline_mode() -> None:
    """The default path never reaches a hub; make any accidental attempt fail fast instead of hanging."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


# A hub id: `owner/name` (letters, digits, - _ .), nothing else; a path that exists is always a path.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# What a model folder needs (weights, config, tokenizer, chat template); not the duplicate formats.
_SKIPPED_DOWNLOADS = ["*.pth", "*.pt", "*.bin.index.json", "pytorch_model*.bin", "original/*", "*.gguf", "*.onnx",
                      "*.msgpack", "*.h5", "*.ot"]


def is_hub_id(path: str | os.PathLike) -> bool:
    """True for `owner/name` that is not an existing path (a hub id, e.g. Qwen/Qwen2.5-7B-Instruct)."""
    text = str(path)
    return bool(_HUB_ID.match(text)) and not Path(text).expanduser().exists()


def hub_is_offline() -> bool:
    """HF_HUB_OFFLINE set now (read at each call: huggingface_hub reads it once, at import)."""
    from huggingface_hub import constants

    flag = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    return flag or bool(constants.HF_HUB_OFFLINE)


def download_command(hub_id: str) -> str:
    return f"hf download {hub_id} --local-dir models/{hub_id.split('/')[-1]}"


def local_model_folder(path: str | os.PathLike) -> Path:
    """The local folder of model.path: the folder itself, or for a hub id the hub cache's snapshot of it.

    A hub id is downloaded when the hub can be reached, else found in the cache (what `hf download ID`
    wrote); otherwise ConfigError names the id and the download command.
    """
    if not is_hub_id(path):
        folder = Path(path).expanduser()
        _require_local_model(folder)
        return folder
    hub_id = str(path)
    from huggingface_hub import snapshot_download

    offline = hub_is_offline()
    try:
        folder = Path(snapshot_download(hub_id, local_files_only=offline, ignore_patterns=_SKIPPED_DOWNLOADS))
    except Exception as error:  # offline, no network, unknown or gated repo: one message saying what to do
        reason = "HF_HUB_OFFLINE is set" if offline else f"{type(error).__name__}: {str(error).splitlines()[0]}"
        raise ConfigError(
            f"model '{hub_id}' is not a local folder and could not be fetched from the Hugging Face hub "
            f"({reason}). Download it on a machine that reaches the hub: `{download_command(hub_id)}` "
            f"(copy the folder here if needed), then set model.path=models/{hub_id.split('/')[-1]}. "
            f"If '{hub_id}' is meant to be a local folder, it does not exist."
        ) from None
    _require_local_model(folder)
    return folder


# tokenizer_config.json classes that mean "the tokenizer.json as saved" (what build_tokenizer writes)
_PLAIN_TOKENIZER_CLASSES = ("TokenizersBackend", "PreTrainedTokenizerFast")


def load_tokenizer(path: str | os.PathLike) -> PreTrainedTokenizerFast:
    """The tokenizer saved in a model folder, exactly as saved.

    A tokenizer written by build_tokenizer is loaded as a plain fast tokenizer: AutoTokenizer would pick
    the class of the model type (Qwen2Tokenizer for the tiny Qwen2) and rebuild its pre-tokenizer, which
    splits numbers into single digits, so the trained merges for years would never apply. Real
    checkpoints name their own class and go through AutoTokenizer.
    """
    path = local_model_folder(path)
    set_offline_mode()
    config_file = Path(path) / "tokenizer_config.json"
    saved_class = json.loads(config_file.read_text()).get("tokenizer_class") if config_file.is_file() else None
    if saved_class in _PLAIN_TOKENIZER_CLASSES:
        tokenizer = PreTrainedTokenizerFast.from_pretrained(str(path))
    else:
        tokenizer = AutoTokenizer.from_pretrained(str(path))
    if tokenizer.pad_token is None:  # real checkpoints often lack one; left padding for generation
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def load_model_and_tokenizer(path: str | os.PathLike, dtype: str = "float32", device: str = "cpu"):
    """Load a saved model folder (tiny or real HF checkpoint, or a hub id: local_model_folder) and its tokenizer."""
    path = local_model_folder(path)
    tokenizer = load_tokenizer(path)
    return load_model(path, dtype, device), tokenizer


def load_model(path: str | os.PathLike, dtype: str = "float32", device: str = "cpu") -> torch.nn.Module:
    """The causal LM of a saved model folder (or a hub id: local_model_folder), never downloaded later."""
    if dtype not in _DTYPES:
        raise ConfigError(f"model.dtype {dtype!r} is not one of {sorted(_DTYPES)}")
    path = local_model_folder(path)
    set_offline_mode()
    return AutoModelForCausalLM.from_pretrained(str(path), dtype=_DTYPES[dtype]).to(device)


def _require_local_model(path: str | os.PathLike) -> None:
    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise ConfigError(
            f"model path '{folder}' is not a saved model folder (no config.json): give a local folder written "
            "by save_pretrained (`hf download ID --local-dir DIR` writes one), a hub id such as "
            "Qwen/Qwen2.5-7B-Instruct, or leave model.path empty to build the tiny model of the embedded default."
        )
