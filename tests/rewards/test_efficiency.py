"""Efficiency: correct answers in as few model calls as the structure needs; raw episode counts."""

from __future__ import annotations

import pytest

from rewards import get_reward
from rewards.efficiency import efficiency_score, episode_counts, needed_search_rounds
from rewards.parsing import parse_episode
from rewards.config import RewardConfig


@pytest.mark.parametrize(
    "structure, num_sub_questions, expected",
    [
        ("parallel", 3, 1),
        ("single", 0, 1),
        ("sequential", 3, 3),
        ("sequential", 1, 1),
        ("sequential", 0, None),  # a chain whose length the data does not say
    ],
)
def test_needed_search_rounds(structure, num_sub_questions, expected):
    assert needed_search_rounds(structure, num_sub_questions) == expected


@pytest.mark.parametrize(
    "model_calls, needed_rounds, expected",
    [
        (2, 1, 1.0),
        (3, 1, 2 / 3),
        (4, 1, 0.5),
        (1, 1, 1.0),
        (4, 3, 1.0),
        (5, 3, 0.8),
    ],
)
def test_efficiency_score(model_calls, needed_rounds, expected):
    assert efficiency_score(model_calls, needed_rounds) == pytest.approx(expected)


@pytest.mark.parametrize(
    "turns, structure, sub_questions, expected",
    [
        (["<search>a ## b</search>", "<answer>Paris</answer>"], "parallel", ["a", "b"], 1.0),
        (
            ["<search>a</search>", "<search>b</search>", "<answer>Paris</answer>"],
            "parallel",
            ["a", "b"],
            2 / 3,
        ),
        (["<search>a ## b</search>", "<answer>Lyon</answer>"], "parallel", ["a", "b"], 0.0),  # wrong: nothing
        (
            ["<search>a</search>", "<search>b</search>", "<answer>Paris</answer>"],
            "sequential",
            ["a", "b"],
            1.0,
        ),
        (["<search>a ## b</search>", "<answer>Paris</answer>"], "sequential", ["a", "b"], 1.0),  # capped at 1
        (["<search>a</search>"] * 4 + ["<answer>Paris</answer>"], "sequential", ["a", "b"], 3 / 5),
        (["<answer>Paris</answer>"], "single", [], 1.0),
        (["oops", "<search>a ## b</search>", "<answer>Paris</answer>"], "parallel", [], 2 / 3),  # wasted turn
        (["<search>a</search>"], "single", [], 0.0),  # no answer
    ],
)
def test_efficiency_reward(make_trajectory, turns, structure, sub_questions, expected):
    trajectory = make_trajectory(turns, structure=structure, sub_questions=sub_questions)
    assert get_reward("efficiency")(trajectory, RewardConfig()) == pytest.approx(expected)


def test_a_chain_of_unknown_length_is_not_penalised(make_trajectory):
    """A real-data multi-hop question without sub-questions: three hops then the answer is no worse than one."""
    from rewards import score_trajectory

    config = RewardConfig(weights={"exact_match": 1.0, "efficiency": 0.3})
    three_hops = make_trajectory(["<search>a</search>", "<search>b</search>", "<search>c</search>",
                                  "<answer>Paris</answer>"], structure="sequential")
    one_hop = make_trajectory(["<search>a</search>", "<answer>Paris</answer>"], structure="sequential")
    for trajectory in (three_hops, one_hop):
        assert get_reward("efficiency")(trajectory, config) is None
        breakdown = score_trajectory(trajectory, config)
        assert breakdown.components == {"exact_match": 1.0} and breakdown.total == 1.0
    known_two_hops = make_trajectory([turn.text for turn in three_hops.turns], structure="sequential",
                                     sub_questions=["a", "b"])
    assert get_reward("efficiency")(known_two_hops, config) == pytest.approx(3 / 4)  # needs 3 calls, made 4


def test_episode_counts():
    episode = parse_episode(["<search>a ## b ## c</search>", "<search>d</search>", "<answer>x</answer>"])
    assert episode_counts(episode) == {
        "model_calls": 3.0,
        "search_rounds": 2.0,
        "subqueries": 4.0,
        "subqueries_per_round": 2.0,
        "repeated_subqueries": 0.0,
        "format_valid": 1.0,
        "has_answer": 1.0,
    }
