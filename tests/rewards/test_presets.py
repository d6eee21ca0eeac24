"""Presets reproduce the published scores: ParallelSearch's released reward and Search-R1's graded EM."""

from __future__ import annotations

import pytest

from rewards import resolve_preset, score_trajectory
from rewards.presets import parallelsearch_decomposition_term, parallelsearch_search_count_term
from rewards.config import RewardConfig


@pytest.mark.parametrize(
    "structure, queries_per_round, expected",
    [
        ("parallel", [2], 3.0),
        ("parallel", [1], 0.0),
        ("parallel", [], 0.0),
        ("parallel", [1, 2], 3.0),  # a fan-out in any round
        ("sequential", [1, 1], 1.0),
        ("sequential", [2], 0.0),
        ("single", [], 1.0),
        ("single", [1, 3], 0.0),
    ],
)
def test_parallelsearch_decomposition_term(structure, queries_per_round, expected):
    assert parallelsearch_decomposition_term(structure, queries_per_round) == expected


@pytest.mark.parametrize(
    "structure, search_rounds, expected",
    [
        ("parallel", 1, 1.0),
        ("parallel", 0, 0.0),
        ("parallel", 2, 0.0),
        ("parallel", 4, -2.0),
        ("single", 1, 1.0),
        ("single", 3, -1.0),
        ("sequential", 0, -1.0),
        ("sequential", 1, 0.0),
        ("sequential", 2, 1.0),
        ("sequential", 5, 1.0),
    ],
)
def test_parallelsearch_search_count_term(structure, search_rounds, expected):
    assert parallelsearch_search_count_term(structure, search_rounds) == expected


FAN_OUT = "<think>two independent facts</think><search>age of A ## age of B</search>"
ANSWER = "<answer>Paris</answer>"


@pytest.mark.parametrize(
    "case, turns, structure, expected",
    [
        # em_format + 0.15 * decomposition term + 0.35 * search-count term
        (
            "parallel, correct, one decomposed round (the max)",
            [FAN_OUT, ANSWER],
            "parallel",
            1.0 + 0.45 + 0.35,
        ),
        (
            "parallel, correct, two single-query rounds",
            ["<search>a</search>", "<search>b</search>", ANSWER],
            "parallel",
            1.0 + 0.0 + 0.0,
        ),
        (
            "parallel, wrong, valid, one decomposed round",
            [FAN_OUT, "<answer>Lyon</answer>"],
            "parallel",
            0.1 + 0.45 + 0.35,
        ),
        (
            "parallel, correct, invalid, one decomposed round",
            [FAN_OUT + " stray", ANSWER],
            "parallel",
            0.9 + 0.45 + 0.35,
        ),
        (
            "bridge, correct, two rounds",
            ["<search>director of X</search>", "<search>birthplace of Y</search>", ANSWER],
            "sequential",
            1.0 + 0.15 + 0.35,
        ),
        (
            "bridge, correct, three rounds",
            ["<search>a</search>"] * 3 + [ANSWER],
            "sequential",
            1.0 + 0.15 + 0.35,
        ),
        ("bridge, correct, one round", ["<search>a</search>", ANSWER], "sequential", 1.0 + 0.15 + 0.0),
        ("bridge, correct, merged round", ["<search>a ## b</search>", ANSWER], "sequential", 1.0 + 0.0 + 0.0),
        (
            "bridge, wrong, valid, two rounds",
            ["<search>a</search>", "<search>b</search>", "<answer>Lyon</answer>"],
            "sequential",
            0.1 + 0.15 + 0.35,
        ),
        ("single, correct, one round", ["<search>a</search>", ANSWER], "single", 1.0 + 0.15 + 0.35),
        ("malformed, parallel", ["I think it is Paris"], "parallel", 0.0 + 0.0 + 0.0),
        ("malformed, bridge", ["I think it is Paris"], "sequential", 0.0 + 0.15 - 0.35),
        ("malformed, single", ["I think it is Paris"], "single", 0.0 + 0.15 + 0.0),
        ("parallel, four rounds", ["<search>a</search>"] * 4 + [ANSWER], "parallel", 1.0 + 0.0 - 0.70),
    ],
)
def test_parallelsearch_preset_totals(make_trajectory, case, turns, structure, expected):
    trajectory = make_trajectory(turns, structure=structure, sub_questions=["a", "b"])
    assert score_trajectory(trajectory, RewardConfig(preset="parallelsearch")).total == pytest.approx(
        expected
    ), case


def test_parallelsearch_components_and_override_of_user_weights(make_trajectory):
    config = RewardConfig(preset="parallelsearch", weights={"exact_match": 5.0})
    breakdown = score_trajectory(make_trajectory([FAN_OUT, ANSWER], structure="parallel"), config)
    assert breakdown.components == {
        "em_format": 1.0,
        "parallelsearch_decomposition": 3.0,
        "parallelsearch_search_count": 1.0,
    }
    assert breakdown.weights == {
        "em_format": 1.0,
        "parallelsearch_decomposition": 0.15,
        "parallelsearch_search_count": 0.35,
    }
    assert breakdown.total == pytest.approx(1.8)


@pytest.mark.parametrize(
    "turns, expected",
    [
        (["<search>a</search>", ANSWER], 1.0),  # correct, valid
        (["so <answer>Paris</answer>"], 0.8),  # correct, invalid
        (["<answer>Lyon</answer>"], 0.2),  # wrong, valid
        (["Lyon"], 0.0),  # wrong, invalid
    ],
)
def test_searchr1_preset(make_trajectory, turns, expected):
    breakdown = score_trajectory(make_trajectory(turns), RewardConfig(preset="searchr1"))
    assert list(breakdown.components) == ["em_format"]
    assert breakdown.total == pytest.approx(expected)


def test_resolve_preset():
    plain = RewardConfig()
    assert resolve_preset(plain) is plain
    resolved = resolve_preset(RewardConfig(preset="searchr1", gold_document_credit=False))
    assert resolved.weights == {"em_format": 1.0}
    assert (resolved.format_score_correct_invalid, resolved.format_score_wrong_valid) == (0.8, 0.2)
    assert resolved.gold_document_credit is False  # fields a preset does not set are kept
    with pytest.raises(KeyError, match="parallelsearch, searchr1"):
        resolve_preset(RewardConfig(preset="nope"))
