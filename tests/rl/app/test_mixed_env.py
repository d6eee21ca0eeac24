"""Mixed training (data.source=mixed, rl/app/mixed_env.py) without a model: the config's checks, the training
questions' share, the eval datasets, the SFT split, the step metrics split by environment."""

from __future__ import annotations

import pytest

from data.apps.world import APPS_SOURCE_NAME
from data.trajectory import Group, ToolCall, Trajectory, Turn
from data.types import Question, question_environment
from rl.app.evaluate import load_eval_questions, load_validation_questions
from rl.app.mixed_env import demonstration_counts, mixed_training_questions, prepare_mixed
from rl.app.registries import load_experiment
from rl.app.sft import demonstrations_by_environment
from rl.app.train import rollout_metrics
from rl.config import ConfigError

CONFIG = "configs/mixed_quickstart.yaml"
TINY_WORLDS = ["data.world.num_entities_per_kind=20", "data.world.num_train=40", "data.world.num_validation=4",
               "data.world.num_test=6", "data.apps.num_train=10", "data.apps.num_validation=3",
               "data.apps.num_test=5"]


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("runs")
    return load_experiment(CONFIG, [f"experiment.output_dir={output_dir}", "data.mixed.apps_fraction=0.2",
                                    *TINY_WORLDS])


@pytest.mark.parametrize("override, key, hint", [
    ("data.mixed.apps_fraction=1.0", "data.mixed.apps_fraction", "data.source=apps"),
    ("data.mixed.apps_fraction=0", "data.mixed.apps_fraction", "must be in (0, 1)"),
    ("tools.enabled=[]", "tools.enabled", "add search"),
    ("reward.environment_presets={}", "reward.environment_presets", "{apps: apps}"),
    ("rollout.protocol=tags", "rollout.protocol", "rollout.protocol=function_call"),
    ("reward.environment_presets.apps=appz", "reward.environment_presets.apps", "'apps'"),
    ("sft.num_trajectories=1", "sft.num_trajectories", "at least 2"),
])
def test_a_bad_mixed_config_names_the_key_and_the_fix(override, key, hint):
    with pytest.raises(ConfigError) as error:
        load_experiment(CONFIG, [override])
    assert f"key '{key}'" in str(error.value) and hint in str(error.value)
    assert f"command line '{override}'" in str(error.value)


def test_the_training_questions_hold_the_apps_share(config):
    worlds = prepare_mixed(config)
    assert [server.name for server in config.tools.mcp_servers] == [APPS_SOURCE_NAME]  # the apps server joined
    questions = mixed_training_questions(config, worlds)
    environments = [question_environment(question) for question in questions]
    # 40 QA questions are 80% of a list of 50: the 10 apps tasks are the other 20%, each once
    assert environments.count("qa") == 40 and environments.count("apps") == 10
    assert all(question.metadata.get("app_task") for question in questions if question_environment(question) == "apps")


def test_eval_and_validation_report_one_dataset_per_environment(config):
    evaluated = load_eval_questions(config)
    assert {name: len(questions) for name, questions in evaluated.items()} == {"world": 6, "apps": 5}
    assert {question_environment(question) for question in evaluated["world"]} == {"qa"}
    assert {question_environment(question) for question in evaluated["apps"]} == {"apps"}
    validated = load_validation_questions(config)
    assert {name: len(questions) for name, questions in validated.items()} == {"world": 4, "apps": 3}


def test_a_bad_eval_split_names_the_splits_of_both_worlds(config):
    config.eval.split = "dev"
    try:
        with pytest.raises(ConfigError, match="'eval.split' is 'dev'.*splits test, train, validation"):
            load_eval_questions(config)
    finally:
        config.eval.split = "test"


@pytest.mark.parametrize("num_trajectories, apps_fraction, expected", [
    (1600, 0.5, {"qa": 800, "apps": 800}), (10, 0.25, {"qa": 7, "apps": 3}),
    (10, 0.01, {"qa": 9, "apps": 1}), (10, 0.99, {"qa": 1, "apps": 9}),  # at least one of each kind
])
def test_the_warm_start_splits_its_demonstrations_by_the_share(config, num_trajectories, apps_fraction, expected):
    config.sft.num_trajectories, config.data.mixed.apps_fraction = num_trajectories, apps_fraction
    assert demonstration_counts(config) == expected


def test_the_sft_summary_counts_the_demonstrations_of_each_environment():
    from datasets import Dataset

    mixed = Dataset.from_dict({"input_ids": [[1], [2], [3]], "environment": ["qa", "apps", "qa"]})
    assert demonstrations_by_environment(mixed) == {"environments": {"qa": 2, "apps": 1}}
    assert demonstrations_by_environment(Dataset.from_dict({"input_ids": [[1]]})) == {}


def group(question: Question, rewards: list[float], components: dict[str, float], calls_per_turn: list[int]) -> Group:
    trajectories = []
    for reward in rewards:
        turns = [Turn(text="", calls=[ToolCall("search", {"query": "x"}) for _ in range(calls)])
                 for calls in calls_per_turn]
        trajectories.append(Trajectory(question=question, prompt_ids=[], turns=turns, reward=reward,
                                       reward_components=dict(components)))
    return Group(group_id=question.id, question=question, trajectories=trajectories, policy_version=0)


def test_step_metrics_are_split_by_environment():
    qa = Question(id="q", question="Who?", answers=["Ana"], structure="parallel")
    apps = Question(id="t", question="Book it", answers=["done"], structure="sequential",
                    metadata={"environment": "apps", "app_task": {"structure": "chain"}})
    groups = [group(qa, [1.0, 0.0], {"exact_match": 1.0}, [2, 0]),  # one round of 2 calls, then the answer
              group(apps, [1.5, 0.5, 0.5, 0.5], {"apps_success": 0.25}, [1, 1, 0])]
    metrics = rollout_metrics(groups, by_environment=True)
    assert metrics["reward/total/qa"] == pytest.approx(0.5)
    assert metrics["reward/total/apps"] == pytest.approx(0.75)
    assert metrics["reward/total"] == pytest.approx((1.0 + 0.0 + 1.5 + 0.5 * 3) / 6)
    assert metrics["reward/exact_match/qa"] == 1.0 and "reward/exact_match/apps" not in metrics
    assert metrics["reward/apps_success/apps"] == 0.25 and "reward/apps_success/qa" not in metrics
    assert metrics["rollout/model_calls/qa"] == 2 and metrics["rollout/model_calls/apps"] == 3
    assert metrics["rollout/subqueries_per_round/qa"] == 2 and metrics["rollout/subqueries_per_round/apps"] == 1
    assert metrics["reward/total/parallel"] == pytest.approx(0.5)  # the per-structure keys stay
    assert metrics["reward/total/chain"] == pytest.approx(0.75)
    unsplit = rollout_metrics(groups)
    assert not any(key.endswith(("/qa", "/apps")) for key in unsplit)


def test_the_mixed_warm_start_joins_qa_demonstrations_that_end_on_the_cue_and_apps_episodes(
        tmp_path, qwen25_chat_template):
    """build_mixed_sft_dataset on tiny worlds: both environments' rows in one dataset, the QA expert's
    forced_answer column kept (True for its rows at share 1.0) and False on the apps solver's."""
    import copy
    import tarfile
    from pathlib import Path

    from transformers import AutoTokenizer

    from rl.app.expert import FORCED_ANSWER_COLUMN
    from rl.app.mixed_env import build_mixed_sft_dataset

    with tarfile.open(Path(__file__).parents[2] / "fixtures" / "qwen2-tokenizer.tgz") as archive:
        archive.extractall(tmp_path, filter="data")
    tokenizer = copy.copy(AutoTokenizer.from_pretrained(tmp_path / "qwen2-tok", local_files_only=True))
    tokenizer.chat_template = qwen25_chat_template
    config = load_experiment(CONFIG, [f"experiment.output_dir={tmp_path / 'runs'}", "data.mixed.apps_fraction=0.5",
                                      *TINY_WORLDS, "sft.num_trajectories=8", "sft.forced_answer_fraction=1.0",
                                      "rollout.max_context_tokens=12000", "rollout.max_new_tokens_per_turn=512",
                                      "rollout.max_observation_tokens=600"])
    dataset = build_mixed_sft_dataset(config, tokenizer)

    rows = list(zip(dataset["environment"], dataset[FORCED_ANSWER_COLUMN]))
    assert {environment for environment, _ in rows} == {"qa", "apps"}
    assert all(forced == (environment == "qa") for environment, forced in rows)
