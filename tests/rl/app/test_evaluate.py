"""Evaluation: hand-computed summaries of handcrafted trajectories, tables, comparisons, checkpoint errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from data.types import Question
from rl.cli import main as cli_main
from rl.config import ConfigError, ExperimentConfig, load_config
from rl.app.evaluate import (
    METRIC_NAMES,
    compare_table,
    evaluate_command,
    flat_metrics,
    format_table,
    load_eval_questions,
    resolve_model_path,
    search_budget_overrides,
    summarize,
    wilson_interval,
)
from data.trajectory import ToolCall, Trajectory, Turn

QUICKSTART = str(Path(__file__).resolve().parents[3] / "configs" / "quickstart.yaml")


def search(*queries: str) -> list[ToolCall]:
    return [ToolCall(name="search", arguments={"query": query}, observation="doc") for query in queries]


def episode(
    qid: str,
    structure: str,
    golds: list[str],
    turns: list[Turn],
    final_answer: str | None,
    generate_s: float,
    tools_s: float,
) -> Trajectory:
    question = Question(id=qid, question=f"question {qid}?", answers=golds, structure=structure)
    return Trajectory(
        question=question,
        prompt_ids=[1, 2],
        turns=turns,
        final_answer=final_answer,
        truncated=final_answer is None,
        generate_s=generate_s,
        tools_s=tools_s,
    )


@pytest.fixture
def handcrafted() -> list[Trajectory]:
    return [
        # parallel, fanned out in one round, correct
        episode(
            "p1",
            "parallel",
            ["1873"],
            [
                Turn(text="<search>born a ## born b</search>", calls=search("born a", "born b")),
                Turn(text="<answer>1873</answer>", answer="1873"),
            ],
            "1873",
            generate_s=1.0,
            tools_s=0.5,
        ),
        # parallel, 3 + 1 sub-queries in two rounds, partially right (F1 2/3)
        episode(
            "p2",
            "parallel",
            ["Varlo Tenmis"],
            [
                Turn(text="<search>a ## b ## c</search>", calls=search("a", "b", "c")),
                Turn(text="<think>one more</think><search>d</search>", calls=search("d")),
                Turn(text="<answer>Tenmis</answer>", answer="Tenmis"),
            ],
            "Tenmis",
            generate_s=2.0,
            tools_s=1.0,
        ),
        # sequential, two chained rounds, correct after normalisation
        episode(
            "s1",
            "sequential",
            ["Quenbridge"],
            [
                Turn(text="<search>x</search>", calls=search("x")),
                Turn(text="<search>y</search>", calls=search("y")),
                Turn(text="<answer>quenbridge.</answer>", answer="quenbridge."),
            ],
            "quenbridge.",
            generate_s=0.5,
            tools_s=0.25,
        ),
        # sequential, an invalid turn then a wrong answer: format invalid, no tool calls
        episode(
            "s2",
            "sequential",
            ["1954"],
            [
                Turn(text="I think it is 1954", invalid=True),
                Turn(text="<answer>1950</answer>", answer="1950"),
            ],
            "1950",
            generate_s=0.4,
            tools_s=0.0,
        ),
        # single, never answered (turn limit): scores 0, format invalid
        episode(
            "g1",
            "single",
            ["yes"],
            [
                Turn(text="<search>z</search>", calls=search("z")),
            ],
            None,
            generate_s=0.1,
            tools_s=0.1,
        ),
    ]


EXPECTED = {
    "parallel": {
        "n": 2,
        "em": 0.5,
        "f1": 5 / 6,
        "model_calls": 2.5,
        "tool_calls": 3.0,
        "subqueries_per_round": 2.0,
        "latency_s": 2.25,
        "format_valid": 1.0,
    },
    "sequential": {
        "n": 2,
        "em": 0.5,
        "f1": 0.5,
        "model_calls": 2.5,
        "tool_calls": 1.0,
        "subqueries_per_round": 1.0,
        "latency_s": 0.575,
        "format_valid": 0.5,
    },
    "single": {
        "n": 1,
        "em": 0.0,
        "f1": 0.0,
        "model_calls": 1.0,
        "tool_calls": 1.0,
        "subqueries_per_round": 1.0,
        "latency_s": 0.2,
        "format_valid": 0.0,
    },
    "all": {
        "n": 5,
        "em": 0.4,
        "f1": 8 / 15,
        "model_calls": 2.2,
        "tool_calls": 1.8,
        "subqueries_per_round": 1.5,
        "latency_s": 1.17,
        "format_valid": 0.6,
    },
}


def test_summarize_matches_hand_computed_figures(handcrafted):
    results = summarize(handcrafted, "world")
    assert list(results) == ["world"]
    assert list(results["world"]) == ["parallel", "sequential", "single", "all"]
    for structure, expected in EXPECTED.items():
        figures = results["world"][structure]
        assert set(figures) == set(METRIC_NAMES) | {"em_ci95"}
        for name, value in expected.items():
            assert figures[name] == pytest.approx(value), (structure, name)
    # Wilson 95% intervals, textbook values: 1 of 2 -> 0.0945-0.9055, 2 of 5 -> 0.1176-0.7693, 0 of 1 -> 0-0.7935
    assert results["world"]["parallel"]["em_ci95"] == pytest.approx([0.0945, 0.9055], abs=1e-4)
    assert results["world"]["all"]["em_ci95"] == pytest.approx([0.1176, 0.7693], abs=1e-4)
    assert results["world"]["single"]["em_ci95"] == pytest.approx([0.0, 0.7935], abs=1e-4)
    assert json.loads(json.dumps(results)) == results  # the contract JSON round-trips


def test_wilson_interval_edges():
    assert wilson_interval(0, 0) == [0.0, 1.0]  # no questions: no information
    low, high = wilson_interval(10, 10)
    assert high == 1.0 and low == pytest.approx(0.7225, abs=1e-4)  # all right still leaves room below
    assert wilson_interval(0, 3)[0] == 0.0
    low, high = wilson_interval(150, 300)
    assert (low + high) / 2 == pytest.approx(0.5) and high - low == pytest.approx(2 * 0.0563, abs=2e-4)


def test_flat_metrics_splits_the_interval_into_two_scalars():
    flat = flat_metrics({"world": {"all": {"n": 4, "em": 0.5, "em_ci95": [0.15, 0.85]}}}, prefix="eval")
    assert flat == {"eval/world/all/n": 4, "eval/world/all/em": 0.5,
                    "eval/world/all/em_ci95_low": 0.15, "eval/world/all/em_ci95_high": 0.85}


def test_search_budget_is_rollout_max_turns():
    assert search_budget_overrides(["grpo.total_steps=2"], None) == ["grpo.total_steps=2"]
    assert search_budget_overrides(["grpo.total_steps=2"], 3) == ["grpo.total_steps=2", "rollout.max_turns=3"]
    assert search_budget_overrides(["rollout.max_turns=3"], 3)[-1] == "rollout.max_turns=3"  # the same budget twice
    with pytest.raises(ConfigError, match="contradicts the override 'rollout.max_turns=4'"):
        search_budget_overrides(["rollout.max_turns=4"], 2)
    with pytest.raises(ConfigError, match="at least 1"):
        search_budget_overrides([], 0)


def test_cli_search_budget_sets_the_budget_of_the_evaluation(tmp_path, monkeypatch, capsys):
    import rl.app.evaluate as evaluate_module

    seen = {}

    def fake_evaluate(config, path, group_by, episodes=None):
        seen["max_turns"], seen["group_by"] = config.rollout.max_turns, group_by
        return {"world": {"all": {name: 1.0 for name in METRIC_NAMES}}}

    monkeypatch.setattr(evaluate_module, "evaluate", fake_evaluate)
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    code = cli_main(["eval", QUICKSTART, f"experiment.output_dir={tmp_path}", "--checkpoint", str(model),
                     "--search-budget", "2", "--group-by", "hops"])
    assert code == 0 and seen == {"max_turns": 2, "group_by": "hops"}
    assert "search budget: 2 search rounds + 1 forced-answer round (rollout.max_turns=2)" in capsys.readouterr().out
    code = cli_main(["eval", QUICKSTART, "rollout.max_turns=4", "--checkpoint", str(model), "--search-budget", "2"])
    assert code == 2 and "contradicts" in capsys.readouterr().err


def test_summarize_uses_the_given_format_validator(handcrafted):
    results = summarize(handcrafted, "world", format_validator=lambda trajectory: True)
    assert results["world"]["all"]["format_valid"] == 1.0


def test_summarize_only_lists_present_structures_and_handles_no_rounds(handcrafted):
    results = summarize([handcrafted[3]], "bamboogle")
    assert list(results["bamboogle"]) == ["sequential", "all"]
    assert results["bamboogle"]["all"]["subqueries_per_round"] == 0.0
    assert summarize([], "empty")["empty"]["all"]["n"] == 0


def test_format_table_contains_the_numbers(handcrafted):
    table = format_table(summarize(handcrafted, "world"))
    lines = table.splitlines()
    assert lines[0].startswith(
        "| dataset | structure | n | EM | F1 | model calls | tool calls | sub-queries/round"
    )
    assert lines[0].endswith("| format valid | EM 95% CI |")
    assert "| world | parallel | 2 | 0.500 | 0.833 | 2.500 | 3.000 | 2.000 | 2.250 | 1.000 | 0.095–0.905 |" in lines
    assert "| world | all | 5 | 0.400 | 0.533 | 2.200 | 1.800 | 1.500 | 1.170 | 0.600 | 0.118–0.769 |" in lines
    assert len(lines) == 2 + 4


def test_compare_table_ratios_are_b_over_a():
    figures_a = {
        "n": 4,
        "em": 0.0,
        "f1": 0.5,
        "model_calls": 3.0,
        "tool_calls": 3.0,
        "subqueries_per_round": 1.0,
        "latency_s": 2.0,
        "format_valid": 1.0,
    }
    figures_b = {
        "n": 4,
        "em": 0.25,
        "f1": 0.75,
        "model_calls": 1.5,
        "tool_calls": 3.0,
        "subqueries_per_round": 3.0,
        "latency_s": 1.0,
        "format_valid": 1.0,
    }
    table = compare_table(
        {"world": {"parallel": figures_a, "ghost": figures_a}}, {"world": {"parallel": figures_b}}
    )
    lines = table.splitlines()
    assert "| world | parallel | model calls | 3.000 | 1.500 | 0.50× |" in lines
    assert "| world | parallel | sub-queries/round | 1.000 | 3.000 | 3.00× |" in lines
    assert "| world | parallel | F1 | 0.500 | 0.750 | 1.50× |" in lines
    assert "| world | parallel | EM | 0.000 | 0.250 | — |" in lines
    assert not any("ghost" in line for line in lines)  # only structures both sides have
    assert len(lines) == 2 + len(METRIC_NAMES)


def test_missing_checkpoint_is_a_config_error_naming_the_path(tmp_path):
    config = load_config(QUICKSTART, [f"experiment.output_dir={tmp_path}"])
    missing = tmp_path / "no_such_checkpoint"
    with pytest.raises(ConfigError, match="no_such_checkpoint"):
        evaluate_command(config, checkpoint=str(missing))


def test_cli_eval_missing_checkpoint_exits_2(tmp_path, capsys):
    missing = tmp_path / "nowhere"
    code = cli_main(["eval", QUICKSTART, f"experiment.output_dir={tmp_path}", "--checkpoint", str(missing)])
    assert code == 2
    assert str(missing) in capsys.readouterr().err


def fake_training_checkpoint(run_dir, step: int):
    checkpoint = run_dir / "checkpoints" / f"checkpoint-{step}"
    (checkpoint / "model").mkdir(parents=True)
    (checkpoint / "model" / "config.json").write_text("{}")
    (checkpoint / "trainer_state.pt").write_bytes(b"")
    (run_dir / "checkpoints" / "latest").write_text(checkpoint.name)
    return checkpoint


def test_resolve_model_path_accepts_checkpoints_pointers_runs_and_model_folders(tmp_path):
    run_dir = tmp_path / "exp"
    fake_training_checkpoint(run_dir, 2)
    newest = fake_training_checkpoint(run_dir, 3)
    config = load_config(QUICKSTART, [f"experiment.output_dir={tmp_path}", "experiment.name=exp"])
    model = str(newest / "model")
    assert resolve_model_path(config, str(newest)) == model
    assert resolve_model_path(config, model) == model
    assert resolve_model_path(config, str(run_dir / "checkpoints" / "latest")) == model
    assert resolve_model_path(config, str(run_dir)) == model
    assert resolve_model_path(config, None) == model  # the run's latest checkpoint
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match="not a model folder"):
        resolve_model_path(config, str(empty))


def test_resolve_model_path_without_checkpoints_uses_model_path(tmp_path):
    config = load_config(QUICKSTART, [f"experiment.output_dir={tmp_path}", "model.path=/models/base"])
    assert resolve_model_path(config, None) == "/models/base"
    config.model.path = ""
    with pytest.raises(ConfigError, match="--checkpoint"):
        resolve_model_path(config, None)


def test_evaluate_command_end_to_end_on_the_tiny_model(tmp_path, tiny_checkpoint, tiny_world, capsys):
    import torch

    torch.set_num_threads(1)
    world_overrides = [
        "data.world.seed=0",
        "data.world.num_entities_per_kind=20",
        "data.world.num_train=120",
        "data.world.num_validation=20",
        "data.world.num_test=40",
    ]
    config = load_config(
        QUICKSTART,
        [
            f"experiment.output_dir={tmp_path}",
            "eval.num_questions=6",
            "rollout.max_turns=2",
            "rollout.max_new_tokens_per_turn=8",
            *world_overrides,
        ],
    )
    checkpoint = tmp_path / "quickstart" / "checkpoints" / "checkpoint-1"
    checkpoint.mkdir(parents=True)
    (checkpoint / "model").symlink_to(tiny_checkpoint, target_is_directory=True)

    episodes_file = tmp_path / "episodes.jsonl"
    assert evaluate_command(config, checkpoint=str(checkpoint), episodes=str(episodes_file)) == 0
    results = json.loads((tmp_path / "quickstart" / "eval.json").read_text())
    expected_structures = [question.structure for question in tiny_world.splits["test"][:6]]
    # --episodes: one row per question, in order, whose figures average to the table's
    rows = [json.loads(line) for line in episodes_file.read_text().splitlines()]
    assert [row["id"] for row in rows] == [question.id for question in tiny_world.splits["test"][:6]]
    assert {row["dataset"] for row in rows} == {"world"}
    assert {row["checkpoint"] for row in rows} == {str(checkpoint / "model")}
    for name in ("em", "model_calls", "tool_calls"):
        assert sum(row["figures"][name] for row in rows) / 6 == pytest.approx(results["world"]["all"][name])
    for row in rows:
        assert len(row["turns"]) == row["figures"]["model_calls"]
        assert sum(len(turn["calls"]) for turn in row["turns"]) == row["figures"]["tool_calls"]
        assert all(set(call) == {"name", "arguments", "observation", "error"} for turn in row["turns"]
                   for call in turn["calls"])
        assert row["answers"] and "verdict" not in row  # QA rows carry no apps verdict
    assert list(results) == ["world"]
    assert results["world"]["all"]["n"] == 6
    for structure in set(expected_structures):
        assert results["world"][structure]["n"] == expected_structures.count(structure)
    for figures in results["world"].values():
        assert set(figures) == set(METRIC_NAMES) | {"em_ci95"}
        assert 1 <= figures["model_calls"] <= 3  # max_turns rounds + the forced-answer round
        assert 0.0 <= figures["em"] <= figures["f1"] <= 1.0
    printed = capsys.readouterr().out
    assert "| world | all | 6 |" in printed and "eval.json" in printed and "(6 episodes)" in printed


def test_compare_command_writes_both_results_and_prints_ratios(tmp_path, monkeypatch, capsys):
    import rl.app.evaluate as evaluate_module

    model_a, model_b = tmp_path / "model_a", tmp_path / "model_b"
    for folder in (model_a, model_b):
        folder.mkdir()
        (folder / "config.json").write_text("{}")
    figures = {
        "n": 2,
        "em": 0.5,
        "f1": 0.5,
        "model_calls": 4.0,
        "tool_calls": 2.0,
        "subqueries_per_round": 1.0,
        "latency_s": 1.0,
        "format_valid": 1.0,
    }
    canned = {
        str(model_a): {"world": {"all": figures}},
        str(model_b): {"world": {"all": {**figures, "model_calls": 2.0, "subqueries_per_round": 2.0}}},
    }
    monkeypatch.setattr(evaluate_module, "evaluate", lambda config, path, group_by, episodes=None: canned[path])
    config = load_config(QUICKSTART, [f"experiment.output_dir={tmp_path}"])
    out = tmp_path / "comparison.json"

    assert evaluate_command(config, compare=[str(model_a), str(model_b)], out=str(out)) == 0
    written = json.loads(out.read_text())
    assert written == {
        "checkpoints": {"A": str(model_a), "B": str(model_b)},
        "A": canned[str(model_a)],
        "B": canned[str(model_b)],
    }
    printed = capsys.readouterr().out
    assert "| world | all | model calls | 4.000 | 2.000 | 0.50× |" in printed
    assert "| world | all | sub-queries/round | 1.000 | 2.000 | 2.00× |" in printed


def test_group_by_hops_adds_rows_per_number_of_sub_questions_to_the_structure_rows(handcrafted):
    handcrafted[0].question.sub_questions = ["When was a born?", "When was b born?"]
    handcrafted[1].question.sub_questions = ["a?", "b?", "c?"]
    handcrafted[2].question.sub_questions = ["x?", "y?"]
    handcrafted[4].question.sub_questions = ["z?"]
    results = summarize(handcrafted, "world", group_by="hops")["world"]
    assert list(results) == ["parallel", "parallel/2", "parallel/3", "sequential", "sequential/2",
                             "sequential/unknown", "single", "single/1", "all"]
    assert results["parallel/2"]["n"] == 1 and results["parallel/2"]["em"] == 1.0
    assert results["parallel/3"]["f1"] == pytest.approx(2 / 3)
    assert results["parallel/3"]["subqueries_per_round"] == 2.0  # 3 + 1 queries over 2 rounds
    assert results["sequential/2"]["em"] == 1.0 and results["sequential/unknown"]["em"] == 0.0  # s2 has none
    for structure in ("parallel", "sequential", "single", "all"):  # the contract rows are unchanged
        for name, value in EXPECTED[structure].items():
            assert results[structure][name] == pytest.approx(value), (structure, name)
    table = format_table({"world": results}).splitlines()
    assert [line.split(" | ")[1] for line in table[2:]] == list(results)
    with pytest.raises(ConfigError, match="group-by 'colour'"):
        summarize(handcrafted, "world", group_by="colour")


def test_group_by_retrieval_splits_each_structure_by_whether_every_supporting_passage_was_found(handcrafted):
    # p1 (right) found both of its passages; p2 (half right) missed d3; s1 (right) found both; s2 searched nothing;
    # g1 names no supporting passage
    for trajectory, gold_ids in zip(handcrafted, (["d1", "d2"], ["d1", "d3"], ["d5", "d6"], ["d7"], [])):
        trajectory.question.supporting_doc_ids = gold_ids
    for trajectory, found in zip(handcrafted, (["d1", "d2"], ["d1", "d2", "d4"], ["d5", "d6"])):
        calls = [call for turn in trajectory.turns for call in turn.calls]
        for call, doc_id in zip(calls, found):
            call.retrieved_doc_ids = [doc_id]
    handcrafted[1].turns[1].calls[0].retrieved_doc_ids = ["d4", "d2"]  # a later round finds d2 again, never d3
    results = summarize(handcrafted, "world", group_by="retrieval")["world"]
    assert list(results) == ["parallel", "parallel/missed", "parallel/retrieved", "sequential", "sequential/missed",
                             "sequential/retrieved", "single", "single/unknown", "all"]
    assert results["parallel/retrieved"]["n"] == 1 and results["parallel/retrieved"]["em"] == 1.0
    assert results["parallel/missed"]["n"] == 1 and results["parallel/missed"]["em"] == 0.0
    assert results["sequential/retrieved"]["em"] == 1.0 and results["sequential/missed"]["em"] == 0.0
    assert results["single/unknown"]["n"] == 1
    for structure in ("parallel", "sequential", "single", "all"):  # the contract rows are unchanged
        for name, value in EXPECTED[structure].items():
            assert results[structure][name] == pytest.approx(value), (structure, name)


@pytest.mark.parametrize(("batch_questions", "expected_batches"), [(0, [5]), (1, [1, 1, 1, 1, 1]), (2, [2, 2, 1])])
def test_eval_batch_questions_sets_how_many_questions_generate_together(
    tmp_path, tiny_checkpoint, monkeypatch, batch_questions, expected_batches
):
    import torch

    import rollouts.agent_loop

    torch.set_num_threads(1)
    batches = []
    real_run_episodes = rollouts.agent_loop.run_episodes

    def counting_run_episodes(engine, protocol, executor, questions, **kwargs):
        batches.append(len(questions))
        return real_run_episodes(engine, protocol, executor, questions, **kwargs)

    monkeypatch.setattr(rollouts.agent_loop, "run_episodes", counting_run_episodes)
    config = load_config(
        QUICKSTART,
        [
            f"experiment.output_dir={tmp_path}",
            f"eval.batch_questions={batch_questions}",
            "eval.num_questions=5",
            "rollout.questions_per_step=4",
            "rollout.group_size=2",  # a training batch of 8 questions: the default takes all 5 at once
            "rollout.max_turns=1",
            "rollout.max_new_tokens_per_turn=4",
            "data.world.seed=0",
            "data.world.num_entities_per_kind=20",
            "data.world.num_train=120",
            "data.world.num_validation=20",
            "data.world.num_test=40",
        ],
    )
    assert evaluate_command(config, checkpoint=tiny_checkpoint) == 0  # builds the world, then evaluates
    assert batches == expected_batches
    assert json.loads((tmp_path / "quickstart" / "eval.json").read_text())["world"]["all"]["n"] == 5


TINY_WORLD_OVERRIDES = ["data.world.seed=0", "data.world.num_entities_per_kind=20", "data.world.num_train=120",
                        "data.world.num_validation=20", "data.world.num_test=40"]


@pytest.mark.parametrize(("eval_temperature", "greedy", "sampled_at"), [(0.0, True, 0.0), (0.7, False, 0.7)])
def test_eval_samples_at_rollout_eval_temperature(tmp_path, tiny_checkpoint, monkeypatch, eval_temperature, greedy,
                                                  sampled_at):
    import torch

    import rollouts.agent_loop
    import rollouts.batcher

    torch.set_num_threads(1)
    episode_arguments, engine_temperatures = [], []
    real_run_episodes, real_generate = rollouts.agent_loop.run_episodes, rollouts.batcher.DirectEngine.generate

    def recording_run_episodes(engine, protocol, executor, questions, **kwargs):
        episode_arguments.append((kwargs["greedy"], kwargs["temperature"]))
        return real_run_episodes(engine, protocol, executor, questions, **kwargs)

    async def recording_generate(self, *args, temperature, **kwargs):
        engine_temperatures.append(temperature)
        return await real_generate(self, *args, temperature=temperature, **kwargs)

    monkeypatch.setattr(rollouts.agent_loop, "run_episodes", recording_run_episodes)
    monkeypatch.setattr(rollouts.batcher.DirectEngine, "generate", recording_generate)
    config = load_config(QUICKSTART, [f"experiment.output_dir={tmp_path}", f"rollout.eval_temperature={eval_temperature}",
                                      "eval.num_questions=2", "rollout.max_turns=1", "rollout.max_new_tokens_per_turn=4",
                                      *TINY_WORLD_OVERRIDES])
    assert evaluate_command(config, checkpoint=tiny_checkpoint) == 0
    assert episode_arguments == [(greedy, eval_temperature)]
    assert engine_temperatures and set(engine_temperatures) == {sampled_at}  # what the engine was asked for


def test_periodic_evaluation_runs_every_n_steps_on_the_validation_split_with_the_given_weights(tmp_path,
                                                                                             tiny_checkpoint,
                                                                                             tiny_world):
    import torch

    from rl.app.evaluate import PeriodicEvaluator
    from rollouts.model_loading import load_model_and_tokenizer

    torch.set_num_threads(1)
    config = load_config(QUICKSTART, [f"experiment.output_dir={tmp_path}", "eval.every_steps=2", "eval.num_questions=4",
                                      "rollout.max_turns=1", "rollout.max_new_tokens_per_turn=4",
                                      *TINY_WORLD_OVERRIDES])
    evaluator = PeriodicEvaluator(config)
    assert [step for step in range(1, 7) if evaluator.is_due(step)] == [2, 4, 6]
    assert [question.id for question in evaluator.questions_by_dataset["world"]] == [
        question.id for question in tiny_world.splits["validation"][:4]]

    model, _ = load_model_and_tokenizer(tiny_checkpoint)
    weights = {name: torch.zeros_like(tensor) if name.endswith("norm.weight") else tensor
               for name, tensor in model.state_dict().items()}
    metrics = evaluator.evaluate(tiny_checkpoint, weights, version=2)
    assert metrics["eval/validation/world/all/n"] == 4
    assert set(metrics) >= {f"eval/validation/world/all/{name}" for name in METRIC_NAMES} | {"perf/eval_s"}
    engine = evaluator.components.engine
    assert engine.version == 2
    assert all(torch.equal(tensor, weights[name]) for name, tensor in engine.model.state_dict().items())
    assert PeriodicEvaluator(load_config(QUICKSTART)).questions_by_dataset == {}  # every_steps=0: nothing loaded


def test_eval_every_steps_with_files_needs_validation_files(capsys):
    files = ["data.source=files", "data.train_files.nq=/data/nq.jsonl", "data.corpus_path=/data/corpus.jsonl"]
    assert cli_main(["config", "show", QUICKSTART, *files, "eval.every_steps=5"]) == 2
    error = capsys.readouterr().err
    assert "key 'eval.every_steps'" in error and "needs data.validation_files" in error
    assert cli_main(["config", "show", QUICKSTART, *files, "eval.every_steps=5",
                     "data.validation_files.nq=/data/nq_dev.jsonl"]) == 0


def test_fresh_world_points_the_config_at_another_seeds_world_beside_the_run_and_refuses_the_runs_own():
    from rl.app.evaluate import use_fresh_world

    config = ExperimentConfig()
    config.experiment.output_dir, config.experiment.name = "/tmp/runs", "reader"
    config.data.world.seed, config.data.world.train_worlds = 0, 8
    folder = use_fresh_world(config, 7)
    assert folder == Path("/tmp/runs/reader/world-seed7") == Path(config.data.world_dir)
    assert (config.data.world.seed, config.data.world.train_worlds, config.data.world.num_train) == (7, 0, 0)
    with pytest.raises(ConfigError, match="own world seed"):
        use_fresh_world(config, 7)
    config.data.source = "files"
    with pytest.raises(ConfigError, match="data.source=world, apps or mixed"):
        use_fresh_world(config, 3)


def test_fresh_world_of_a_mixed_run_redraws_both_worlds_and_serves_the_fresh_apps_world():
    from data.apps.world import APPS_SOURCE_NAME
    from rl.app.apps_env import apps_server_config
    from rl.app.evaluate import use_fresh_world
    from rollouts.config import McpServerConfig

    config = ExperimentConfig()
    config.experiment.output_dir, config.experiment.name = "/tmp/runs", "mixed"
    config.data.source = "mixed"
    own_server = McpServerConfig(name="calculator", command="python", args=["calc.py"])
    # a finished run's config.yaml holds the apps server of its own apps world
    config.tools.mcp_servers = [own_server, apps_server_config(Path("/tmp/runs/mixed/apps_world"))]
    folder = use_fresh_world(config, 7)
    assert folder == Path("/tmp/runs/mixed/world-seed7") == Path(config.data.world_dir)
    assert config.data.world.seed == 7 and config.data.apps.seed == 7
    assert config.data.apps_world_dir == "/tmp/runs/mixed/apps_world-seed7"
    assert config.tools.mcp_servers == [own_server]  # prepare_apps adds the fresh world's server
    assert all(server.name != APPS_SOURCE_NAME for server in config.tools.mcp_servers)

    apps_only = ExperimentConfig()
    apps_only.experiment.output_dir, apps_only.experiment.name = "/tmp/runs", "apps"
    apps_only.data.source, apps_only.data.apps.seed = "apps", 3
    assert use_fresh_world(apps_only, 4) == Path("/tmp/runs/apps/apps_world-seed4")
    assert apps_only.data.world.seed == 0 and not apps_only.data.world_dir  # the QA world is not touched
    with pytest.raises(ConfigError, match="own apps world seed"):
        use_fresh_world(apps_only, 4)


def test_eval_structures_keeps_those_questions_before_num_questions_applies(tmp_path):
    world = [f"experiment.output_dir={tmp_path}", "data.world.num_entities_per_kind=20", "data.world.num_train=20",
             "data.world.num_validation=4", "data.world.num_test=30"]
    every = load_eval_questions(load_config(QUICKSTART, [*world, "eval.num_questions=0"]))["world"]
    parallel = load_eval_questions(load_config(QUICKSTART, [*world, "eval.structures=[parallel]",
                                                            "eval.num_questions=4"]))["world"]
    assert [question.id for question in parallel] == [q.id for q in every if q.structure == "parallel"][:4]
    assert {question.structure for question in every} == {"parallel", "sequential", "single"}


def test_eval_structures_naming_an_absent_or_unknown_structure_is_an_error(tmp_path):
    singles_only = [f"experiment.output_dir={tmp_path}", "data.world.num_entities_per_kind=20",
                    "data.world.num_train=20", "data.world.num_validation=4", "data.world.num_test=6",
                    "data.world.structure_mix={single: 1.0}", "eval.structures=[parallel]"]
    with pytest.raises(ConfigError, match="'eval.structures' is \\['parallel'\\], but dataset 'world' has only single"):
        load_eval_questions(load_config(QUICKSTART, singles_only))
    with pytest.raises(ConfigError, match="eval.structures"):
        load_config(QUICKSTART, ["eval.structures=[comparison]"])
