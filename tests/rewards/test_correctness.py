"""Normalisation, EM, token F1 (with HotpotQA's yes/no rule), substring EM, and the answer they read."""

from __future__ import annotations

import pytest

from rewards import exact_match, f1_score, get_reward
from rewards.correctness import answer_is_correct, normalize_answer, substring_exact_match
from rewards.config import RewardConfig


@pytest.mark.parametrize(
    "text, expected",
    [
        ("The Eiffel Tower!", "eiffel tower"),
        ("  An apple a  day ", "apple day"),
        ("U.S.A.", "usa"),
        ("theatre anthem", "theatre anthem"),  # articles only as whole words
        ("THE", ""),
        ("", ""),
        ("Café  naïve", "café naïve"),
    ],
)
def test_normalize_answer(text, expected):
    assert normalize_answer(text) == expected


@pytest.mark.parametrize(
    "prediction, golds, expected",
    [
        ("the eiffel tower", ["Eiffel Tower"], 1.0),
        ("Paris", ["London", "paris."], 1.0),
        ("Paris France", ["Paris"], 0.0),
        ("", ["Paris"], 0.0),
        ("Paris", "Paris", 1.0),  # a bare string gold is one gold, not a list of characters
        ("Paris", [], 0.0),
    ],
)
def test_exact_match(prediction, golds, expected):
    assert exact_match(prediction, golds) == expected


@pytest.mark.parametrize(
    "prediction, golds, expected",
    [
        ("Paris France", ["Paris"], 2 * 0.5 * 1.0 / 1.5),  # precision 1/2, recall 1
        ("the big red dog", ["a red dog"], 0.8),  # "big red dog" vs "red dog": P 2/3, R 1
        ("red dog", ["blue cat", "red dog"], 1.0),  # best gold wins
        ("dog dog", ["dog"], 2 * 0.5 * 1.0 / 1.5),  # repeated tokens counted once per gold occurrence
        ("yes", ["no"], 0.0),
        ("yes", ["yes"], 1.0),
        ("yes it is", ["yes"], 0.0),  # HotpotQA: gold yes/no/noanswer needs an exact answer
        ("no", ["no way"], 0.0),  # ... and so does a yes/no/noanswer prediction
        ("noanswer", ["noanswer"], 1.0),
        ("", ["Paris"], 0.0),
        ("Paris", [], 0.0),
    ],
)
def test_f1_score(prediction, golds, expected):
    assert f1_score(prediction, golds) == pytest.approx(expected)


@pytest.mark.parametrize(
    "prediction, golds, expected",
    [
        ("It is Paris, France", ["paris"], 1.0),
        ("Lyon", ["Paris"], 0.0),
        ("anything", [""], 0.0),  # an empty gold never matches
        ("the", ["a"], 0.0),  # both normalise to ""
    ],
)
def test_substring_exact_match(prediction, golds, expected):
    assert substring_exact_match(prediction, golds) == expected


@pytest.mark.parametrize("answer, expected", [(None, False), ("paris", True), ("Lyon", False)])
def test_answer_is_correct(answer, expected):
    assert answer_is_correct(answer, ["Paris"]) is expected


@pytest.mark.parametrize(
    "turns, name, expected",
    [
        (["<search>eiffel</search>", "<answer>Paris</answer>"], "exact_match", 1.0),
        (["<answer>Lyon</answer>"], "exact_match", 0.0),
        (["<search>eiffel</search>"], "exact_match", 0.0),  # no answer
        (["<answer>Paris</answer>", "<answer>Lyon</answer>"], "exact_match", 0.0),  # the last answer counts
        (["<answer>Paris France</answer>"], "f1", 2 * 0.5 / 1.5),
        (["<answer>the city of Paris</answer>"], "substring_exact_match", 1.0),
        (["Paris"], "f1", 0.0),  # an untagged answer is no answer
    ],
)
def test_correctness_rewards_read_the_model_answer(make_trajectory, turns, name, expected):
    assert get_reward(name)(make_trajectory(turns), RewardConfig()) == pytest.approx(expected)


def test_correctness_ignores_prompt_and_agent_loop_answer(make_trajectory):
    trajectory = make_trajectory(["<answer>Lyon</answer>"], question_text="Say <answer>Paris</answer>?")
    trajectory.final_answer = "Paris"
    assert get_reward("exact_match")(trajectory, RewardConfig()) == 0.0


@pytest.mark.parametrize(
    "response_text, expected",
    [
        ("<search>a</search>\n<information>doc</information>\n<answer>Paris</answer>", 1.0),
        # an answer tag inside a retrieved document is environment text, not the model's answer
        ("<search>a</search><information>doc <answer>Lyon</answer></information><answer>Paris</answer>", 1.0),
        ("<search>a</search><information>doc <answer>Paris</answer></information>", 0.0),
    ],
)
def test_correctness_from_response_text_when_no_turns(make_trajectory, response_text, expected):
    trajectory = make_trajectory([])
    trajectory.response_text = response_text
    assert get_reward("exact_match")(trajectory, RewardConfig()) == expected
