"""Loading a saved model folder (the tiny default or a real HF checkpoint) and its tokenizer, never from a hub.

Inference engines (rollouts/engine_*.py) and the trainer load "a model path" the same way, whatever
wrote it: `save_pretrained` of the tiny model (rl/app/modeling.py) or a real checkpoint.

    model, tokenizer = load_model_and_tokenizer("runs/quickstart/sft", dtype="float32")
"""

from __future__ import annotations

import json
import os
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


# tokenizer_config.json classes that mean "the tokenizer.json as saved" (what build_tokenizer writes)
_PLAIN_TOKENIZER_CLASSES = ("TokenizersBackend", "PreTrainedTokenizerFast")


def load_tokenizer(path: str | os.PathLike) -> PreTrainedTokenizerFast:
    """The tokenizer saved in a model folder, exactly as saved.

    A tokenizer written by build_tokenizer is loaded as a plain fast tokenizer: AutoTokenizer would pick
    the class of the model type (Qwen2Tokenizer for the tiny Qwen2) and rebuild its pre-tokenizer, which
    splits numbers into single digits, so the trained merges for years would never apply. Real
    checkpoints name their own class and go through AutoTokenizer.
    """
    set_offline_mode()
    _require_local_model(path)
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
    """Load a saved model folder (tiny or real HF checkpoint) and its tokenizer, never from a hub."""
    if dtype not in _DTYPES:
        raise ConfigError(f"model.dtype {dtype!r} is not one of {sorted(_DTYPES)}")
    tokenizer = load_tokenizer(path)
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=_DTYPES[dtype])
    return model.to(device), tokenizer


def _require_local_model(path: str | os.PathLike) -> None:
    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise ConfigError(
            f"model path '{folder}' is not a saved model folder (no config.json). fanout-rl never downloads "
            "models: give a local folder written by save_pretrained, or leave model.path empty to build the "
            "tiny model of the embedded default."
        )
