"""The scripted expert: which turns it writes, where the loss mask is, and token equality with the agent loop."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from data.types import Question
from data.config import RetrieverConfig
from rollouts.config import RolloutConfig, ToolsConfig
from rl.app.expert import ExpertError, expert_trajectories, expert_trajectory, write_expert_dataset
from rollouts.agent_loop import run_episodes
from rollouts.protocols import build_protocol
from rollouts.scripted_engine import ScriptedEngine, TurnScripts


@pytest.fixture(scope="module")
def tokenizer(tiny_checkpoint):
    from rollouts.model_loading import load_tokenizer

    return load_tokenizer(tiny_checkpoint)


@pytest.fixture(scope="module")
def executor(tiny_world):
    from data.retriever import build_retriever
    from rollouts.tools import build_tools

    retriever = build_retriever(RetrieverConfig(), documents=tiny_world.documents)
    return build_tools(ToolsConfig(), RetrieverConfig(), retriever)


@pytest.fixture(scope="module")
def tags():
    return build_protocol("tags")


def first_question(world, structure: str, num_sub_questions: int) -> Question:
    return next(question for question in world.splits["train"]
                if question.structure == structure and len(question.sub_questions) == num_sub_questions)


def masked_segments(input_ids: list[int], completion_mask: list[int], wanted: int) -> list[list[int]]:
    """Maximal runs of tokens whose mask equals `wanted`, in order."""
    segments: list[list[int]] = []
    previous = None
    for token_id, bit in zip(input_ids, completion_mask):
        if bit == wanted:
            if previous != wanted:
                segments.append([])
            segments[-1].append(token_id)
        previous = bit
    return segments


def decode(tokenizer, token_ids: list[int]) -> str:
    return tokenizer.decode(token_ids, skip_special_tokens=False)


def test_mask_covers_exactly_the_model_turns_of_a_sequential_demonstration(tiny_world, tokenizer, executor, tags):
    question = first_question(tiny_world, "parallel", 2)
    input_ids, completion_mask = expert_trajectory(question, tags, tokenizer, executor, mode="sequential")

    assert len(input_ids) == len(completion_mask)
    model_turns = [decode(tokenizer, segment) for segment in masked_segments(input_ids, completion_mask, 1)]
    first, second = question.sub_questions
    assert model_turns == [f"<search> {first} </search>", f"<search> {second} </search>",
                           f"<answer> {question.answers[0]} </answer>"]
    prompt_ids = tags.render_prompt(question, tokenizer)
    injected = masked_segments(input_ids, completion_mask, 0)
    assert injected[0] == prompt_ids  # the prompt, then one observation after each search turn
    assert len(injected) == 3
    for observation_ids in injected[1:]:
        observation = decode(tokenizer, observation_ids)
        assert observation.startswith("\n<information>") and observation.endswith("</information>\n")
    # the observations are real retrieval results: each sub-question's gold document is in its observation
    titles = {document["id"]: document["contents"].split("\n", 1)[0] for document in tiny_world.documents}
    for doc_id, observation_ids in zip(question.supporting_doc_ids, injected[1:]):
        assert f"(Title: {titles[doc_id]})" in decode(tokenizer, observation_ids)


def test_fan_out_issues_every_sub_question_in_one_search_turn(tiny_world, tokenizer, executor, tags):
    question = first_question(tiny_world, "parallel", 3)
    input_ids, completion_mask = expert_trajectory(question, tags, tokenizer, executor, mode="parallel")

    model_turns = [decode(tokenizer, segment) for segment in masked_segments(input_ids, completion_mask, 1)]
    assert model_turns == [f"<search> {' ## '.join(question.sub_questions)} </search>",
                           f"<answer> {question.answers[0]} </answer>"]
    (observation_ids,) = masked_segments(input_ids, completion_mask, 0)[1:]
    observation = decode(tokenizer, observation_ids)
    assert observation.count("<information>") == 3  # one block per sub-query, in one round
    for sub_question in question.sub_questions:
        assert f"Query: {sub_question}" in observation


def test_bridge_question_searches_one_hop_per_turn_with_the_answer_it_read(tiny_world, tokenizer, executor, tags):
    question = first_question(tiny_world, "sequential", 2)
    first_hop_answer = question.metadata["hop_answers"][0]
    input_ids, completion_mask = expert_trajectory(question, tags, tokenizer, executor, mode="sequential")

    turns = [decode(tokenizer, segment) for segment in masked_segments(input_ids, completion_mask, 1)]
    observations = [decode(tokenizer, segment) for segment in masked_segments(input_ids, completion_mask, 0)[1:]]
    assert len(turns) == 3 and turns[-1] == f"<answer> {question.answers[0]} </answer>"
    assert first_hop_answer not in turns[0]
    assert first_hop_answer in observations[0]  # read in the first result ...
    assert first_hop_answer in turns[1]  # ... and used in the next query
    with pytest.raises(ExpertError, match="sequential"):
        expert_trajectory(question, tags, tokenizer, executor, mode="parallel")


def agent_loop_sequence(question, protocol, tokenizer, executor, turn_texts, rollout_config):
    """(input_ids, completion_mask) the agent loop records when a model writes `turn_texts`."""
    turns = [tokenizer.encode(text, add_special_tokens=False) for text in turn_texts]
    assert all(turn[-1] in protocol.stop_token_ids(tokenizer) for turn in turns)  # each ends as a model's would
    engine = ScriptedEngine(tokenizer, TurnScripts({tuple(protocol.render_prompt(question, tokenizer)): turns}))
    (group,) = run_episodes(engine, protocol, executor, [question], group_size=1, rollout_config=rollout_config,
                            policy_version=0, greedy=True)
    (trajectory,) = group.trajectories
    assert trajectory.model_calls == len(turns) and trajectory.final_answer == question.answers[0]
    return trajectory.prompt_ids + trajectory.response_ids, [0] * len(trajectory.prompt_ids) + trajectory.loss_mask


@pytest.mark.parametrize("structure,num_sub_questions,mode,max_turns", [
    ("parallel", 2, "parallel", 4),
    ("parallel", 2, "sequential", 4),
    ("parallel", 3, "sequential", 3),  # the last observation carries the forced-answer cue
    ("sequential", 2, "sequential", 2),
    ("single", 1, "sequential", 4),
])
def test_tokens_equal_what_the_agent_loop_records_for_the_same_turns(tiny_world, tokenizer, executor, tags, structure,
                                                                     num_sub_questions, mode, max_turns):
    question = first_question(tiny_world, structure, num_sub_questions)
    rollout_config = RolloutConfig(max_turns=max_turns)
    if mode == "parallel":
        turn_texts = [f"<search> {' ## '.join(question.sub_questions)} </search>"]
    else:
        turn_texts = [f"<search> {sub_question} </search>" for sub_question in question.sub_questions]
    turn_texts.append(f"<answer> {question.answers[0]} </answer>")

    expected = agent_loop_sequence(question, tags, tokenizer, executor, turn_texts, rollout_config)
    assert expert_trajectory(question, tags, tokenizer, executor, mode, rollout_config) == expected
    if len(turn_texts) - 1 == max_turns:
        assert "No searches left" in decode(tokenizer, expected[0])


def test_function_call_protocol_demonstration_equals_the_agent_loop(tiny_world, tokenizer, executor):
    protocol = build_protocol("function_call", tool_schemas=executor.tool_schemas())
    question = first_question(tiny_world, "parallel", 2)
    calls = "\n".join(f'<tool_call>{{"name": "search", "arguments": {{"query": "{sub_question}"}}}}</tool_call>'
                      for sub_question in question.sub_questions)
    turn_texts = [calls + "<|im_end|>", f"<answer> {question.answers[0]} </answer>"]

    rollout_config = RolloutConfig(max_new_tokens_per_turn=128)  # JSON calls are longer than tagged queries
    expected = agent_loop_sequence(question, protocol, tokenizer, executor, turn_texts, rollout_config)
    assert expert_trajectory(question, protocol, tokenizer, executor, "parallel", rollout_config) == expected


def test_demonstration_over_the_loop_limits_is_refused(tiny_world, tokenizer, executor, tags):
    question = first_question(tiny_world, "parallel", 3)
    with pytest.raises(ExpertError, match="does not fit"):
        expert_trajectory(question, tags, tokenizer, executor, "sequential", RolloutConfig(max_turns=2))
    with pytest.raises(ExpertError, match="does not fit"):
        expert_trajectory(question, tags, tokenizer, executor, "parallel", RolloutConfig(max_new_tokens_per_turn=8))


def test_a_question_in_both_modes_in_one_call_gets_both_demonstrations(tiny_world, tokenizer, executor, tags):
    question = first_question(tiny_world, "parallel", 2)
    both = expert_trajectories([question, question], ["parallel", "sequential"], tags, tokenizer, executor)
    alone = [expert_trajectories([question], [mode], tags, tokenizer, executor)[0]
             for mode in ("parallel", "sequential")]
    assert [trajectory.model_calls for trajectory in both] == [2, 3]
    assert [trajectory.response_ids for trajectory in both] == [trajectory.response_ids for trajectory in alone]


def test_dataset_is_a_seeded_mixture_with_fan_out_only_on_parallel_questions(tiny_world, tokenizer, executor, tags):
    questions = tiny_world.splits["train"][:40]
    num_parallel = sum(question.structure == "parallel" for question in questions)
    dataset = write_expert_dataset(questions, tags, tokenizer, executor, RolloutConfig(), num_trajectories=80,
                                   parallel_fraction=0.5, seed=3)

    assert len(dataset) == 80 and set(dataset.column_names) >= {"input_ids", "completion_mask"}
    assert sorted(dataset["question_id"]) == sorted([question.id for question in questions] * 2)  # two full passes
    rows = list(zip(dataset["structure"], dataset["mode"], dataset["model_calls"]))
    fanned_out = [calls for structure, mode, calls in rows if mode == "parallel"]
    assert all(structure == "parallel" for structure, mode, _ in rows if mode == "parallel")
    assert fanned_out and all(calls == 2 for calls in fanned_out)
    assert 0 < len(fanned_out) < 2 * num_parallel
    for input_ids, completion_mask in zip(dataset["input_ids"], dataset["completion_mask"]):
        assert len(input_ids) == len(completion_mask) and completion_mask[-1] == 1 and completion_mask[0] == 0
    again = write_expert_dataset(questions, tags, tokenizer, executor, RolloutConfig(), num_trajectories=80,
                                 parallel_fraction=0.5, seed=3)
    assert again["input_ids"] == dataset["input_ids"] and again["mode"] == dataset["mode"]


@pytest.mark.parametrize("parallel_fraction,expected_calls", [(0.0, None), (1.0, 2)])
def test_parallel_fraction_extremes(tiny_world, tokenizer, executor, tags, parallel_fraction, expected_calls):
    questions = [question for question in tiny_world.splits["train"] if question.structure == "parallel"][:10]
    dataset = write_expert_dataset(questions, tags, tokenizer, executor, RolloutConfig(),
                                   parallel_fraction=parallel_fraction, seed=0)
    by_id = {question.id: question for question in questions}
    for question_id, calls in zip(dataset["question_id"], dataset["model_calls"]):
        assert calls == (expected_calls or len(by_id[question_id].sub_questions) + 1)


def test_forced_answer_fraction_ends_a_share_of_demonstrations_on_the_cue(tiny_world, tokenizer, executor, tags):
    """Forced demonstrations run out of searches exactly at their last round: the cue closes the last observation,
    the model turns are those of the same demonstration without it, and the questions and modes do not change."""
    questions = tiny_world.splits["train"][:40]
    rollout_config = RolloutConfig(max_turns=4)
    plain = write_expert_dataset(questions, tags, tokenizer, executor, rollout_config, num_trajectories=60,
                                 parallel_fraction=0.5, seed=3)
    forced = write_expert_dataset(questions, tags, tokenizer, executor, rollout_config, num_trajectories=60,
                                  parallel_fraction=0.5, seed=3, forced_answer_fraction=0.5)

    assert plain["question_id"] == forced["question_id"] and plain["mode"] == forced["mode"]
    assert plain["model_calls"] == forced["model_calls"]
    assert not any(plain["forced_answer"]) and 10 < sum(forced["forced_answer"]) < 50
    cue = "No searches left"
    for row in range(len(forced)):
        text = decode(tokenizer, forced["input_ids"][row])
        plain_text = decode(tokenizer, plain["input_ids"][row])
        turns = masked_segments(forced["input_ids"][row], forced["completion_mask"][row], 1)
        assert turns == masked_segments(plain["input_ids"][row], plain["completion_mask"][row], 1)
        searches = forced["model_calls"][row] - 1
        # without the fraction, only a demonstration that uses all 4 rounds meets the cue
        assert (cue in plain_text) == (searches == 4)
        if forced["forced_answer"][row]:
            observations = masked_segments(forced["input_ids"][row], forced["completion_mask"][row], 0)
            assert text.count(cue) == 1 and cue in decode(tokenizer, observations[-1])
        else:
            assert text == plain_text


def test_forced_answer_fraction_outside_0_1_is_refused(tiny_world, tokenizer, executor, tags):
    with pytest.raises(ValueError, match="sft.forced_answer_fraction"):
        write_expert_dataset(tiny_world.splits["train"][:4], tags, tokenizer, executor, RolloutConfig(),
                             forced_answer_fraction=1.5)


# ------------------------------------------------------------------ golden demonstrations
# fixtures/expert_golden.json was recorded from the expert's own copy of the loop's rounds (rl/app/expert.py at
# e96bcaa, before it played through rollouts.agent_loop on the scripted engine), so this test holds the expert
# to it token for token. Re-record only when the tiny world or tokenizer changes on purpose.

GOLDEN_PATH = Path(__file__).parent / "fixtures" / "expert_golden.json"
UPDATE_GOLDEN = "FANOUT_UPDATE_EXPERT_GOLDEN"  # =1 rewrites the fixture from the current code
# One batched expert_trajectories call per entry: (protocol, rollout overrides, [(structure, sub-questions, mode)]).
GOLDEN_CALLS = [
    ("tags", {}, [("parallel", 2, "parallel"), ("parallel", 2, "sequential"), ("parallel", 3, "parallel"),
                  ("parallel", 4, "sequential"),  # 4 search rounds = max_turns: the last observation has the cue
                  ("sequential", 2, "sequential"), ("sequential", 3, "sequential"), ("single", 1, "parallel"),
                  ("single", 1, "sequential")]),
    ("tags", {"max_turns": 2}, [("parallel", 3, "sequential"),  # dropped: 3 search rounds > max_turns
                                ("sequential", 2, "sequential"), ("parallel", 3, "parallel")]),
    ("tags", {"max_new_tokens_per_turn": 10}, [("parallel", 2, "parallel"),  # dropped: the fan-out turn is longer
                                               ("parallel", 2, "sequential"), ("sequential", 2, "sequential")]),
    ("tags", {"max_context_tokens": 400}, [("parallel", 3, "parallel"),  # dropped: the observation overflows
                                           ("parallel", 2, "sequential"), ("single", 1, "sequential")]),
    ("tags", {"max_context_tokens": 351}, [("parallel", 2, "sequential")]),  # dropped: no room for the answer turn
    ("tags", {"max_context_tokens": 352}, [("parallel", 2, "sequential")]),  # the answer turn fills the context
    ("tags", {"max_observation_tokens": 24}, [("parallel", 3, "parallel"), ("sequential", 2, "sequential")]),
    ("function_call", {"max_new_tokens_per_turn": 128}, [("parallel", 2, "parallel"),
                                                         ("sequential", 2, "sequential")]),
]


def vocabulary_fingerprint(tokenizer) -> str:
    return hashlib.sha256(json.dumps(tokenizer.get_vocab(), sort_keys=True).encode()).hexdigest()


def demonstration_record(trajectory) -> dict | None:
    """The token-level content of one demonstration (None: dropped), in a compact JSON form."""
    if trajectory is None:
        return None
    return {"prompt_ids": list(trajectory.prompt_ids), "response_ids": list(trajectory.response_ids),
            "loss_mask": "".join(str(bit) for bit in trajectory.loss_mask), "final_answer": trajectory.final_answer}


def golden_demonstrations(world, tokenizer, executor) -> dict:
    """Every GOLDEN_CALLS entry played by expert_trajectories, keyed by a readable case name."""
    cases = {}
    for protocol_name, overrides, specs in GOLDEN_CALLS:
        tool_schemas = executor.tool_schemas() if protocol_name == "function_call" else None
        protocol = build_protocol(protocol_name, tool_schemas=tool_schemas)
        questions = [first_question(world, structure, count) for structure, count, _ in specs]
        modes = [mode for _, _, mode in specs]
        trajectories = expert_trajectories(questions, modes, protocol, tokenizer, executor, RolloutConfig(**overrides))
        setting = ",".join(f"{key}={value}" for key, value in overrides.items()) or "defaults"
        for (structure, count, mode), question, trajectory in zip(specs, questions, trajectories):
            name = f"{protocol_name} {setting}: {structure}-{count} {mode} ({question.id})"
            cases[name] = demonstration_record(trajectory)
    return cases


def write_golden(cases: dict, fingerprint: str) -> None:
    """The fixture, one case per line (readable diffs)."""
    lines = [f"{json.dumps(name)}: {json.dumps(record, separators=(',', ':'))}" for name, record in cases.items()]
    GOLDEN_PATH.parent.mkdir(parents=True, exist_ok=True)
    GOLDEN_PATH.write_text(f'{{"vocabulary_sha256": "{fingerprint}",\n"cases": {{\n' + ",\n".join(lines) + "\n}}\n")


def test_demonstrations_equal_the_golden_ones_recorded_before_the_expert_played_through_the_loop(
        tiny_world, tokenizer, executor):
    cases = golden_demonstrations(tiny_world, tokenizer, executor)
    if os.environ.get(UPDATE_GOLDEN) == "1":
        write_golden(cases, vocabulary_fingerprint(tokenizer))
    golden = json.loads(GOLDEN_PATH.read_text())
    assert golden["vocabulary_sha256"] == vocabulary_fingerprint(tokenizer), (
        f"the tiny test tokenizer changed since {GOLDEN_PATH.name} was recorded: its token ids no longer apply; "
        f"check the demonstrations by other means, then re-record with {UPDATE_GOLDEN}=1")
    assert sorted(cases) == sorted(golden["cases"])
    assert sum(record is None for record in cases.values()) == 4  # the limits of the drops marked above
    for name, record in cases.items():
        assert record == golden["cases"][name], name


def test_demonstrations_on_a_stock_tokenizer_are_rendered_in_its_chat_template(tiny_world, executor, qwen2_checkpoint,
                                                                             qwen25_chat_template):
    """With Qwen2.5's template: tools listed by the template, native tool calls, results as tool messages."""
    from rollouts.model_loading import load_tokenizer
    from rollouts.protocols import FUNCTION_CALL_TOOLS_INSTRUCTION

    stock = load_tokenizer(qwen2_checkpoint)
    stock.chat_template = qwen25_chat_template
    protocol = build_protocol("function_call", prompt_style="full", tool_schemas=executor.tool_schemas())
    question = first_question(tiny_world, "parallel", 2)
    rollout_config = RolloutConfig(max_new_tokens_per_turn=128, max_context_tokens=2048)
    input_ids, completion_mask = expert_trajectory(question, protocol, stock, executor, "parallel", rollout_config)

    calls = "\n".join('<tool_call>\n{"name": "search", "arguments": {"query": "%s"}}\n</tool_call>' % sub_question
                      for sub_question in question.sub_questions)
    assert [decode(stock, segment) for segment in masked_segments(input_ids, completion_mask, 1)] == [
        calls + "<|im_end|>", f"<answer> {question.answers[0]} </answer>"]
    prompt, observation = [decode(stock, segment) for segment in masked_segments(input_ids, completion_mask, 0)]
    assert prompt.startswith(f"<|im_start|>system\n{FUNCTION_CALL_TOOLS_INSTRUCTION}\n\n# Tools\n")
    assert prompt.endswith(f"<|im_start|>user\n{question.question}<|im_end|>\n<|im_start|>assistant\n")
    assert observation.startswith("\n<|im_start|>user\n<tool_response>\n") and observation.count("<tool_response>") == 2
    assert observation.endswith("</tool_response><|im_end|>\n<|im_start|>assistant\n")
    from rewards import parse_trajectory

    (trajectory,) = expert_trajectories([question], ["parallel"], protocol, stock, executor, rollout_config)
    episode = parse_trajectory(trajectory)  # the format reward reads the native spelling as well formed
    assert episode.valid and episode.queries_per_round == [2]
