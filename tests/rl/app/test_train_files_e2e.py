"""End-to-end on your own data with a plugin: `fanout train` with data.source=files, SFT on, and `plugins:`.

The data are JSONL files with columns of their own (read by the generic loader through data.columns) and a
corpus file; the plugin, a file in a temporary folder outside the repository, registers a reward, a tool
(search that also appends every query it serves to a log file, with the Ray actor it ran in) and a protocol
(the tags grammar, its <search> sub-queries sent to that tool). One tiny run through the CLI checks that:

- the SFT warm-start learns from the files (no AttributeError after config.yaml) and its loss curve is in
  metrics.jsonl;
- the Ray rollout actors imported the plugin: its reward is in every training row and its tool served
  queries inside actors (the log names the actors);
- eval.every_steps evaluated the validation file during training, and the final eval the eval file.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from data.config import WorldConfig
from data.corpus import write_jsonl
from data.world import generate_world
from cli_runs import metrics_rows, train_run

pytestmark = pytest.mark.e2e

STEPS = 2
EVAL_QUESTIONS = 6

PLUGIN = '''
"""A user's plugin: a reward, a logging search tool, and the tags protocol routed to that tool."""

import json
import os

from rewards import register_reward
from rewards.parsing import PROTOCOLS as REWARD_GRAMMARS
from rollouts.protocols import TagsProtocol, register_protocol
from rollouts.tools import SearchTool, register_tool

TOOL_LOG = {tool_log!r}


@register_reward("answer_brevity")
def answer_brevity(trajectory, config):
    """1 for a one-word answer, 1/n for n words; not applicable without an answer."""
    if not trajectory.final_answer:
        return None
    return 1.0 / len(trajectory.final_answer.split())


def ray_actor_id():
    try:
        import ray

        return ray.get_runtime_context().get_actor_id() if ray.is_initialized() else None
    except Exception:
        return None


class LoggedSearch:
    name = "logged_search"
    description = "Search the corpus (and keep a log of the queries)."
    parameters = SearchTool.parameters

    def __init__(self, search):
        self.search = search

    async def call(self, arguments):
        with open(TOOL_LOG, "a") as handle:
            handle.write(json.dumps({{"pid": os.getpid(), "actor": ray_actor_id(), "query": arguments["query"]}}) + "\\n")
        return await self.search.call(arguments)


@register_tool("logged_search")
def build_logged_search(tools_config, retriever_config, retriever):
    return LoggedSearch(SearchTool(retriever, topk=retriever_config.topk,
                                   max_passage_chars=retriever_config.max_passage_chars))


@register_protocol("tags_logged")
class TagsThroughLoggedSearch(TagsProtocol):
    """The tags protocol whose <search> sub-queries call logged_search."""

    def _parse(self, turn_text):
        action = super()._parse(turn_text)
        for call in action.calls:
            call.name = "logged_search"
        return action


REWARD_GRAMMARS.add("tags_logged", REWARD_GRAMMARS["tags"])  # the rewards read its turns as tags
'''

COLUMNS = "{id: qid, question: query, answers: answer, structure: kind, sub_questions: hops}"


def write_questions(path: Path, questions, keep_hops: bool = True) -> Path:
    """The questions in a layout of the user's own (not the Search-R1 one)."""
    rows = [{"qid": question.id, "query": question.question, "answer": question.answers,
             "kind": question.structure, **({"hops": question.sub_questions} if keep_hops else {})}
            for question in questions]
    return write_jsonl(path, rows)


@pytest.fixture(scope="module")
def files_run(tmp_path_factory):
    data_dir, plugin_dir = tmp_path_factory.mktemp("my_data"), tmp_path_factory.mktemp("my_plugin")
    world = generate_world(WorldConfig(seed=0, num_entities_per_kind=20, num_train=100, num_validation=10,
                                       num_test=24))
    corpus = write_jsonl(data_dir / "corpus.jsonl", world.documents)
    train = write_questions(data_dir / "train.jsonl", world.splits["train"])
    validation = write_questions(data_dir / "validation.jsonl", world.splits["validation"])
    test = write_questions(data_dir / "test.jsonl", world.splits["test"], keep_hops=False)  # real data often lacks them
    tool_log = plugin_dir / "tool_calls.jsonl"
    plugin = plugin_dir / "my_plugin.py"
    plugin.write_text(PLUGIN.format(tool_log=str(tool_log)))
    output_dir = tmp_path_factory.mktemp("runs")
    overrides = [
        f"plugins=[{plugin}]",
        "data.source=files", f"data.train_files.my_qa={train}", f"data.validation_files.my_qa={validation}",
        f"data.eval_files.my_qa={test}", f"data.corpus_path={corpus}", f"data.columns.my_qa={COLUMNS}",
        "tools.enabled=[search,logged_search]", "rollout.protocol=tags_logged", "reward.weights.answer_brevity=0.05",
        "model.tiny.hidden_size=64", "model.tiny.intermediate_size=128", "model.tiny.vocab_size=1024",
        "model.tiny.pretrain_steps=0", "sft.num_trajectories=200", "sft.max_steps=100", "sft.batch_size=8",
        "sft.learning_rate=5e-3",
        f"grpo.total_steps={STEPS}", "rollout.questions_per_step=4", "rollout.group_size=4",
        "rollout.max_new_tokens_per_turn=24", "rollout.max_turns=3", f"eval.every_steps={STEPS}",
        f"eval.num_questions={EVAL_QUESTIONS}", "logging.wandb_mode=disabled", "logging.progress_bar=false",
    ]
    run_dir = train_run("configs/quickstart.yaml", output_dir, "files", overrides)
    rows = metrics_rows(run_dir)
    tool_calls = [json.loads(line) for line in tool_log.read_text().splitlines()] if tool_log.exists() else []
    return run_dir, rows, tool_calls, plugin


def test_the_run_trained_on_the_files_with_the_sft_warm_start(files_run):
    run_dir, rows, _, plugin = files_run
    assert (run_dir / "sft" / "config.json").is_file() and (run_dir / "checkpoints" / f"checkpoint-{STEPS}").is_dir()
    assert f"- {plugin}" in (run_dir / "config.yaml").read_text()
    sft_rows = [row for row in rows if "sft/step" in row]
    assert sft_rows and all(row["step"] == 0 and "sft/loss" in row for row in sft_rows)
    assert sft_rows[-1]["sft/loss"] < sft_rows[0]["sft/loss"]


def test_the_plugin_reward_was_scored_in_the_rollout_actors(files_run):
    _, rows, _, _ = files_run
    training_rows = [row for row in rows if "reward/total" in row]
    assert [row["step"] for row in training_rows] == list(range(1, STEPS + 1))
    for row in training_rows:
        assert 0 < row["reward/answer_brevity"] <= 1  # scored by the actors, averaged over answered episodes
        assert row["rollout/tool_calls"] > 0


def test_the_plugin_tool_served_queries_inside_ray_actors(files_run):
    _, _, tool_calls, _ = files_run
    in_actors = [call for call in tool_calls if call["actor"]]
    assert in_actors, "no logged_search call ran inside a Ray actor"
    assert {call["pid"] for call in in_actors}.isdisjoint(call["pid"] for call in tool_calls if not call["actor"])
    assert any(not call["actor"] for call in tool_calls)  # the SFT expert and the evaluations, in the driver


def test_validation_during_training_and_the_final_eval_on_the_files(files_run):
    run_dir, rows, _, _ = files_run
    validation_rows = [row for row in rows if "eval/validation/my_qa/all/em" in row]
    assert [row["step"] for row in validation_rows] == [STEPS]
    assert validation_rows[0]["eval/validation/my_qa/all/n"] == EVAL_QUESTIONS
    results = json.loads((run_dir / "eval.json").read_text())
    assert list(results) == ["my_qa"] and results["my_qa"]["all"]["n"] == EVAL_QUESTIONS
