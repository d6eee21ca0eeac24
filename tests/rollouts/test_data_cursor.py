"""DataCursor: seeded epoch order, re-queued indices first, exact continuation after a state round trip."""

from __future__ import annotations

import pytest

from rollouts.data_cursor import DataCursor


def test_each_epoch_is_a_permutation_and_the_seed_decides_the_order():
    cursor = DataCursor(num_items=5, seed=3)
    first_epoch, second_epoch = cursor.take(5), cursor.take(5)
    assert sorted(first_epoch) == sorted(second_epoch) == [0, 1, 2, 3, 4]
    assert cursor.epoch == 1 and cursor.position == 5
    assert DataCursor(num_items=5, seed=3).take(10) == first_epoch + second_epoch
    assert DataCursor(num_items=50, seed=3).take(50) != DataCursor(num_items=50, seed=4).take(50)


def test_requeued_indices_come_out_first_in_order():
    cursor = DataCursor(num_items=6, seed=0)
    first = cursor.take(3)
    cursor.requeue([first[2], first[0]])
    assert cursor.take(3)[:2] == [first[2], first[0]]


def test_state_round_trip_continues_exactly_including_extra_requeued():
    cursor = DataCursor(num_items=7, seed=11)
    cursor.take(9)  # into the second epoch
    cursor.requeue([4])
    state = cursor.state_dict(extra_requeued=[6])
    restored = DataCursor.from_state_dict(state)
    assert state["requeued"] == [4, 6]
    cursor.requeue([6])
    assert restored.take(12) == cursor.take(12)


def test_restoring_onto_a_different_split_is_refused():
    state = DataCursor(num_items=7, seed=0).state_dict()
    with pytest.raises(ValueError, match="7 training questions but this run has 8"):
        DataCursor(num_items=8, seed=0).load_state_dict(state)
    with pytest.raises(ValueError, match="requeue question index 9"):
        DataCursor(num_items=8, seed=0).requeue([9])
