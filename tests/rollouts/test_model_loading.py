"""Model loading: a local folder, or a hub id found in the hub cache; unreachable hub ids fail saying what to run.

The machine running the tests has no network, so the hub is never reached: HF_HUB_OFFLINE=1 (set by
tests/conftest.py) is the way a test stands for "the hub cannot be reached", and a hand-made hub cache
stands for one that `hf download ID` filled.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from data.errors import ConfigError
from rollouts.model_loading import is_hub_id, load_model_and_tokenizer, load_tokenizer, local_model_folder

ROOT = Path(__file__).resolve().parents[2]
MISSING_HUB_ID = "fanout-rl-tests/no-such-model"


def test_a_hub_id_is_owner_slash_name_that_is_not_a_path(tmp_path, monkeypatch):
    assert is_hub_id("Qwen/Qwen2.5-7B-Instruct") and is_hub_id("meta-llama/Llama-3.1-8B-Instruct")
    assert not is_hub_id("runs/quickstart/sft") and not is_hub_id("/models/Qwen2.5-7B-Instruct")
    assert not is_hub_id("./Qwen2.5-7B-Instruct") and not is_hub_id("Qwen2.5-7B-Instruct")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models" / "qwen").mkdir(parents=True)
    assert not is_hub_id("models/qwen")  # a folder that exists is a folder


def test_a_local_folder_loads_as_itself(tiny_checkpoint):
    assert local_model_folder(tiny_checkpoint) == Path(tiny_checkpoint)
    with pytest.raises(ConfigError, match="not a saved model folder.*hf download"):
        local_model_folder(Path(tiny_checkpoint).parent / "missing-model")


def test_an_unreachable_hub_id_names_the_id_and_the_download_command(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for load in (local_model_folder, load_tokenizer, load_model_and_tokenizer):
        with pytest.raises(ConfigError) as error:
            load(MISSING_HUB_ID)
        message = str(error.value)
        assert f"model '{MISSING_HUB_ID}'" in message and "HF_HUB_OFFLINE is set" in message
        assert f"`hf download {MISSING_HUB_ID} --local-dir models/no-such-model`" in message
        assert "model.path=models/no-such-model" in message


def test_a_hub_id_in_the_hub_cache_loads_offline(tiny_checkpoint, tmp_path, monkeypatch):
    """What `hf download ID` leaves in the cache is found without the network."""
    from huggingface_hub import constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    repository = tmp_path / "hub" / "models--fanout-rl-tests--tiny"
    shutil.copytree(tiny_checkpoint, repository / "snapshots" / commit)
    (repository / "refs").mkdir()
    (repository / "refs" / "main").write_text(commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert local_model_folder("fanout-rl-tests/tiny") == repository / "snapshots" / commit
    model, tokenizer = load_model_and_tokenizer("fanout-rl-tests/tiny")
    assert model.config.vocab_size == len(tokenizer)


def test_fanout_train_with_an_unreachable_hub_id_exits_2_before_writing_anything(tmp_path):
    command = [sys.executable, "-m", "rl", "train", "configs/stock_cpu.yaml", f"model.path={MISSING_HUB_ID}",
               f"experiment.output_dir={tmp_path}"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120,
                            env={**_environment(), "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 2, result.stderr[-2000:]
    assert f"hf download {MISSING_HUB_ID} --local-dir models/no-such-model" in result.stderr
    assert not any(tmp_path.iterdir())  # no run folder: the model is checked first


def _environment() -> dict:
    import os

    return {key: value for key, value in os.environ.items() if not key.startswith(("MASTER_", "RANK", "WORLD_"))}


def test_fanout_eval_of_an_unreachable_hub_id_exits_2_naming_the_download(tmp_path, monkeypatch, capsys):
    from rl.cli import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["eval", "configs/stock_cpu.yaml", f"experiment.output_dir={tmp_path}", "--checkpoint",
                 MISSING_HUB_ID]) == 2
    assert f"hf download {MISSING_HUB_ID} --local-dir models/no-such-model" in capsys.readouterr().err
