"""The format reward (episode validity) and Search-R1's graded answer-and-format score."""

from __future__ import annotations

import pytest

from rewards import get_reward, graded_format_score
from rewards.config import RewardConfig

CALL = '<tool_call>{"name": "search", "arguments": {"query": "eiffel"}}</tool_call><|im_end|>'


@pytest.mark.parametrize(
    "correct, valid, correct_invalid, wrong_valid, expected",
    [
        (True, True, 0.8, 0.1, 1.0),
        (True, False, 0.8, 0.1, 0.8),
        (False, True, 0.8, 0.1, 0.1),
        (False, False, 0.8, 0.1, 0.0),
        (True, False, 0.5, 0.3, 0.5),
        (False, True, 0.5, 0.3, 0.3),
    ],
)
def test_graded_format_score(correct, valid, correct_invalid, wrong_valid, expected):
    assert graded_format_score(correct, valid, correct_invalid, wrong_valid) == expected


@pytest.mark.parametrize(
    "turns, protocol, format_value, em_format_value",
    [
        (
            ["<think>t</think><search>eiffel</search>", "<answer>Paris</answer>"],
            "tags",
            1.0,
            1.0,
        ),  # correct, valid
        (["So: <answer>Paris</answer>"], "tags", 0.0, 0.8),  # correct, invalid
        (["<answer>Lyon</answer>"], "tags", 1.0, 0.1),  # wrong, valid
        (["<answer>Lyon"], "tags", 0.0, 0.0),  # wrong (no complete answer), invalid
        (["<search>eiffel</search>"], "tags", 0.0, 0.0),  # truncated before answering
        ([CALL, "<answer>Paris</answer><|im_end|>"], "function_call", 1.0, 1.0),
        ([CALL, "<answer>Paris</answer><|im_end|>"], "tags", 0.0, 0.8),  # judged by the wrong grammar
    ],
)
def test_format_and_em_format_rewards(make_trajectory, turns, protocol, format_value, em_format_value):
    trajectory = make_trajectory(turns, protocol=protocol)
    config = RewardConfig(format_score_correct_invalid=0.8, format_score_wrong_valid=0.1)
    assert get_reward("format")(trajectory, config) == format_value
    assert get_reward("em_format")(trajectory, config) == em_format_value


def test_em_format_reads_the_config_scores(make_trajectory):
    config = RewardConfig(format_score_correct_invalid=0.6, format_score_wrong_valid=0.25)
    assert get_reward("em_format")(make_trajectory(["x <answer>Paris</answer>"]), config) == 0.6
    assert get_reward("em_format")(make_trajectory(["<answer>Lyon</answer>"]), config) == 0.25


def test_format_is_invalid_when_the_agent_loop_flagged_a_turn(make_trajectory):
    trajectory = make_trajectory(["<search>a</search>", "<answer>Paris</answer>"], invalid_turns={0})
    assert get_reward("format")(trajectory, RewardConfig()) == 0.0
