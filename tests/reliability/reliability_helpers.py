"""Shared pieces of the reliability tests: `fanout` in a subprocess, tiny training overrides, file hashes."""

from __future__ import annotations

import hashlib
import json
import signal
from pathlib import Path

from cli_runs import ROOT, metrics_rows, run_fanout  # noqa: F401 (the reliability tests import them from here)

SIGKILL_RETURN_CODE = -signal.SIGKILL

# A run of the whole loop (world, Ray rollout actor, DeepSpeed trainer, checkpoints) that takes tens of
# seconds: the untrained tiny model (no SFT), two questions of two samples per step, one short turn.
TINY_TRAINING_OVERRIDES = [
    "data.world.num_entities_per_kind=20",
    "data.world.num_train=100",
    "data.world.num_validation=10",
    "data.world.num_test=30",
    "sft.enabled=false",
    "model.tiny.pretrain_steps=0",
    "rollout.questions_per_step=2",
    "rollout.group_size=2",
    "rollout.max_turns=1",
    "rollout.max_new_tokens_per_turn=16",
    "eval.at_end=false",
    "logging.plots=false",
    "logging.progress_bar=false",
    "logging.wandb_mode=disabled",
    "checkpoint.every_steps=1",
]


def trainer_state(checkpoint_dir: Path) -> dict:
    return json.loads((checkpoint_dir / "trainer_state.json").read_text())


def file_hashes(folder: Path) -> dict[str, str]:
    """sha256 of every file under `folder`, by relative path (to prove nothing was touched)."""
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def write_jsonl(path: Path, rows: list) -> Path:
    """Rows as JSON lines; a str row is written as it is (to make a malformed line)."""
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return path


# ------------------------------------------------------------------ stand-in inference engines


def scripted_engine(tokenizer, policy, version: int = 0):
    """The scripted engine (rollouts/scripted_engine.py) writing `policy(response_so_far)`, -0.5 per token."""
    from rollouts.scripted_engine import ScriptedEngine, response_policy

    return ScriptedEngine(tokenizer, response_policy(tokenizer, policy), logprob=-0.5, version=version)




PROTOCOL_TOKENS = [
    "<search>",
    "</search>",
    "<answer>",
    "</answer>",
    "<think>",
    "</think>",
    "<information>",
    "<tool_call>",
    "</tool_call>",
    "<|im_end|>",
    "<|im_start|>",
    "<|endoftext|>",
]


class RandomTokenEngine:
    """Random token ids over the whole vocabulary; one in five is a protocol tag or special token."""

    def __init__(self, tokenizer, seed: int, version: int = 0):
        import random

        self.tokenizer, self.version, self.random = tokenizer, version, random.Random(seed)
        vocabulary = tokenizer.get_vocab()
        self.tag_ids = [vocabulary[token] for token in PROTOCOL_TOKENS if token in vocabulary]

    def generate(
        self, batch_prompt_ids, max_new_tokens, stop_token_ids, temperature=1.0, top_p=1.0, seed=None,
        stop_strings=(),
    ):
        from rollouts.engine import GenerationOutput

        outputs = []
        for _ in batch_prompt_ids:
            token_ids = [
                self.random.choice(self.tag_ids)
                if self.random.random() < 0.2
                else self.random.randrange(len(self.tokenizer))
                for _ in range(self.random.randint(1, max_new_tokens))
            ]
            logprobs = [-self.random.uniform(0.0, 12.0) for _ in token_ids]
            outputs.append(GenerationOutput(token_ids, logprobs, "length"))
        return outputs
