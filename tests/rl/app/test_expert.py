"""The scripted expert: which turns it writes, where the loss mask is, and token equality with the agent loop."""

from __future__ import annotations

import pytest

from data.types import Question
from data.config import RetrieverConfig
from rollouts.config import RolloutConfig, ToolsConfig
from rl.app.expert import ExpertError, expert_trajectory, write_expert_dataset
from rollouts.agent_loop import run_episodes
from rollouts.engine import GenerationOutput
from rollouts.protocols import build_protocol


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


class ScriptedEngine:
    """Emits the given turn texts, one per generate call (one trajectory at a time), like a model would."""

    def __init__(self, tokenizer, turn_texts: list[str]):
        self.tokenizer, self.turn_texts, self.version = tokenizer, list(turn_texts), 0

    def generate(self, batch_prompt_ids, max_new_tokens, stop_token_ids, temperature=1.0, top_p=1.0, seed=None,
                 stop_strings=()):
        assert len(batch_prompt_ids) == 1
        token_ids = self.tokenizer.encode(self.turn_texts.pop(0), add_special_tokens=False)[:max_new_tokens]
        assert token_ids[-1] in stop_token_ids  # the expert's turns end on the protocol's stop tokens
        return [GenerationOutput(token_ids, [0.0] * len(token_ids), "stop")]


def agent_loop_sequence(question, protocol, tokenizer, executor, turn_texts, rollout_config):
    engine = ScriptedEngine(tokenizer, turn_texts)
    (group,) = run_episodes(engine, protocol, executor, [question], group_size=1, rollout_config=rollout_config,
                            policy_version=0, greedy=True)
    (trajectory,) = group.trajectories
    assert not engine.turn_texts and trajectory.final_answer == question.answers[0]
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
