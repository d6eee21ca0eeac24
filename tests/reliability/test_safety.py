"""Safety: localhost by default, no code execution from checkpoints or model text.

- The retrieval server binds 127.0.0.1 unless told otherwise (the `serve` function, the CLI and the
  launch script's default).
- A checkpoint file holding a pickled object whose unpickling would run code is refused: the trainer
  state and DeepSpeed's engine files are loaded with `weights_only=True`. The payload would create a
  marker file; the tests check it never appears.
- Model output is data: no eval/exec/compile/pickle/shell call exists in the packages that handle model
  text, and a completion made of Python that would create a file runs through the agent loop, the tools
  and the rewards as plain text.
(Secrets: tests/reliability/test_interruption.py checks that WANDB_API_KEY reaches no file of a run.)
"""

from __future__ import annotations

import ast
import pickle
from pathlib import Path

import pytest
import torch
import uvicorn
from reliability_helpers import ROOT, scripted_engine
from tiny_models import tiny_qwen2

from data.retriever import BM25Retriever
from data.types import Question
from rl.grpo.checkpoint import find_latest_checkpoint, load_trainer_state
from rl.cli import build_parser, main
from rl.config import ExperimentConfig
from data.config import RetrieverConfig
from rollouts.agent_loop import run_episodes
from rollouts.protocols import build_protocol
from rollouts.tools import build_tools

DOCUMENTS = [{"id": "d1", "contents": "Bemo Hall\nBemo Hall was founded by Varlo Tenmis in 1901."}]


# ------------------------------------------------------------------ localhost by default


def test_the_retrieval_server_binds_localhost_unless_told_otherwise(tmp_path, monkeypatch):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text('{"id": "d1", "contents": "Bemo Hall\\nFounded in 1901."}\n')
    bound = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: bound.append(options["host"]))
    assert main(["serve-retriever", "--corpus", str(corpus), "--index-dir", str(tmp_path / "index")]) == 0
    assert (
        main(
            [
                "serve-retriever",
                "--corpus",
                str(corpus),
                "--index-dir",
                str(tmp_path / "index"),
                "--host",
                "0.0.0.0",
            ]
        )
        == 0
    )
    assert bound == ["127.0.0.1", "0.0.0.0"]  # only an explicit --host opens it to the network
    assert build_parser().parse_args(["serve-retriever", "--corpus", "c"]).host == "127.0.0.1"
    assert RetrieverConfig().url.startswith("http://127.0.0.1:")
    assert "\nhost=127.0.0.1\n" in (ROOT / "scripts" / "retriever_server.sh").read_text()


# ------------------------------------------------------------------ checkpoints never unpickle code


class CreatesAFileWhenUnpickled:
    """Unpickling this calls Path.touch(marker): any code could run in its place."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def tiny_trainer(zero_stage: int):
    from rl.grpo.trainer import GRPOTrainer

    model = tiny_qwen2(vocab_size=64, num_hidden_layers=1, tie_word_embeddings=False)
    config = ExperimentConfig()
    config.deepspeed.zero_stage = zero_stage
    config.rollout.questions_per_step, config.rollout.group_size = 1, 2
    return GRPOTrainer(config, model=model)


def test_a_pickled_object_in_the_trainer_state_is_refused(tmp_path):
    checkpoint = tmp_path / "checkpoints" / "checkpoint-1"
    checkpoint.mkdir(parents=True)
    marker = tmp_path / "code-ran"
    torch.save(
        {"version": 1, "step": 1, "extra_state": {"x": CreatesAFileWhenUnpickled(marker)}},
        checkpoint / "trainer_state.pt",
    )
    assert find_latest_checkpoint(tmp_path) == checkpoint  # it looks like a checkpoint ...
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        load_trainer_state(checkpoint)  # ... but loading it refuses the object
    assert not marker.exists()


@pytest.mark.parametrize("zero_stage", [0, 1, 3])
def test_a_pickled_object_in_a_deepspeed_engine_file_is_refused(tmp_path, zero_stage):
    torch.set_num_threads(1)
    trainer = tiny_trainer(zero_stage)
    checkpoint = trainer.save_checkpoint(tmp_path / "checkpoints", step=1)
    trainer.load_checkpoint(checkpoint)  # an honest checkpoint loads, optimizer state included

    marker = tmp_path / "code-ran"
    engine_files = sorted((checkpoint / "deepspeed").rglob("*.pt"))
    assert len(engine_files) == (1 if zero_stage == 0 else 2)  # model states (+ ZeRO optimizer states)
    for tampered in engine_files:  # one file at a time, the others honest
        honest_bytes = tampered.read_bytes()
        torch.save({"payload": CreatesAFileWhenUnpickled(marker)}, tampered)
        with pytest.raises(pickle.UnpicklingError, match=rf"{tampered.name}: refusing to load"):
            trainer.load_checkpoint(checkpoint)
        assert not marker.exists()
        tampered.write_bytes(honest_bytes)
    trainer.load_checkpoint(checkpoint)


# ------------------------------------------------------------------ model output is never executed

MODEL_TEXT_PACKAGES = ("rollouts", "rewards", "data")
FORBIDDEN_CALLS = {"eval", "exec", "compile", "__import__", "breakpoint"}
FORBIDDEN_ATTRIBUTE_CALLS = {
    ("pickle", "loads"),
    ("pickle", "load"),
    ("marshal", "loads"),
    ("os", "system"),
    ("os", "popen"),
    ("yaml", "load"),
    ("yaml", "unsafe_load"),
    ("subprocess", "run"),
    ("subprocess", "Popen"),
    ("subprocess", "call"),
    ("subprocess", "check_output"),
}


def forbidden_calls_in(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if not isinstance(node, ast.Call):
            continue
        function = node.func
        if isinstance(function, ast.Name) and function.id in FORBIDDEN_CALLS:
            found.append(f"{path}:{node.lineno}: {function.id}(...)")
        if isinstance(function, ast.Attribute) and isinstance(function.value, ast.Name):
            if (function.value.id, function.attr) in FORBIDDEN_ATTRIBUTE_CALLS:
                found.append(f"{path}:{node.lineno}: {function.value.id}.{function.attr}(...)")
    return found


def test_no_code_execution_calls_where_model_text_is_handled():
    sources = [path for package in MODEL_TEXT_PACKAGES for path in sorted((ROOT / package).rglob("*.py"))]
    assert len(sources) > 20
    assert [call for path in sources for call in forbidden_calls_in(path)] == []


def test_the_scan_finds_what_it_looks_for(tmp_path):
    source = tmp_path / "sample.py"
    source.write_text("import os, pickle\nx = eval(text)\npickle.loads(blob)\nos.system(command)\n")
    assert forbidden_calls_in(source) == [
        f"{source}:2: eval(...)",
        f"{source}:3: pickle.loads(...)",
        f"{source}:4: os.system(...)",
    ]


def test_python_in_a_completion_is_only_ever_text(tmp_path, tiny_checkpoint):
    from rollouts.model_loading import load_tokenizer
    from rewards import score_group

    marker = tmp_path / "code-ran"
    code = f"__import__('pathlib').Path({str(marker)!r}).touch()"
    completions = {0: f"<search> {code} ## exec({code!r})</search>", 1: f"<answer> {code}</answer>"}
    engine = scripted_engine(
        load_tokenizer(tiny_checkpoint), lambda response: completions[min(response.count("<information>"), 1)]
    )
    config = ExperimentConfig()
    config.rollout.max_new_tokens_per_turn = 512
    executor = build_tools(config.tools, config.retriever, BM25Retriever(DOCUMENTS))
    question = Question(
        id="q", question="Who founded Bemo Hall?", answers=["Varlo Tenmis"], structure="single"
    )
    groups = run_episodes(
        engine,
        build_protocol("tags"),
        executor,
        [question],
        group_size=2,
        rollout_config=config.rollout,
        policy_version=0,
    )
    breakdowns = score_group(groups[0], config.reward)
    trajectory = groups[0].trajectories[0]
    assert [call.arguments["query"] for call in trajectory.turns[0].calls] == [code, f"exec({code!r})"]
    assert trajectory.final_answer == code
    assert all(breakdown.components["exact_match"] == 0.0 for breakdown in breakdowns)
    assert not marker.exists()
