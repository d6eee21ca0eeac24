"""Both directions of the TRL adapter, called with TRL-shaped arguments (no trainer is built)."""

from __future__ import annotations

import json
import pickle

import pytest

from rewards import from_trl, score_trajectory, to_trl
from rewards.registry import REWARDS
from rewards.trl_adapter import question_columns
from rewards.config import RewardConfig

# What GRPOTrainer._calculate_rewards passes besides prompts, completions and the dataset columns.
TRL_EXTRAS = {"trainer_state": None, "log_extra": lambda *a, **k: None, "log_metric": lambda *a, **k: None}


def contains_gold(prompts, completions, golden_answers, **kwargs):
    """A typical TRL reward function: 1.0 when a gold answer occurs in the completion."""
    return [
        float(any(gold.lower() in completion.lower() for gold in golds))
        for completion, golds in zip(completions, golden_answers)
    ]


# --------------------------------------------------------------------------------------------- TRL -> ours


def test_from_trl_passes_trl_shaped_arguments(make_trajectory):
    received = {}

    def spy(prompts, completions, **columns):
        received.update(prompts=prompts, completions=completions, **columns)
        return [0.25]

    trajectory = make_trajectory(
        ["<search>a</search>", "<answer>Paris</answer>"], structure="parallel", sub_questions=["a", "b"]
    )
    trajectory.response_text = "<search>a</search><information>d</information><answer>Paris</answer>"
    assert from_trl(spy)(trajectory, RewardConfig()) == 0.25
    assert received["prompts"] == ["Where is the Eiffel Tower?"]
    assert received["completions"] == [trajectory.response_text]
    assert received["golden_answers"] == [["Paris"]] and received["answers"] == [["Paris"]]
    assert (received["structure"], received["sub_questions"]) == (["parallel"], [["a", "b"]])
    assert received["completion_ids"] == [[]] and "trainer_state" in received


def test_from_trl_completion_falls_back_to_turn_texts(make_trajectory):
    wrapped = from_trl(contains_gold)
    assert wrapped(make_trajectory(["<search>a</search>", "<answer>Paris</answer>"]), RewardConfig()) == 1.0
    assert wrapped(make_trajectory(["<answer>Lyon</answer>"]), RewardConfig()) == 0.0
    assert wrapped.__name__ == "contains_gold"


def test_from_trl_function_registered_and_weighted(make_trajectory, monkeypatch):
    monkeypatch.setitem(REWARDS, "contains_gold", from_trl(contains_gold))
    monkeypatch.setitem(REWARDS, "never", from_trl(lambda prompts, completions, **k: [None]))
    config = RewardConfig(weights={"exact_match": 1.0, "contains_gold": 0.5, "never": 1.0})
    breakdown = score_trajectory(make_trajectory(["x <answer>Paris</answer>"]), config)
    assert breakdown.components == {"exact_match": 1.0, "contains_gold": 1.0}  # None: not applicable
    assert breakdown.total == 1.5


def test_from_trl_wrong_output_length_is_a_flagged_error(make_trajectory, monkeypatch):
    monkeypatch.setitem(
        REWARDS, "two_values", from_trl(lambda prompts, completions, **k: [1.0, 1.0])
    )
    breakdown = score_trajectory(
        make_trajectory(["<answer>Paris</answer>"]), RewardConfig(weights={"two_values": 1.0})
    )
    assert (breakdown.total, breakdown.errors) == (0.0, ["two_values"])


def test_question_columns_include_metadata_without_overriding_fields(make_trajectory):
    question = make_trajectory([]).question
    question.metadata.update({"level": "hard", "structure": "ignored"})
    columns = question_columns(question)
    assert columns["level"] == ["hard"] and columns["structure"] == ["single"]


# --------------------------------------------------------------------------------------------- ours -> TRL


def test_to_trl_text_completions():
    reward = to_trl("exact_match", RewardConfig())
    values = reward(
        prompts=["Q1", "Q2", "Q3"],
        completions=["<answer>Paris</answer>", "<answer>Lyon</answer>", "no tags at all"],
        completion_ids=[[], [], []],
        golden_answers=[["Paris"], ["Paris"], ["Paris"]],
        structure=["single"] * 3,
        **TRL_EXTRAS,
    )
    assert values == [1.0, 0.0, 0.0]


def test_to_trl_total_with_the_parallelsearch_preset():
    completion = (
        "<think>two facts</think><search>age of A ## age of B</search>\n"
        "<information>A: 1950</information>\n<information>B: 1960</information>\n<answer>A</answer>"
    )
    reward = to_trl("total", RewardConfig(preset="parallelsearch"))
    values = reward(
        prompts=["Who is older, A or B?"],
        completions=[completion],
        golden_answers=[["A"]],
        structure=["parallel"],
        sub_questions=[["age of A", "age of B"]],
        **TRL_EXTRAS,
    )
    assert values == [pytest.approx(1.8)]


def test_to_trl_chat_completions():
    completion = [
        {"role": "assistant", "content": "<search>age of A ## age of B</search>"},
        {"role": "user", "content": "<information>A: 1950</information>"},
        {"role": "assistant", "content": [{"type": "text", "text": "<answer>A</answer>"}]},
    ]
    prompt = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "Who is older, A or B?"}]
    columns = {"golden_answers": [["A"]], "structure": ["parallel"], **TRL_EXTRAS}
    config = RewardConfig(gold_document_credit=False)
    assert to_trl("format", config)(prompts=[prompt], completions=[completion], **columns) == [1.0]
    assert to_trl("efficiency", config)(prompts=[prompt], completions=[completion], **columns) == [1.0]
    assert to_trl("decomposition", config)(prompts=[prompt], completions=[completion], **columns) == [1.0]


def test_to_trl_structured_tool_calls_under_function_call_protocol():
    def call(query):
        return {"type": "function", "function": {"name": "search", "arguments": json.dumps({"query": query})}}

    completion = [
        {"role": "assistant", "content": "", "tool_calls": [call("age of A"), call("age of B")]},
        {"role": "tool", "content": "A: 1950"},
        {"role": "tool", "content": "B: 1960"},
        {"role": "assistant", "content": "<answer>A</answer>"},
    ]
    columns = {"golden_answers": [["A"]], "structure": ["parallel"], **TRL_EXTRAS}
    config = RewardConfig(gold_document_credit=False)
    for name in ("format", "decomposition", "exact_match"):
        assert to_trl(name, config, protocol="function_call")(
            prompts=["Q"], completions=[completion], **columns
        ) == [1.0]


def test_to_trl_answer_columns_and_our_signature_functions():
    def answered(trajectory, config):
        return float(trajectory.turns[-1].text.startswith("<answer>"))

    reward = to_trl(answered, RewardConfig())
    assert reward.__name__ == "answered"
    assert reward(prompts=["Q"], completions=["<answer>x</answer>"], answer=["x"], **TRL_EXTRAS) == [1.0]
    assert to_trl("exact_match", RewardConfig())(
        prompts=["Q"], completions=["<answer>x</answer>"], answer=["x"]
    ) == [1.0]


def test_to_trl_name_picklable_and_accepted_by_trl():
    trainer_utils = pytest.importorskip("trl.trainer.utils")
    reward = to_trl("exact_match", RewardConfig())
    assert reward.__name__ == "exact_match"
    assert trainer_utils.get_callable_name(reward) == "exact_match"
    assert not trainer_utils.is_async_callable(reward)
    restored = pickle.loads(pickle.dumps(reward))
    assert restored(prompts=["Q"], completions=["<answer>Paris</answer>"], golden_answers=[["Paris"]]) == [
        1.0
    ]


@pytest.mark.parametrize(
    "reward, columns, error, match",
    [
        ("exact_match", {"structure": ["single"]}, ValueError, "golden_answers"),
        (
            "exact_match",
            {"golden_answers": [["x"]], "structure": ["diagonal"]},
            ValueError,
            "structure 'diagonal'",
        ),
    ],
)
def test_to_trl_bad_dataset_columns_say_what_to_fix(reward, columns, error, match):
    with pytest.raises(error, match=match):
        to_trl(reward, RewardConfig())(prompts=["Q"], completions=["<answer>x</answer>"], **columns)


def test_to_trl_unknown_names_fail_at_construction():
    with pytest.raises(KeyError, match="registered"):
        to_trl("exact_mach", RewardConfig())
    with pytest.raises(KeyError, match="agent protocol"):
        to_trl("format", RewardConfig(), protocol="xml")
