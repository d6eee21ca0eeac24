"""StalenessBuffer: the staleness bound, drop counters per reason, blocking gets, and a hypothesis
state machine over random interleavings of puts, version bumps and gets."""

from __future__ import annotations

import threading

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from data.types import Question
from rollouts.buffer import BufferTimeout, StalenessBuffer
from data.trajectory import Group


def make_group(policy_version: int, name: str = "") -> Group:
    question_id = name or f"q-v{policy_version}"
    question = Question(id=question_id, question="Who?", answers=["x"])
    return Group(group_id=f"g-{question_id}", question=question, trajectories=[], policy_version=policy_version)


def test_get_batch_returns_oldest_admissible_first_and_counts_staleness():
    buffer = StalenessBuffer(max_staleness=2, capacity=10)
    for version, name in [(3, "a"), (1, "b"), (2, "c")]:
        assert buffer.put(make_group(version, name))
    batch = buffer.get_batch(2, current_version=3, timeout=0)
    assert [group.question.id for group in batch] == ["b", "c"]
    counters = buffer.counters()
    assert counters["admitted"] == 2
    assert counters["buffered"] == 1
    assert counters["staleness_histogram"] == {1: 1, 2: 1}
    assert counters["dropped_total"] == 0


def test_groups_that_became_stale_in_the_buffer_are_dropped_and_counted():
    buffer = StalenessBuffer(max_staleness=1, capacity=10)
    for version in (0, 0, 1, 2):
        buffer.put(make_group(version))
    batch = buffer.get_batch(2, current_version=2, timeout=0)  # the two version-0 groups are 2 behind
    assert [group.policy_version for group in batch] == [1, 2]
    counters = buffer.counters()
    assert counters["dropped"] == {"stale_on_arrival": 0, "stale_in_buffer": 2, "overflow": 0}
    assert counters["put"] == 4 and counters["admitted"] == 2 and counters["buffered"] == 0


def test_group_too_stale_on_arrival_is_refused():
    buffer = StalenessBuffer(max_staleness=1, capacity=10, current_version=5)
    assert buffer.put(make_group(3)) is False
    assert buffer.put(make_group(4)) is True
    assert len(buffer) == 1
    assert buffer.counters()["dropped"]["stale_on_arrival"] == 1


def test_synchronous_bound_admits_only_the_current_version():
    buffer = StalenessBuffer(max_staleness=0, capacity=10)
    buffer.put(make_group(0, "old"))
    buffer.put(make_group(1, "new"))
    batch = buffer.get_batch(1, current_version=1, timeout=0)
    assert [group.question.id for group in batch] == ["new"]
    assert buffer.counters()["dropped"]["stale_in_buffer"] == 1


def test_overflow_evicts_the_stalest_group():
    buffer = StalenessBuffer(max_staleness=5, capacity=2)
    buffer.put(make_group(2, "a"))
    buffer.put(make_group(1, "b"))
    buffer.put(make_group(3, "c"))
    assert sorted(buffer.buffered_question_ids()) == ["a", "c"]
    assert buffer.counters()["dropped"]["overflow"] == 1


def test_timeout_raises_and_keeps_the_buffered_groups():
    buffer = StalenessBuffer(max_staleness=1, capacity=10)
    buffer.put(make_group(0))
    with pytest.raises(BufferTimeout, match="1 are buffered"):
        buffer.get_batch(2, current_version=0, timeout=0.01)
    assert len(buffer) == 1 and buffer.counters()["admitted"] == 0


def test_version_going_backwards_is_refused():
    buffer = StalenessBuffer(max_staleness=1, capacity=10)
    buffer.advance_version(3)
    with pytest.raises(ValueError, match="went backwards"):
        buffer.get_batch(1, current_version=2, timeout=0)


def test_invalid_arguments_are_refused():
    with pytest.raises(ValueError, match="max_staleness"):
        StalenessBuffer(max_staleness=-1, capacity=4)
    with pytest.raises(ValueError, match="capacity"):
        StalenessBuffer(max_staleness=0, capacity=0)


def test_get_batch_blocks_until_a_producer_thread_fills_it():
    buffer = StalenessBuffer(max_staleness=0, capacity=10)
    producer_may_start = threading.Event()

    def produce() -> None:
        producer_may_start.wait()
        for index in range(3):
            buffer.put(make_group(0, f"q{index}"))

    thread = threading.Thread(target=produce)
    thread.start()
    producer_may_start.set()
    batch = buffer.get_batch(3, current_version=0, timeout=30)
    thread.join()
    assert sorted(group.question.id for group in batch) == ["q0", "q1", "q2"]


def test_count_at_most_version_and_wait_for_put():
    buffer = StalenessBuffer(max_staleness=3, capacity=10)
    assert buffer.wait_for_put(put_count_seen=0, timeout=0.01) is False
    for version in (0, 1, 1, 2):
        buffer.put(make_group(version))
    assert [buffer.count_at_most_version(version) for version in (0, 1, 2)] == [1, 3, 4]
    assert buffer.put_count == 4
    assert buffer.wait_for_put(put_count_seen=3, timeout=0) is True  # a put already happened since 3
    thread = threading.Thread(target=buffer.put, args=(make_group(2),))
    thread.start()
    assert buffer.wait_for_put(put_count_seen=4, timeout=30) is True
    thread.join()
    assert buffer.put_count == 5


class StalenessBufferMachine(RuleBasedStateMachine):
    """Random puts (of groups up to a few versions old or new), version bumps and gets."""

    def __init__(self) -> None:
        super().__init__()
        self.max_staleness = 1
        self.buffer = StalenessBuffer(max_staleness=self.max_staleness, capacity=6)
        self.version = 0
        self.batches_returned = 0

    @rule(max_staleness=st.integers(0, 3))
    def reset_with_bound(self, max_staleness: int) -> None:
        if self.buffer.counters()["put"] == 0:
            self.max_staleness = max_staleness
            self.buffer = StalenessBuffer(max_staleness=max_staleness, capacity=6, current_version=self.version)

    @rule(age=st.integers(0, 5))
    def put(self, age: int) -> None:
        self.buffer.put(make_group(max(0, self.version - age)))

    @rule(step=st.integers(1, 2))
    def bump_version(self, step: int) -> None:
        self.version += step

    @rule(num_groups=st.integers(1, 4))
    def get(self, num_groups: int) -> None:
        try:
            batch = self.buffer.get_batch(num_groups, current_version=self.version, timeout=0)
        except BufferTimeout:
            return
        self.batches_returned += 1
        assert len(batch) == num_groups
        for group in batch:
            assert 0 <= self.version - group.policy_version <= self.max_staleness

    @invariant()
    def every_put_group_is_accounted_for(self) -> None:
        counters = self.buffer.counters()
        assert counters["put"] == counters["admitted"] + counters["dropped_total"] + counters["buffered"]
        assert all(0 <= key <= self.max_staleness for key in counters["staleness_histogram"])
        assert counters["buffered"] <= self.buffer.capacity


TestStalenessBufferProperty = StalenessBufferMachine.TestCase
TestStalenessBufferProperty.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
