"""Fuzz: 10,000+ random and malformed responses through the parser, every reward and every preset.

Seeded generator (reproducible), mixing tag soup, unbalanced and nested tags, unicode, control
characters, broken JSON, empty turns, a few huge turns, well-formed episodes, and response-text-only
trajectories. The contract: nothing raises, no component fails or goes non-finite, totals are finite.
"""

from __future__ import annotations

import math
import random

from data.types import STRUCTURES
from rewards import get_reward, registered_reward_names, score_trajectory, to_trl
from rewards.parsing import parse_trajectory
from rewards.config import RewardConfig

NUM_RESPONSES = 10_000
PIECES = [
    "<think>",
    "</think>",
    "<search>",
    "</search>",
    "<answer>",
    "</answer>",
    "<information>",
    "</information>",
    "<tool_call>",
    "</tool_call>",
    "<tool_response>",
    "</tool_response>",
    "<|im_end|>",
    "<|im_start|>user",
    "<|im_start|>assistant",
    "<|endoftext|>",
    "##",
    " ## ",
    "Paris",
    "paris.",
    "the",
    " ",
    "\n",
    "\t",
    "<",
    ">",
    "/",
    "<search",
    "answer>",
    "</",
    '{"name": "search", "arguments": {"query": "a"}}',
    '{"name": "search"',
    "{",
    "}",
    '"arguments": "{\\"query\\": 1}"',
    "[",
    "]",
    "null",
    "é",
    "漢字",
    "🙂",
    "\u200b",
    "\x00",
    "\ufffd",
    "\\",
    '"',
    "yes",
    "no",
    "noanswer",
]
VALID_TAG_TURNS = ["<think>t</think><search>a ## b</search>", "<search>c</search>", "<answer>Paris</answer>"]
VALID_CALL = '<tool_call>{"name": "search", "arguments": {"query": "a"}}</tool_call>'
CONFIGS = [
    RewardConfig(),
    RewardConfig(preset="searchr1"),
    RewardConfig(preset="parallelsearch"),
    RewardConfig(weights={name: 1.0 for name in registered_reward_names()}, gold_document_credit=True),
]


def random_turn(rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.15:
        return rng.choice(VALID_TAG_TURNS + [VALID_CALL, VALID_CALL + "\n" + VALID_CALL])
    if roll < 0.20:
        return ""
    if roll < 0.2005:  # a handful of huge turns
        return rng.choice(PIECES) * rng.randint(50_000, 200_000)
    if roll < 0.25:
        return (
            "".join(chr(rng.randint(0, 0x10FFFF)) for _ in range(rng.randint(1, 40)))
            .encode("utf-8", "replace")
            .decode("utf-8", "replace")
        )
    return "".join(rng.choice(PIECES) for _ in range(rng.randint(1, 40)))


def random_trajectory(rng: random.Random, build_trajectory):
    turns = [random_turn(rng) for _ in range(rng.randint(0, 5))]
    retrieved = {
        index: [f"d{rng.randint(0, 5)}" for _ in range(rng.randint(0, 3))] for index in range(len(turns))
    }
    trajectory = build_trajectory(
        turns,
        answers=rng.choice([["Paris"], ["yes"], ["Paris", "the city"]]),
        structure=rng.choice(STRUCTURES),
        sub_questions=["a", "b", "c"][: rng.randint(0, 3)],
        supporting_doc_ids=[f"d{i}" for i in range(rng.randint(0, 3))],
        retrieved=retrieved,
        protocol=rng.choice(["tags", "function_call"]),
        invalid_turns={index for index in range(len(turns)) if rng.random() < 0.05},
    )
    if rng.random() < 0.3:  # response text only: the turns are recovered by splitting at observations
        trajectory.response_text = "<information>obs</information>".join(turns)
        trajectory.turns = []
    return trajectory


def test_fuzz_parser_rewards_and_presets_never_raise_and_stay_finite(make_trajectory):
    rng = random.Random(1234)
    reward_functions = [get_reward(name) for name in registered_reward_names()]
    for _ in range(NUM_RESPONSES):
        trajectory = random_trajectory(rng, make_trajectory)
        episode = parse_trajectory(trajectory)
        assert episode.valid in (True, False) and episode.search_rounds <= episode.model_calls
        for reward_function in reward_functions:
            value = reward_function(trajectory, CONFIGS[0])
            assert value is None or math.isfinite(value)
        for config in CONFIGS:
            breakdown = score_trajectory(trajectory, config)
            assert math.isfinite(breakdown.total), breakdown
            assert (breakdown.errors, breakdown.nonfinite) == ([], []), breakdown
            assert all(math.isfinite(value) for value in breakdown.to_metrics().values())


def test_fuzz_trl_adapter_on_random_completions():
    rng = random.Random(99)
    reward = to_trl("total", RewardConfig(preset="parallelsearch"))
    completions = ["".join(rng.choice(PIECES) for _ in range(rng.randint(0, 30))) for _ in range(500)]
    chats = [
        [{"role": rng.choice(["assistant", "user", "tool"]), "content": text}] for text in completions[:100]
    ]
    for batch in (completions, chats):
        values = reward(
            prompts=["Q"] * len(batch),
            completions=batch,
            golden_answers=[["Paris"]] * len(batch),
            structure=["parallel"] * len(batch),
        )
        assert len(values) == len(batch) and all(math.isfinite(value) for value in values)
