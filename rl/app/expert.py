"""Scripted expert: demonstration trajectories for the SFT warm-start, tokenised exactly as rollouts are.

The expert knows each question's gold sub-questions and writes the turns a good agent would write:

- mode "parallel" (fan-out, parallel questions only): ONE search turn with every sub-question
  (`<search> q1 ## q2 </search>`), then the answer: 2 model calls.
- mode "sequential": one sub-question per search turn, then the answer: n + 1 model calls. Sequential
  (bridge) questions always use it; their later gold sub-questions already contain the earlier hops'
  answers, i.e. the query the agent writes after reading the previous result.
- single questions: one search, then the answer (both modes are the same).

The answer is the first gold answer. By default turns carry no <think> block: the tiny model's per-turn
budget is small, and reasoning text the expert would have to invent teaches nothing the search results
don't. With `think="compare"` (`sft.expert_think`) the answer turn of a parallel question first writes
the fetched years and the comparison out, and `think="notes"` also notes each year in the search turn
that follows its passage (rl/app/expert_thoughts.py).

Observations come from the real tools (the retriever behind the tool executor), so the model learns to
read real BM25 results. The demonstration is played through the agent loop itself: a `ScriptedEngine`
(rollouts/scripted_engine.py) writes the expert's turns (`protocol.action_token_ids`: the turn's text
tokenised on its own, tool calls in the model's native format) where a model would sample, and `rollouts.agent_loop.run_episodes` does the rest
(prompt, tool rounds, observations cut to `rollout.max_observation_tokens`, the forced-answer cue). So the
sequence is, by construction, what the loop records when a model generates the expert's turns.

What it simplifies on purpose: the expert never errs, so the data shows no recovery from a bad search;
a demonstration that would not fit the loop's limits (context, per-turn token budget, turn count) is
dropped and counted, never truncated: the loop plays it, and a played trajectory that was truncated,
whose model turns are not the scripted ones, or that does not end on the scripted answer is dropped.

    dataset = write_expert_dataset(world.splits["train"], protocol, tokenizer, executor, config.rollout,
                                   num_trajectories=4000, parallel_fraction=0.3, seed=0)
"""

from __future__ import annotations

import dataclasses
import logging
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from datasets import Dataset

from data.mixture import repeated_passes
from data.trajectory import Trajectory
from data.types import Question
from rl.app.expert_thoughts import EXPERT_THINK_STYLES, answer_thought, round_thoughts
from rollouts.agent_loop import run_episodes
from rollouts.config import RolloutConfig
from rollouts.protocols import Action, AgentProtocol, search_calls
from rollouts.scripted_engine import ScriptedEngine, TurnScripts

logger = logging.getLogger(__name__)

EXPERT_MODES = ("parallel", "sequential")
FORCED_ANSWER_COLUMN = "forced_answer"  # dataset column: the demonstration ends on the forced-answer cue
# the columns of the expert dataset (write_expert_dataset) and of its comparison drills
EXPERT_COLUMNS = ("input_ids", "completion_mask", "question_id", "structure", "mode", "model_calls",
                  FORCED_ANSWER_COLUMN)


class ExpertError(ValueError):
    """A question the expert cannot demonstrate in the asked mode."""


@dataclass
class ExpertPlan:
    """The model turns the expert writes for one question: search rounds (queries each), then the answer."""

    search_rounds: list[list[str]]
    answer: str
    thought: str = ""  # written in <think> before the answer ("": none)
    round_thoughts: list[str] = field(default_factory=list)  # written in <think> before each search round's queries

    @property
    def model_calls(self) -> int:
        return len(self.search_rounds) + 1


def expert_queries(question: Question) -> list[str]:
    """The gold sub-questions, or the question itself when it has none (e.g. single-hop benchmark rows)."""
    queries = [query.strip() for query in question.sub_questions if query.strip()]
    return queries or [question.question.strip()]


def expert_plan(question: Question, mode: str, think: str = "none") -> ExpertPlan:
    """The search rounds and answer of the expert in `mode` ("parallel" fans out, "sequential" does not),
    with the answer turn's thought in style `think` (rl/app/expert_thoughts.py)."""
    if mode not in EXPERT_MODES:
        raise ExpertError(f"expert mode {mode!r} is not one of {EXPERT_MODES}")
    queries = expert_queries(question)
    if mode == "parallel" and question.structure == "sequential" and len(queries) > 1:
        raise ExpertError(
            f"question {question.id!r} is sequential (each hop needs the previous answer), so it cannot be "
            "answered in one fanned-out round; use mode 'sequential'"
        )
    rounds = [queries] if mode == "parallel" else [[query] for query in queries]
    return ExpertPlan(search_rounds=rounds, answer=question.answers[0].strip(),
                      thought=answer_thought(question, think), round_thoughts=round_thoughts(question, think, rounds))


def plan_actions(plan: ExpertPlan) -> list[Action]:
    return [Action(kind="search", calls=search_calls(queries)) for queries in plan.search_rounds] + [
        Action(kind="answer", answer=plan.answer)
    ]


def expert_turns(plan: ExpertPlan, protocol: AgentProtocol, tokenizer: Any) -> list[list[int]]:
    """Token ids of the plan's model turns (`protocol.action_token_ids`: each turn's text tokenised on its own,
    in the model's native tool-call format where its chat template has one, ending on the end-of-turn token
    when no stop string ends it), as the loop records a turn the model generated."""
    actions = plan_actions(plan)
    thoughts = plan.round_thoughts or [""] * len(plan.search_rounds)
    return [protocol.action_token_ids(action, tokenizer, thought)
            for action, thought in zip(actions, thoughts + [plan.thought])]


def expert_scripts(questions: list[Question], modes: list[str], protocol: AgentProtocol,
                   tokenizer: Any, think: str = "none") -> TurnScripts:
    """The expert's turns for each question in its mode, by prompt: the script of a ScriptedEngine.

    A question may come only once (its prompt is the key); `expert_trajectories` takes repeats.
    """
    prompts = [tuple(protocol.render_prompt(question, tokenizer)) for question in questions]
    if len(set(prompts)) < len(prompts):
        raise ValueError("expert_scripts: a question's prompt comes twice; play repeats in separate calls")
    return TurnScripts({prompt: expert_turns(expert_plan(question, mode, think), protocol, tokenizer)
                        for prompt, question, mode in zip(prompts, questions, modes)})


def expert_trajectories(
    questions: list[Question],
    modes: list[str],
    protocol: AgentProtocol,
    tokenizer: Any,
    executor: Any,
    rollout_config: RolloutConfig | None = None,
    think: str = "none",
) -> list[Trajectory | None]:
    """Expert trajectories for `questions` (one mode each), played through the agent loop.

    The questions are played together (group size 1), so all tool calls of a round run in one executor
    call (concurrently, as in rollouts). A question that comes again (e.g. in the other mode) is played
    in a later pass, since the scripted engine finds a script by its prompt. An entry is None when the
    demonstration does not fit the loop's limits (see `played_as_scripted`).
    executor: anything with `async run_turns` or `run_turns_sync(list[list[ToolCall]]) -> list[list[ToolCall]]`
    (rollouts.tools).
    """
    rollout_config = rollout_config or RolloutConfig()
    if len(modes) != len(questions):
        raise ValueError(f"{len(questions)} questions but {len(modes)} modes")
    # a question the expert cannot demonstrate in its mode raises ExpertError before anything is played
    answers = [expert_plan(question, mode, think).answer for question, mode in zip(questions, modes)]
    trajectories: list[Trajectory | None] = [None] * len(questions)
    # the prompt is the question's text rendered, so a repeated text is a repeated prompt
    for indices in passes_without_repeats([question.question for question in questions]):
        played = play_expert([questions[index] for index in indices], [modes[index] for index in indices],
                             [answers[index] for index in indices], protocol, tokenizer, executor, rollout_config,
                             think)
        for index, trajectory in zip(indices, played):
            trajectories[index] = trajectory
    return trajectories


def play_expert(questions: list[Question], modes: list[str], answers: list[str], protocol: AgentProtocol,
                tokenizer: Any, executor: Any, rollout_config: RolloutConfig,
                think: str = "none") -> list[Trajectory | None]:
    """Play each question (at most once each) through run_episodes on the scripted expert; None: dropped."""
    scripts = expert_scripts(questions, modes, protocol, tokenizer, think)
    groups = run_episodes(ScriptedEngine(tokenizer, scripts), protocol, executor, questions, group_size=1,
                          rollout_config=rollout_config, policy_version=0, greedy=True)
    played: list[Trajectory | None] = []
    for group, answer in zip(groups, answers):
        (trajectory,) = group.trajectories
        turns = scripts.turns_by_prompt[tuple(trajectory.prompt_ids)]
        played.append(trajectory if played_as_scripted(trajectory, turns, answer) else None)
    return played


def passes_without_repeats(keys: list) -> list[list[int]]:
    """Indices of `keys` in passes where no key comes twice: the n-th occurrence of a key goes to pass n."""
    passes: list[list[int]] = []
    occurrences: Counter = Counter()
    for index, key in enumerate(keys):
        if occurrences[key] == len(passes):
            passes.append([])
        passes[occurrences[key]].append(index)
        occurrences[key] += 1
    return passes


def played_as_scripted(trajectory: Trajectory, turns: list[list[int]], answer: str) -> bool:
    """Whether the loop let the expert play its script whole, i.e. the demonstration fits the loop's limits.

    It does not fit when the context filled up (the trajectory is truncated), when a turn was cut at the
    per-turn or context budget (the model tokens differ from the script's), or when the turn limit ended
    the episode before the scripted answer (fewer turns, no final answer).
    """
    generated = [token for token, trainable in zip(trajectory.response_ids, trajectory.loss_mask) if trainable]
    return (not trajectory.truncated and len(trajectory.turns) == len(turns)
            and generated == [token for turn in turns for token in turn] and trajectory.final_answer == answer)


def expert_trajectory(
    question: Question,
    protocol: AgentProtocol,
    tokenizer: Any,
    executor: Any,
    mode: str,
    rollout_config: RolloutConfig | None = None,
) -> tuple[list[int], list[int]]:
    """(input_ids, completion_mask) of one expert demonstration: prompt + interleaved turns/observations.

    completion_mask is 1 on the tokens of the model turns (stop tags included) and 0 on the prompt and
    observations. Raises ExpertError if the demonstration does not fit the loop's limits.
    """
    (trajectory,) = expert_trajectories([question], [mode], protocol, tokenizer, executor, rollout_config)
    if trajectory is None:
        raise ExpertError(
            f"question {question.id!r}: the expert demonstration does not fit rollout.max_context_tokens / "
            "rollout.max_new_tokens_per_turn / rollout.max_turns"
        )
    return trajectory_to_example(trajectory)


def trajectory_to_example(trajectory: Trajectory) -> tuple[list[int], list[int]]:
    input_ids = list(trajectory.prompt_ids) + list(trajectory.response_ids)
    completion_mask = [0] * len(trajectory.prompt_ids) + list(trajectory.loss_mask)
    return input_ids, completion_mask


def choose_modes(questions: list[Question], parallel_fraction: float, rng: random.Random) -> list[str]:
    """Fan-out for a `parallel_fraction` share of the parallel questions; one sub-query per turn otherwise."""
    if not 0.0 <= parallel_fraction <= 1.0:
        raise ValueError(f"sft.parallel_fraction must be in [0, 1], got {parallel_fraction}")
    return [
        "parallel" if question.structure == "parallel" and rng.random() < parallel_fraction else "sequential"
        for question in questions
    ]


def sample_questions(questions: list[Question], num_trajectories: int, rng: random.Random) -> list[Question]:
    """`num_trajectories` questions: shuffled passes over `questions` (a question repeats only after all did)."""
    if not questions:
        raise ValueError("no questions to write expert trajectories for (empty training split?)")
    return repeated_passes(questions, num_trajectories, rng)


def choose_forced_answer(count: int, fraction: float, seed: int) -> list[bool]:
    """Which of `count` demonstrations end on the forced-answer cue: a seeded `fraction` share.

    Drawn from a stream of its own, so the questions and modes drawn before do not depend on the fraction.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"sft.forced_answer_fraction must be in [0, 1], got {fraction}")
    if fraction == 0.0:
        return [False] * count
    rng = random.Random(f"forced-answer-{seed}")
    return [rng.random() < fraction for _ in range(count)]


def expert_trajectories_under_budgets(questions: list[Question], modes: list[str], forced: list[bool],
                                      protocol: AgentProtocol, tokenizer: Any, executor: Any,
                                      rollout_config: RolloutConfig, think: str = "none") -> list[Trajectory | None]:
    """`expert_trajectories`, where a question marked in `forced` is played with max_turns = its search rounds.

    The loop then appends the forced-answer cue to the last round's observation, as under a binding budget. A
    plan with more rounds than rollout.max_turns keeps max_turns (and is dropped as not fitting, as without).
    Questions are played in one call per budget, in their order.
    """
    budgets = [min(len(expert_plan(question, mode, think).search_rounds), rollout_config.max_turns) if is_forced
               else rollout_config.max_turns for question, mode, is_forced in zip(questions, modes, forced)]
    trajectories: list[Trajectory | None] = [None] * len(questions)
    for budget in sorted(set(budgets)):
        indices = [index for index, value in enumerate(budgets) if value == budget]
        played = expert_trajectories([questions[index] for index in indices], [modes[index] for index in indices],
                                     protocol, tokenizer, executor,
                                     dataclasses.replace(rollout_config, max_turns=budget), think)
        for index, trajectory in zip(indices, played):
            trajectories[index] = trajectory
    return trajectories


def write_expert_dataset(
    questions: list[Question],
    protocol: AgentProtocol,
    tokenizer: Any,
    executor: Any,
    rollout_config: RolloutConfig | None = None,
    num_trajectories: int = 0,
    parallel_fraction: float = 0.3,
    seed: int = 0,
    batch_size: int = 256,
    think: str = "none",
    forced_answer_fraction: float = 0.0,
) -> Dataset:
    """A seeded mixture of expert demonstrations as a `datasets.Dataset`.

    Columns: input_ids, completion_mask (TRL's pre-tokenised format with a completion mask), and for
    inspection question_id, structure, mode, model_calls. num_trajectories=0 means one per question.
    Only a `parallel_fraction` share of the parallel questions gets the fanned-out demonstration, so the
    warm-started policy mostly searches one sub-query per turn and RL has both behaviours to choose from.
    think: what the answer turns write in <think> first (EXPERT_THINK_STYLES; "none": nothing).
    forced_answer_fraction: share of the demonstrations played under a search budget equal to their own
    search rounds (`rollout.max_turns` = rounds), so their last observation ends with the forced-answer cue,
    as an evaluation under a binding budget shows it (`choose_forced_answer`). The questions and modes are
    those of the same call without it.
    """
    if think not in EXPERT_THINK_STYLES:
        raise ValueError(f"sft.expert_think must be one of {EXPERT_THINK_STYLES}, got {think!r}")
    rollout_config = rollout_config or RolloutConfig()
    rng = random.Random(seed)
    chosen = sample_questions(questions, num_trajectories or len(questions), rng)
    modes = choose_modes(chosen, parallel_fraction, rng)
    forced = choose_forced_answer(len(chosen), forced_answer_fraction, seed)
    columns: dict[str, list] = {name: [] for name in EXPERT_COLUMNS}
    dropped = 0
    for start in range(0, len(chosen), batch_size):
        batch_questions, batch_modes = chosen[start:start + batch_size], modes[start:start + batch_size]
        batch_forced = forced[start:start + batch_size]
        trajectories = expert_trajectories_under_budgets(batch_questions, batch_modes, batch_forced, protocol,
                                                         tokenizer, executor, rollout_config, think)
        for question, mode, is_forced, trajectory in zip(batch_questions, batch_modes, batch_forced, trajectories):
            if trajectory is None:
                dropped += 1
                continue
            input_ids, completion_mask = trajectory_to_example(trajectory)
            columns["input_ids"].append(input_ids)
            columns["completion_mask"].append(completion_mask)
            columns["question_id"].append(question.id)
            columns["structure"].append(question.structure)
            columns["mode"].append(mode)
            columns["model_calls"].append(trajectory.model_calls)
            columns[FORCED_ANSWER_COLUMN].append(is_forced)
    if not columns["input_ids"]:
        raise ExpertError(f"all {len(chosen)} expert demonstrations exceed the rollout limits (rollout."
                          "max_context_tokens / max_new_tokens_per_turn / max_turns); raise them")
    if dropped:
        logger.warning("expert: dropped %d of %d demonstrations that exceed the rollout limits", dropped, len(chosen))
    logger.info("expert: %d demonstrations, modes %s", len(columns["input_ids"]), dict(Counter(columns["mode"])))
    return Dataset.from_dict(columns)


DRILL_MODE = "drill"  # the mode column of a comparison drill row


def tokenize_drill(tokenizer: Any, pieces: list[tuple[str, bool]]) -> tuple[list[int], list[int]]:
    """`<think>` and a drill's (text, is_decision) pieces as token ids, with each token's place in its decision
    piece (0, 1, ... from the piece's first token; -1 outside the decisions, where no loss falls)."""
    input_ids = tokenizer("<think>", add_special_tokens=False)["input_ids"]
    places = [-1] * len(input_ids)
    for text, is_decision in pieces:
        ids = tokenizer(text if text.startswith(" ") else f" {text}", add_special_tokens=False)["input_ids"]
        input_ids += ids
        places += list(range(len(ids))) if is_decision else [-1] * len(ids)
    return input_ids, places


def comparison_drill_dataset(questions: list[Question], tokenizer: Any, count: int, form: str,
                             seed: int = 0, loss: str = "decisions") -> Dataset:
    """`count` comparison drills (`sft.comparison_drills`) in the expert dataset's columns: each row is the
    answer turn's worked comparison alone, `<think>` and the thought in `form`, about the names of a training
    comparison with years drawn anew (data/worked_comparisons.py drill_entries), with the loss on each step's
    decision and winner only (`loss` "decisions") or on every token after the first entry ("thought": also
    the entries each step copies and, in the digits form, the spelt years). A comparison step is one or two
    tokens of a 100-token demonstration; a drill is little else."""
    from data.worked_comparisons import DRILL_LOSSES, comparison_drill, drill_entries

    if loss not in DRILL_LOSSES:
        raise ValueError(f"sft.drill_loss must be one of {', '.join(DRILL_LOSSES)}, got {loss!r}")

    rng = random.Random(f"comparison-drills:{seed}")
    columns: dict[str, list] = {name: [] for name in EXPERT_COLUMNS}
    for index, (names, years, earliest) in enumerate(drill_entries(questions, count, rng)):
        pieces = comparison_drill(names, years, earliest, form)
        if loss == "thought":  # every piece after the first entry carries the loss
            pieces = pieces[:1] + [(text, True) for text, _ in pieces[1:]]
        input_ids, places = tokenize_drill(tokenizer, pieces)
        columns["input_ids"].append(input_ids)
        columns["completion_mask"].append([int(place >= 0) for place in places])
        columns["question_id"].append(f"drill-{index}")
        columns["structure"].append("parallel")
        columns["mode"].append(DRILL_MODE)
        columns["model_calls"].append(0)
        columns[FORCED_ANSWER_COLUMN].append(False)
    logger.info("expert: %d comparison drills (%s, loss on the %s)", count, form, loss)
    return Dataset.from_dict(columns)


__all__ = [
    "DRILL_MODE",
    "EXPERT_COLUMNS",
    "EXPERT_MODES",
    "FORCED_ANSWER_COLUMN",
    "ExpertError",
    "ExpertPlan",
    "choose_forced_answer",
    "choose_modes",
    "comparison_drill_dataset",
    "expert_plan",
    "expert_queries",
    "expert_scripts",
    "expert_trajectories",
    "expert_trajectories_under_budgets",
    "expert_trajectory",
    "expert_turns",
    "plan_actions",
    "played_as_scripted",
    "sample_questions",
    "tokenize_drill",
    "trajectory_to_example",
    "write_expert_dataset",
]
