"""RolloutManager + Ray rollout actors: staleness window, weight push, fault tolerance, resumable cursor.

One Ray session for the module. Most tests use a model-free stand-in actor (same methods as
RolloutWorker) so the scheduling rules are checked in seconds; the last tests run two real actors on
the tiny checkpoint and the tiny generated world.
"""

from __future__ import annotations

import os
import time

import pytest
import ray
import torch

from data.types import Question
from rl.config import ExperimentConfig
from rollouts.manager import init_ray
from rl.app.rollout_setup import build_rollout_manager
from rl.app.rollout_setup import worker_config
from rollouts.worker import WorkerSetup

QUESTIONS = [Question(id=f"q{index}", question=f"Question {index}?", answers=["a"]) for index in range(12)]


def make_fake_worker_class(generate_delay_s: float = 0.0, fail_on_question: str = "", skip_question: str = "",
                           hang_worker_id: int = -1, hang_from_version: int = 0):
    """A Ray actor class with RolloutWorker's methods and no model (defined here so it pickles by value).

    Worker `hang_worker_id` never finishes a generate call from policy `hang_from_version` on, so a test
    can kill it while it surely has calls in flight.
    """

    class FakeRolloutWorker:
        def __init__(self, config, setup):
            self.setup = setup
            self.loaded_version = setup.initial_version
            self.loaded_tensor_sum = None

        def generate(self, questions, group_size, version, seed):
            import time as time_module

            from data.trajectory import Group, Trajectory

            time_module.sleep(generate_delay_s)
            if self.setup.worker_id == hang_worker_id and self.loaded_version >= hang_from_version:
                time_module.sleep(3600)
            groups = []
            for question in questions:
                if question.id == fail_on_question:
                    raise ValueError(f"cannot generate for {question.id}")
                if question.id == skip_question:
                    continue
                trajectories = [Trajectory(question=question, prompt_ids=[1], policy_version=self.loaded_version,
                                           reward=1.0) for _ in range(group_size)]
                groups.append(Group(group_id=f"{question.id}-{seed}", question=question, trajectories=trajectories,
                                    policy_version=self.loaded_version, worker_id=self.setup.worker_id))
            return groups

        def update_weights(self, weights, version):
            from rollouts.weight_sync import decode_weights

            self.loaded_tensor_sum = float(sum(tensor.sum() for tensor in decode_weights(weights).values()))
            self.loaded_version = version
            return 0.0

        def version(self):
            return self.loaded_version

        def tensor_sum(self):
            return self.loaded_tensor_sum

        def ping(self):
            return self.setup.worker_id

    return ray.remote(FakeRolloutWorker)


def actor_is_dead(actor) -> bool:
    try:
        ray.get(actor.ping.remote(), timeout=5)
    except ray.exceptions.RayActorError:
        return True
    except ray.exceptions.GetTimeoutError:
        pass
    return False


@pytest.fixture(scope="module")
def ray_session():
    started_here = not ray.is_initialized()
    init_ray(num_cpus=2)
    yield
    if started_here:
        ray.shutdown()


def small_config(max_staleness: int, num_workers: int = 2, questions_per_step: int = 4,
                 questions_per_worker_call: int = 1, max_inflight_calls_per_worker: int = 2) -> ExperimentConfig:
    config = ExperimentConfig()
    config.rollout.num_workers = num_workers
    config.rollout.worker_num_cpus = 0.5
    config.rollout.group_size = 2
    config.rollout.questions_per_step = questions_per_step
    config.rollout.questions_per_worker_call = questions_per_worker_call
    config.rollout.max_inflight_calls_per_worker = max_inflight_calls_per_worker
    config.async_.max_staleness = max_staleness
    config.async_.max_buffered_groups = 16
    return config


def weights(value: float) -> dict[str, torch.Tensor]:
    return {"layer.weight": torch.full((2, 2), value)}


def wait_until(condition, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def test_synchronous_run_generates_exactly_one_batch_per_version(ray_session):
    config = small_config(max_staleness=0)
    with build_rollout_manager(config, QUESTIONS, model_path="unused", actor_class=make_fake_worker_class(0.01)) as manager:
        with pytest.raises(ValueError, match=r"call push_weights\(state_dict, 1\) first"):
            manager.get_batch(4, current_version=1, timeout=5)
        for version in range(3):
            batch = manager.get_batch(4, current_version=version, timeout=60)
            assert [group.policy_version for group in batch] == [version] * 4
            manager.push_weights(weights(float(version + 1)), version=version + 1)
        batch = manager.get_batch(4, current_version=3, timeout=60)
        assert {group.policy_version for group in batch} == {3}
        handles = manager.worker_handles()
        assert ray.get([handle.version.remote() for handle in handles]) == [3, 3]
        assert ray.get([handle.tensor_sum.remote() for handle in handles]) == [12.0, 12.0]  # 2x2 tensor of 3.0
        with pytest.raises(ValueError, match="not newer"):
            manager.push_weights(weights(3.0), version=3)
        time.sleep(0.3)  # would be enough for a wrongly eager pump to issue more work
        stats = manager.stats()
    assert stats["perf/weight_bytes"] == 16 and stats["perf/weight_sync_s"] > 0
    assert stats["rollout/generate_calls"] == 16  # 4 versions x 4 questions, 1 question per call: nothing extra
    assert stats["async/dropped_groups"] == 0
    assert stats["async/staleness_mean"] == 0 and stats["async/staleness_max"] == 0
    assert stats["rollout/groups_generated"] == 16 and stats["rollout/groups_lost"] == 0


def test_asynchronous_run_stays_within_the_bound_and_the_window(ray_session):
    config = small_config(max_staleness=1, max_inflight_calls_per_worker=4)  # the whole first window at once
    with build_rollout_manager(config, QUESTIONS, model_path="unused", actor_class=make_fake_worker_class(0.01)) as manager:
        stalenesses = []
        for version in range(4):
            batch = manager.get_batch(4, current_version=version, timeout=60)
            stalenesses += [version - group.policy_version for group in batch]
            manager.push_weights(weights(1.0), version=version + 1)
        wait_until(lambda: manager.stats(reset_window=False)["rollout/groups_generated"] >= 24)
        time.sleep(0.3)  # would be enough for a wrongly eager pump to issue more work
        stats = manager.stats()
    # version 0's window is 8 groups, all issued at start: 4 of them train version 1 with staleness 1
    assert set(stalenesses) <= {0, 1} and stalenesses[4:8] == [1, 1, 1, 1]
    assert stats["async/dropped_groups"] == 0
    # window after pushing version 4 with staleness 1: (4 + 1 + 1) * 4 groups, never more
    assert stats["rollout/groups_generated"] == 24


def test_killed_actor_is_replaced_and_its_questions_requeued(ray_session):
    config = small_config(max_staleness=0)
    actor_class = make_fake_worker_class(hang_worker_id=0, hang_from_version=1)
    with build_rollout_manager(config, QUESTIONS, model_path="unused", actor_class=actor_class) as manager:
        first = manager.get_batch(4, current_version=0, timeout=60)
        manager.push_weights(weights(1.0), version=1)
        wait_until(lambda: manager.stats(reset_window=False)["rollout/groups_generated"] == 6)
        ray.kill(manager.worker_handles()[0])  # 2 one-question calls in flight on it, worker 1 is done
        second = manager.get_batch(4, current_version=1, timeout=60)
        stats = manager.stats()
        replacement = manager.worker_handles()[0]
        assert ray.get(replacement.version.remote()) == 1
        assert manager.worker_ids() == [2, 1]
    assert {group.policy_version for group in second} == {1}
    question_ids = [group.question.id for group in first + second]
    assert len(set(question_ids)) == 8  # the re-queued questions were generated once each, none skipped
    assert stats["rollout/actors_replaced"] == 1
    assert stats["rollout/requeued_questions"] == 2
    assert stats["rollout/groups_lost"] == 0
    assert stats["async/dropped_groups"] == 0


def test_an_error_inside_generate_is_raised_by_get_batch(ray_session):
    config = small_config(max_staleness=0, num_workers=1)
    actor_class = make_fake_worker_class(fail_on_question="q3")
    questions = [QUESTIONS[3]]
    with build_rollout_manager(config, questions, model_path="unused", actor_class=actor_class) as manager:
        with pytest.raises(RuntimeError, match="cannot generate for q3"):
            manager.get_batch(4, current_version=0, timeout=60)


def test_a_worker_dying_more_often_than_allowed_stops_the_run(ray_session):
    config = small_config(max_staleness=0, num_workers=1)
    config.rollout.max_actor_replacements = 0
    actor_class = make_fake_worker_class(hang_worker_id=0)
    with build_rollout_manager(config, QUESTIONS, model_path="unused", actor_class=actor_class) as manager:
        manager.start()
        wait_until(lambda: manager.stats(reset_window=False)["async/inflight_groups"] > 0)
        ray.kill(manager.worker_handles()[0])
        with pytest.raises(RuntimeError, match="rollout.max_actor_replacements"):
            manager.get_batch(4, current_version=0, timeout=60)


def test_groups_a_worker_fails_to_return_are_counted_lost_and_replaced_by_new_questions(ray_session):
    config = small_config(max_staleness=0, num_workers=1)
    actor_class = make_fake_worker_class(skip_question="q2")
    questions = QUESTIONS[:6]
    with build_rollout_manager(config, questions, model_path="unused", actor_class=actor_class) as manager:
        batch = manager.get_batch(4, current_version=0, timeout=60)
        stats = manager.stats()
    # seed 0 orders the 6 questions [4, 2, 1, 0, 5, 3]: q2 is lost and its place in the window goes to q5
    assert sorted(group.question.id for group in batch) == ["q0", "q1", "q4", "q5"]
    assert stats["rollout/groups_lost"] == 1
    assert stats["rollout/generate_calls"] == 5


def test_extra_demand_in_one_version_grows_the_window_instead_of_deadlocking(ray_session):
    config = small_config(max_staleness=0, num_workers=1)
    with build_rollout_manager(config, QUESTIONS, model_path="unused", actor_class=make_fake_worker_class()) as manager:
        manager.get_batch(4, current_version=0, timeout=60)
        extra = manager.get_batch(2, current_version=0, timeout=60)  # e.g. after filtering zero-advantage groups
        assert [group.policy_version for group in extra] == [0, 0]
        assert manager.stats()["rollout/groups_generated"] == 6


def test_state_dict_requeues_unconsumed_questions_for_an_exact_resume(ray_session):
    config = small_config(max_staleness=1, num_workers=1, questions_per_step=2, questions_per_worker_call=2,
                          max_inflight_calls_per_worker=2)
    with build_rollout_manager(config, QUESTIONS, model_path="unused", actor_class=make_fake_worker_class()) as manager:
        consumed = manager.get_batch(2, current_version=0, timeout=60)
        state = manager.state_dict()  # the window issued 4 questions: 2 consumed, 2 buffered or in flight
    requeued = state["cursor"]["requeued"]
    assert state["cursor"]["position"] == 4 and len(requeued) == 2
    consumed_ids = {group.question.id for group in consumed}
    assert consumed_ids.isdisjoint(QUESTIONS[index].id for index in requeued)

    with build_rollout_manager(config, QUESTIONS, model_path="unused", actor_class=make_fake_worker_class()) as resumed:
        resumed.load_state_dict(state)
        first_after_resume = resumed.get_batch(2, current_version=0, timeout=60)
        with pytest.raises(RuntimeError, match="before the manager starts"):
            resumed.load_state_dict(state)
    assert [group.question.id for group in first_after_resume] == [QUESTIONS[index].id for index in requeued]


# ------------------------------------------------------------------ real actors on the tiny checkpoint


@pytest.fixture(scope="module")
def tiny_corpus_path(tmp_path_factory, tiny_world):
    from data.corpus import write_corpus

    return str(write_corpus(tmp_path_factory.mktemp("tiny_corpus") / "corpus.jsonl", tiny_world.documents))


def tiny_model_config(max_staleness: int) -> ExperimentConfig:
    config = small_config(max_staleness=max_staleness, questions_per_step=2, questions_per_worker_call=1)
    config.rollout.max_turns = 1
    config.rollout.max_new_tokens_per_turn = 8
    config.rollout.max_context_tokens = 512
    config.rollout.max_actor_replacements = 2
    return config


# The default suite runs the real actor's replacement in the default (continuous) mode; the manager's replacement
# logic is also covered with fake actors (test_killed_actor_is_replaced_and_its_questions_requeued). The
# one-call-at-a-time variant costs as much again (about 25 s idle) and runs with -m slow.
@pytest.mark.parametrize("continuous_batching", [
    pytest.param(True, id="continuous"),
    pytest.param(False, id="one-call-at-a-time", marks=pytest.mark.slow),
])
def test_two_actors_on_the_tiny_model_deliver_scored_groups_and_replace_a_killed_one(ray_session, tiny_checkpoint,
                                                                                tiny_world, tiny_corpus_path,
                                                                                continuous_batching):
    from rollouts.model_loading import load_model_and_tokenizer

    config = tiny_model_config(max_staleness=0)
    config.rollout.continuous_batching = continuous_batching
    questions = tiny_world.splits["train"][:8]
    with build_rollout_manager(config, questions, model_path=str(tiny_checkpoint), corpus_path=tiny_corpus_path) as manager:
        first = manager.get_batch(2, current_version=0, timeout=300)
        killed = manager.worker_handles()[1]
        ray.kill(killed)  # between steps: the manager finds out when its weight update fails
        wait_until(lambda: actor_is_dead(killed))  # ray.kill is asynchronous
        model, _ = load_model_and_tokenizer(str(tiny_checkpoint))
        state_dict = {name: tensor + 0.01 for name, tensor in model.state_dict().items()}
        manager.push_weights(state_dict, version=1)
        second = manager.get_batch(2, current_version=1, timeout=300)
        versions = ray.get([handle.version.remote() for handle in manager.worker_handles()])
        stats = manager.stats()

    assert [group.policy_version for group in first] == [0, 0]
    assert [group.policy_version for group in second] == [1, 1]
    assert versions == [1, 1]  # the replacement loaded the current weights
    for group in first + second:
        assert len(group.trajectories) == 2
        assert {trajectory.policy_version for trajectory in group.trajectories} == {group.policy_version}
        for trajectory in group.trajectories:  # scored in the actor with config.reward's weights
            components = trajectory.reward_components
            assert "exact_match" in components and set(components) <= set(config.reward.weights)
            weighted_sum = sum(config.reward.weights[name] * value for name, value in components.items())
            assert trajectory.reward == pytest.approx(weighted_sum)
    assert len({group.question.id for group in first + second}) == 4
    assert stats["rollout/actors_replaced"] == 1
    assert stats["rollout/groups_lost"] == 0
    assert stats["async/dropped_groups"] == 0


def test_the_concurrent_actor_merges_calls_and_waits_for_the_weights_a_call_was_issued_for(tiny_checkpoint, tiny_world,
                                                                                         tiny_corpus_path):
    import asyncio

    from rollouts.model_loading import load_model_and_tokenizer
    from rollouts.worker import AsyncRolloutWorker

    config = tiny_model_config(max_staleness=1)
    worker = AsyncRolloutWorker(worker_config(config), WorkerSetup(worker_id=5, model_path=str(tiny_checkpoint),
                                                             corpus_path=tiny_corpus_path))
    questions = tiny_world.splits["train"][:3]
    model, _ = load_model_and_tokenizer(str(tiny_checkpoint))
    state_dict = {name: tensor + 0.01 for name, tensor in model.state_dict().items()}

    async def main():
        at_version_0 = [asyncio.create_task(worker.generate([question], 2, version=0, seed=index))
                        for index, question in enumerate(questions[:2])]
        at_version_1 = asyncio.create_task(worker.generate(questions[2:], 2, version=1, seed=7))
        await asyncio.sleep(0.2)
        assert not at_version_1.done()  # issued for weights the actor does not hold yet
        load_s = await worker.update_weights(state_dict, 1)
        return [await task for task in at_version_0], await at_version_1, load_s

    first_calls, later_call, load_s = asyncio.run(main())
    assert [len(groups) for groups in first_calls] == [1, 1]
    assert later_call[0].policy_version == 1 and later_call[0].worker_id == 5
    assert {trajectory.policy_version for trajectory in later_call[0].trajectories} == {1}
    for groups in first_calls:
        assert groups[0].policy_version in (0, 1) and groups[0].worker_id == 5
        assert all(trajectory.reward_components for trajectory in groups[0].trajectories)
    counters = asyncio.run(worker.engine_counters())
    assert counters["requests"] > counters["engine_batches"]  # the two version-0 calls shared batches
    assert counters["weight_loads"] == 1 and load_s > 0
    assert asyncio.run(worker.version()) == 1
    assert asyncio.run(worker.wait_for_version(1, timeout_s=1)) == 1
    assert asyncio.run(worker.wait_for_version(2, timeout_s=0.05)) == 1  # never pushed: times out


def _loss_token_logprobs(model, groups) -> torch.Tensor:
    """Log-probs under `model` of every model-written token of the groups (the behaviour log-probs' positions)."""
    from rl.grpo.batch import collate, sequence_logprobs

    batch = collate([trajectory for group in groups for trajectory in group.trajectories], pad_token_id=0)
    with torch.no_grad():
        logprobs_BT = sequence_logprobs(model, batch)
    mask_BT = batch.loss_mask_BT.bool()
    return logprobs_BT[mask_BT], batch.behaviour_logprobs_BT[mask_BT]


def test_after_a_resume_the_first_turns_come_from_the_resumed_weights(ray_session, tiny_checkpoint, tiny_world,
                                                                     tiny_corpus_path):
    """A run resumed at version 3 starts its actors from the warm-start folder (version-0 weights). An actor
    reports version 0 until the pushed weights of version 3 are in its engine, so a call issued for version 3
    waits for them, even one that runs before the update: Ray does not keep an asyncio actor's calls in order
    while the update's weights are still being fetched. Every token tagged version 3 comes from them."""
    from rollouts.model_loading import load_model_and_tokenizer

    config = tiny_model_config(max_staleness=0)
    warm_start, _ = load_model_and_tokenizer(str(tiny_checkpoint))
    resumed, _ = load_model_and_tokenizer(str(tiny_checkpoint))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in resumed.parameters():
            parameter.add_(0.3 * torch.randn(parameter.shape, generator=generator))
    questions = tiny_world.splits["train"][:8]
    with build_rollout_manager(config, questions, model_path=str(tiny_checkpoint), corpus_path=tiny_corpus_path,
                               initial_version=3, model_version=0) as manager:
        versions_before_push = ray.get([handle.version.remote() for handle in manager.worker_handles()])
        with pytest.raises(RuntimeError, match=r"push_weights\(state_dict, 3\)"):
            manager.get_batch(2, current_version=3, timeout=5)
        ahead_of_the_update = manager.worker_handles()[0].generate.remote(questions[7:], 2, 3, 0)
        time.sleep(1.0)  # the call is running (or waiting) on the actor before the update is sent
        manager.push_weights(resumed.state_dict(), version=3)
        first = ray.get(ahead_of_the_update, timeout=300) + manager.get_batch(2, current_version=3, timeout=300)

    assert versions_before_push == [0, 0]  # the actors hold the warm start and say so
    assert [group.policy_version for group in first] == [3, 3, 3]
    resumed_logprobs, behaviour_logprobs = _loss_token_logprobs(resumed, first)
    warm_start_logprobs, _ = _loss_token_logprobs(warm_start, first)
    assert behaviour_logprobs.numel() > 0
    torch.testing.assert_close(behaviour_logprobs, resumed_logprobs, atol=1e-4, rtol=0)
    assert (behaviour_logprobs - warm_start_logprobs).abs().max() > 0.1


@ray.remote(num_cpus=0)
def worker_niceness() -> int:
    return os.nice(0)


def test_a_local_ray_runs_its_workers_at_the_driver_s_priority(ray_session):
    """Ray's default puts workers 15 nice levels down, where the rollout actors starve beside the trainer."""
    assert os.environ["RAY_worker_niceness"] == "0"
    assert ray.get(worker_niceness.remote(), timeout=60) == os.nice(0)
