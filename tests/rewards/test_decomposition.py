"""Decomposition: fan out for parallel questions, one query per round otherwise, every round judged."""

from __future__ import annotations

import pytest

from rewards import get_reward
from rewards.decomposition import gold_document_recall, round_shape_score
from rewards.config import RewardConfig


@pytest.mark.parametrize(
    "query_rounds, structure, expected",
    [
        ([["a", "b"]], "parallel", 1.0),
        ([["a"]], "parallel", 0.0),
        ([["a", "b"], ["c"]], "parallel", 0.5),  # a later one-query round counts against it
        ([["a", "b", "c"], ["d", "e"]], "parallel", 1.0),
        ([], "parallel", 0.0),
        ([["a"], ["b"]], "sequential", 1.0),
        ([["a", "b"]], "sequential", 0.0),  # dependent hops merged into one round
        ([["a"], ["b", "c"]], "sequential", 0.5),  # merging in a later round is penalised too
        ([["a"], ["b"], ["c", "d", "e"]], "sequential", 2 / 3),
        ([["a"]], "single", 1.0),
        ([["a", "b"]], "single", 0.0),
        ([], "single", 0.0),
        # a lookup written twice is no fan-out, in its round or a later one, whatever the case and spacing
        ([["when was A born?", "When was  A born?", "when was B born?"]], "parallel", 0.0),
        ([["a", "b"], ["c", "A"]], "parallel", 0.5),
        ([["a"], ["a"]], "sequential", 0.5),
        ([["a"], ["b"], ["a"]], "sequential", 2 / 3),
    ],
)
def test_round_shape_score(query_rounds, structure, expected):
    assert round_shape_score(query_rounds, structure) == pytest.approx(expected)


@pytest.mark.parametrize(
    "retrieved, supporting, expected",
    [
        (["d1", "d2", "d3"], ["d1", "d4"], 0.5),
        ([], ["d1"], 0.0),
        (["d1"], [], None),
        (["d1", "d1"], ["d1", "d1"], 1.0),
    ],
)
def test_gold_document_recall(retrieved, supporting, expected):
    assert gold_document_recall(retrieved, supporting) == expected


PARALLEL_ONE_ROUND = ["<search>age of A ## age of B</search>", "<answer>Paris</answer>"]


@pytest.mark.parametrize(
    "turns, structure, supporting, retrieved, gold_credit, expected",
    [
        (PARALLEL_ONE_ROUND, "parallel", ["d1", "d2"], {0: ["d1", "d3"]}, True, (1.0 + 0.5) / 2),
        (PARALLEL_ONE_ROUND, "parallel", ["d1", "d2"], {0: ["d1", "d3"]}, False, 1.0),
        (PARALLEL_ONE_ROUND, "parallel", [], {0: ["d1"]}, True, 1.0),  # no gold docs known: shape only
        (
            ["<search>a ## b</search>", "<search>c</search>", "<answer>x</answer>"],
            "sequential",
            [],
            {},
            False,
            0.5,
        ),
        (
            ["<search>a</search>", "<search>b</search>", "<answer>x</answer>"],
            "sequential",
            ["d1", "d2"],
            {0: ["d1"], 1: ["d2"]},
            True,
            1.0,
        ),
        (["<answer>x</answer>"], "parallel", ["d1"], {}, True, 0.0),  # never searched
        (["<search>a</search>", "<answer>x</answer>"], "single", [], {}, True, 1.0),
    ],
)
def test_decomposition_reward(
    make_trajectory, turns, structure, supporting, retrieved, gold_credit, expected
):
    trajectory = make_trajectory(
        turns, structure=structure, supporting_doc_ids=supporting, retrieved=retrieved
    )
    value = get_reward("decomposition")(trajectory, RewardConfig(gold_document_credit=gold_credit))
    assert value == pytest.approx(expected)
