"""Tool faults: with 20% of search calls failing and 20% hanging past the timeout, rollouts go on.

The faults come from the config (`tools.fault_rate`, `tools.fault_timeout_rate`), so the test builds a
real rollout worker from an ExperimentConfig (tiny model, BM25 over the tiny world, injected faults)
and only swaps its engine for a scripted one that always fans out (three sub-queries, then two, then an
answer): an untrained model rarely calls a tool at all. Every failure must become an error observation
in the trajectory, be counted by `rollout/tool_errors`, and never stop the episode.
"""

from __future__ import annotations

import math

import pytest
from reliability_helpers import scripted_engine

from data.corpus import write_corpus
from rl.config import ExperimentConfig
from rl.app.train import rollout_metrics
from rollouts.tools import FaultInjectingTool
from rl.app.rollout_setup import worker_config
from rollouts.worker import RolloutWorker, WorkerSetup

FAILURE_RATE = 0.2
TIMEOUT_RATE = 0.2
TIMEOUT_S = 2.0  # generous: only injected hangs may time out, even on a loaded machine
GROUP_SIZE = 4


def fan_out_twice_then_answer(response: str) -> str:
    rounds = response.count("<information>")
    if rounds == 0:
        return "<think> three facts </think><search> Quenbridge ## founded ## director</search>"
    if rounds == 3:
        return "<search> born ## city</search>"
    return "<answer> x</answer>"


@pytest.fixture(scope="module")
def faulty_worker(tmp_path_factory, tiny_world, tiny_checkpoint) -> RolloutWorker:
    corpus_path = write_corpus(tmp_path_factory.mktemp("corpus") / "corpus.jsonl", tiny_world.documents)
    config = ExperimentConfig()
    config.tools.fault_rate, config.tools.fault_timeout_rate = FAILURE_RATE, TIMEOUT_RATE
    config.tools.timeout_s = TIMEOUT_S
    config.rollout.max_turns = 3
    config.rollout.max_new_tokens_per_turn = 64
    worker = RolloutWorker(
        worker_config(config),
        WorkerSetup(worker_id=0, model_path=str(tiny_checkpoint), corpus_path=str(corpus_path)),
    )
    worker.components.engine = scripted_engine(worker.components.engine.tokenizer, fan_out_twice_then_answer)
    return worker


def test_injected_errors_and_timeouts_become_observations_and_metrics(faulty_worker, tiny_world):
    injector = faulty_worker.components.executor.tools["search"]
    assert isinstance(injector, FaultInjectingTool)  # wired from tools.fault_rate / fault_timeout_rate
    questions = tiny_world.splits["train"][:4]
    groups = faulty_worker.generate(questions, group_size=GROUP_SIZE, version=0, seed=0)

    trajectories = [trajectory for group in groups for trajectory in group.trajectories]
    calls = [call for trajectory in trajectories for turn in trajectory.turns for call in turn.calls]
    assert len(trajectories) == 16 and len(calls) == 16 * 5  # every episode made all its calls
    failed = [call for call in calls if call.error and "injected failure" in call.error]
    timed_out = [call for call in calls if call.error and "timed out after 2 s" in call.error]
    assert len(failed) == injector.injected_failures > 0
    assert len(timed_out) == injector.injected_hangs > 0
    assert len(failed) + len(timed_out) == sum(1 for call in calls if call.error)  # no other error
    assert 0.2 <= (len(failed) + len(timed_out)) / len(calls) <= 0.6  # ~40% of 80 seeded draws
    for call in failed + timed_out:
        assert call.observation == f"Error: {call.error}" and call.retrieved_doc_ids == []
    for trajectory in trajectories:
        shown = trajectory.response_text
        for call in (call for turn in trajectory.turns for call in turn.calls if call.error):
            assert call.observation in shown  # the model sees the error as an observation
        assert trajectory.final_answer == "x" and not trajectory.truncated  # the episode went on
        assert math.isfinite(trajectory.reward)

    metrics = rollout_metrics(groups)
    assert metrics["rollout/tool_errors"] == pytest.approx((len(failed) + len(timed_out)) / len(trajectories))
    assert metrics["rollout/tool_errors"] > 0
    assert metrics["rollout/tool_calls"] == 5.0 and metrics["rollout/model_calls"] == 3.0
