"""Bad model output: whatever tokens the policy emits, a rollout ends and its rewards are finite numbers.

The whole worker path runs (agent loop, protocol parsing, BM25 tools, reward scoring): once with the
untrained tiny model sampling at a high temperature, once with uniformly random token streams (special
tokens and protocol tags included) for both agent protocols. Garbage is a zero-ish reward, never a crash,
a NaN or a malformed trajectory.
"""

from __future__ import annotations

import math

import pytest
from reliability_helpers import RandomTokenEngine

from data.corpus import write_corpus
from rl.config import ExperimentConfig
from rl.app.rollout_setup import worker_config
from rollouts.worker import RolloutWorker, WorkerSetup

GROUP_SIZE = 4
MAX_CONTEXT_TOKENS = 400


@pytest.fixture(scope="module")
def corpus_path(tmp_path_factory, tiny_world) -> str:
    return str(write_corpus(tmp_path_factory.mktemp("corpus") / "corpus.jsonl", tiny_world.documents))


def make_worker(tiny_checkpoint, corpus_path: str, protocol: str, temperature: float) -> RolloutWorker:
    config = ExperimentConfig()
    config.rollout.protocol = protocol
    config.rollout.temperature = temperature
    config.rollout.max_turns = 2
    config.rollout.max_new_tokens_per_turn = 24
    config.rollout.max_context_tokens = MAX_CONTEXT_TOKENS
    return RolloutWorker(
        worker_config(config), WorkerSetup(worker_id=0, model_path=str(tiny_checkpoint), corpus_path=corpus_path)
    )


def check_scored_groups(groups, num_questions: int) -> None:
    assert len(groups) == num_questions
    for group in groups:
        assert len(group.trajectories) == GROUP_SIZE
        for trajectory in group.trajectories:
            assert (
                len(trajectory.response_ids)
                == len(trajectory.loss_mask)
                == len(trajectory.behaviour_logprobs)
            )
            assert len(trajectory.prompt_ids) + len(trajectory.response_ids) <= MAX_CONTEXT_TOKENS
            assert all(math.isfinite(value) and value <= 0 for value in trajectory.behaviour_logprobs)
            assert 1 <= trajectory.model_calls <= 3
            assert math.isfinite(trajectory.reward)
            assert trajectory.reward_components
            assert all(math.isfinite(value) for value in trajectory.reward_components.values())


def test_untrained_model_at_high_temperature_gives_finite_rewards(tiny_checkpoint, tiny_world, corpus_path):
    worker = make_worker(tiny_checkpoint, corpus_path, "tags", temperature=3.0)
    groups = worker.generate(tiny_world.splits["train"][:3], group_size=GROUP_SIZE, version=0, seed=0)
    check_scored_groups(groups, 3)


@pytest.mark.parametrize("protocol", ["tags", "function_call"])
def test_random_token_streams_through_the_worker_give_finite_rewards(
    tiny_checkpoint, tiny_world, corpus_path, protocol
):
    worker = make_worker(tiny_checkpoint, corpus_path, protocol, temperature=1.0)
    tokenizer = worker.components.engine.tokenizer
    questions = tiny_world.splits["train"][:4]
    for seed in range(3):
        worker.components.engine = RandomTokenEngine(tokenizer, seed=seed)
        groups = worker.generate(questions, group_size=GROUP_SIZE, version=0, seed=seed)
        check_scored_groups(groups, len(questions))
