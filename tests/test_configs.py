"""Every shipped config loads; bad keys, wrong types and impossible combinations fail with exit code 2.

The first test is torchtune's test_configs idea: a config that no longer matches the schema is caught
here, not on a cluster. The CLI tests run `rl.cli.main` in-process (one also runs the `fanout` console
script) and read the message the user would see.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from rl.cli import main as cli_main
from rl.config import ConfigError, ExperimentConfig, field_docs, load_config

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
QUICKSTART = str(CONFIGS / "quickstart.yaml")


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda path: path.name)
def test_every_config_loads(path):
    config = load_config(path)
    assert isinstance(config, ExperimentConfig)
    assert config.batch_size % config.grpo.minibatches_per_step == 0


def test_deepspeed_configs_are_json_objects():
    for path in CONFIGS.glob("deepspeed/*.json"):
        assert isinstance(json.loads(path.read_text()), dict), path


def test_shipped_configs_exist():
    names = {path.name for path in CONFIGS.glob("*.yaml")}
    assert {"quickstart.yaml", "parallelsearch_qwen2.5_7b.yaml", "qwen2.5_3b_lora.yaml", "stock_cpu.yaml"} <= names


def test_gpu_recipe_values():
    config = load_config(CONFIGS / "parallelsearch_qwen2.5_7b.yaml", ["model.path=/models/qwen"])
    assert (config.rollout.engine, config.experiment.device, config.rollout.worker_num_gpus) == (
        "vllm",
        "cuda",
        1.0,
    )
    assert (config.deepspeed.zero_stage, config.deepspeed.precision) == (3, "bf16")
    # the paper's PPO script: lr 1e-6 warmed up over 28.5% of 1005 steps, KL 0.001, clip 0.2, 512 rollouts
    assert (config.grpo.learning_rate, config.grpo.warmup_steps, config.grpo.total_steps) == (1e-6, 286, 1005)
    assert (config.grpo.kl_coef, config.grpo.clip_eps_low, config.grpo.clip_eps_high) == (0.001, 0.2, 0.2)
    assert config.batch_size == 512 and config.rollout.group_size == 4
    assert (config.rollout.max_turns, config.retriever.topk, config.retriever.backend) == (4, 3, "http")
    assert (config.rollout.max_new_tokens_per_turn, config.rollout.temperature, config.rollout.top_p) == (500, 1.0, 1.0)
    assert config.rollout.prompt_style == "full" and config.rollout.protocol == "tags"
    assert config.reward.preset == "parallelsearch"
    assert set(config.data.train_files) == {"nq", "hotpotqa"}
    assert config.model.path == "/models/qwen"


def test_3b_lora_recipe_values():
    config = load_config(CONFIGS / "qwen2.5_3b_lora.yaml", ["model.path=/models/qwen3b"])
    assert config.model.lora.enabled and config.model.lora.r == 16 and "down_proj" in config.model.lora.target_modules
    assert (config.rollout.engine, config.rollout.num_workers, config.rollout.prompt_style) == ("vllm", 1, "full")
    assert config.grpo.learning_rate == 1e-5 and config.grpo.kl_coef > 0 and not config.sft.enabled
    assert config.batch_size % config.grpo.minibatches_per_step == 0


def test_stock_cpu_recipe_runs_a_stock_model_through_the_whole_pipeline(monkeypatch):
    monkeypatch.delenv("MODEL_PATH", raising=False)
    config = load_config(CONFIGS / "stock_cpu.yaml")
    assert config.model.path == "Qwen/Qwen2.5-0.5B-Instruct"  # a hub id by default
    assert (config.data.source, config.sft.enabled, config.experiment.device) == ("world", True, "cpu")
    assert config.grpo.total_steps <= 5 and config.rollout.engine == "hf"
    assert config.rollout.prompt_style == "full"  # "auto" for a model given in model.path
    monkeypatch.setenv("MODEL_PATH", "/models/other")
    assert load_config(CONFIGS / "stock_cpu.yaml").model.path == "/models/other"


@pytest.mark.parametrize("model_path, style", [("", "compact"), ("/models/qwen", "full")])
def test_automatic_prompt_style_is_full_for_a_given_model_and_compact_for_the_tiny_one(model_path, style, tmp_path):
    path = tmp_path / "auto.yaml"
    path.write_text(f"model:\n  path: '{model_path}'\n")
    assert ExperimentConfig().rollout.prompt_style == "auto"
    assert load_config(path).rollout.prompt_style == style
    assert load_config(path, ["rollout.prompt_style=minimal"]).rollout.prompt_style == "minimal"


def test_gpu_recipe_reads_paths_from_the_environment(monkeypatch):
    monkeypatch.setenv("MODEL_PATH", "/shared/Qwen2.5-7B-Instruct")
    monkeypatch.setenv("DATA_DIR", "/shared/data")
    config = load_config(CONFIGS / "parallelsearch_qwen2.5_7b.yaml")
    assert config.model.path == "/shared/Qwen2.5-7B-Instruct"
    assert config.data.train_files["nq"] == "/shared/data/nq_train.jsonl"


def test_unknown_key_exits_2_naming_the_nearest_valid_key(capsys):
    assert cli_main(["config", "show", QUICKSTART, "grpo.lerning_rate=1"]) == 2
    error = capsys.readouterr().err
    assert "grpo.lerning_rate" in error and "grpo.learning_rate" in error


def test_unknown_key_in_yaml_names_the_file(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text("rollout:\n  grup_size: 4\n")
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert str(path) in str(error.value) and "rollout.grup_size" in str(error.value)
    assert "rollout.group_size" in str(error.value)


def test_yaml_type_error_names_the_file_and_key(tmp_path):
    path = tmp_path / "bad_type.yaml"
    path.write_text("grpo:\n  learning_rate: fast\n")
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert str(path) in str(error.value) and "grpo.learning_rate" in str(error.value)


def test_invalid_yaml_names_the_file(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("grpo: [1, 2\n")
    with pytest.raises(ConfigError, match="broken.yaml"):
        load_config(path)


def test_override_is_applied_and_printed(capsys):
    assert cli_main(["config", "show", QUICKSTART, "grpo.learning_rate=1e-5"]) == 0
    assert "  learning_rate: 1.0e-05\n" in capsys.readouterr().out


def test_override_type_error_exits_2(capsys):
    assert cli_main(["config", "show", QUICKSTART, "rollout.group_size=many"]) == 2
    assert "rollout.group_size" in capsys.readouterr().err


def test_batch_not_divisible_by_minibatches_exits_2(capsys):
    overrides = ["rollout.questions_per_step=3", "rollout.group_size=2", "grpo.minibatches_per_step=4"]
    assert cli_main(["config", "show", QUICKSTART, *overrides]) == 2
    assert "grpo.minibatches_per_step" in capsys.readouterr().err


@pytest.mark.parametrize(
    "overrides, key",
    [
        (["rollout.group_size=1"], "rollout.group_size"),
        (["rollout.engine=sglang"], "rollout.engine"),
        (["experiment.resume=true", "experiment.overwrite=true"], "experiment.resume"),
        (["data.source=files"], "data.train_files"),
        (["rollout.tensor_parallel_size=2"], "rollout.tensor_parallel_size"),  # the hf engine has none
        (["rollout.placement_strategy=FILL"], "rollout.placement_strategy"),
        (["rollout.lora_sync=adapter"], "rollout.lora_sync"),  # no LoRA, hf engine
        (["rollout.engine=vllm", "experiment.device=cuda", "rollout.worker_num_gpus=1",
          "rollout.tensor_parallel_size=2"], "rollout.worker_num_gpus"),
        (["rollout.gpu_memory_utilization=1.5"], "rollout.gpu_memory_utilization"),
        (["sft.forced_answer_fraction=1.5"], "sft.forced_answer_fraction"),
        (["sft.parallel_fraction=-0.1"], "sft.parallel_fraction"),
        (["sft.loss_on=observations"], "sft.loss_on"),
        (["data.apps.train_worlds=1", "data.apps.world_tasks=-1"], "data.apps.world_tasks"),
        (["data.apps.train_worlds=1", "data.apps.world_redraw=records"], "data.apps.world_redraw"),
        (["data.apps.train_families={stock_total: -2}"], "data.apps.train_families"),
    ],
)
def test_impossible_combinations_exit_2_naming_the_key(overrides, key, capsys, monkeypatch):
    monkeypatch.delenv("FANOUT_ALLOW_VLLM_CPU", raising=False)
    assert cli_main(["config", "show", QUICKSTART, *overrides]) == 2
    assert key in capsys.readouterr().err


def test_console_script_exit_code_is_2():
    result = subprocess.run(
        [sys.executable, "-m", "rl", "config", "show", QUICKSTART, "grpo.lerning_rate=1"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode == 2
    assert "grpo.learning_rate" in result.stderr


def test_config_reference_is_up_to_date(capsys):
    assert cli_main(["config", "docs"]) == 0
    generated = capsys.readouterr().out
    assert (
        (ROOT / "docs" / "CONFIG.md").read_text() == generated
    ), "docs/CONFIG.md is stale: regenerate it with `fanout config docs > docs/CONFIG.md`"
    for key, _type, _default, comment in field_docs():
        assert (
            comment
        ), f"config key {key} has no comment in the config module that owns its section (docs/CONFIG.md would leave it blank)"


def test_a_mapping_in_yaml_replaces_the_default_mapping(tmp_path):
    path = tmp_path / "weights.yaml"
    path.write_text("reward:\n  weights: {exact_match: 1.0, format: 0.1}\n")
    assert load_config(path).reward.weights == {"exact_match": 1.0, "format": 0.1}
    assert load_config(Path("configs/sequential_baseline.yaml")).reward.weights == {"exact_match": 1.0, "format": 0.1}


def test_a_mapping_override_replaces_and_a_dotted_override_adds_one_key():
    replaced = load_config(Path("configs/quickstart.yaml"), ["reward.weights={exact_match: 2.0}"])
    assert replaced.reward.weights == {"exact_match": 2.0}
    added = load_config(Path("configs/quickstart.yaml"), ["reward.weights.f1=0.5"])
    assert added.reward.weights == {"exact_match": 1.0, "format": 0.1, "efficiency": 0.3, "decomposition": 0.1,
                                    "f1": 0.5}


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda path: path.name)
def test_every_config_crosses_to_a_ray_actor_unchanged(path):
    """Actors and resumed runs rebuild the config with from_dict: a mapping must not regain default keys."""
    from rl.config import from_dict, to_dict

    config = load_config(path)
    assert to_dict(from_dict(to_dict(config))) == to_dict(config)


def test_sequential_baseline_rewards_correctness_and_format_only():
    from rl.config import from_dict, to_dict

    config = from_dict(to_dict(load_config(CONFIGS / "sequential_baseline.yaml")))
    assert config.reward.weights == {"exact_match": 1.0, "format": 0.1}
    assert config.tools.max_calls_per_turn == 1


def test_sequential_baseline_is_the_quickstart_but_for_its_rewards_and_one_call_per_turn():
    """The comparison trains both from one warm-start on one world: any other difference is drift."""
    from rl.config import to_dict

    quickstart, sequential = (to_dict(load_config(CONFIGS / name)) for name in ("quickstart.yaml",
                                                                               "sequential_baseline.yaml"))
    differences = {
        f"{section}.{key}"
        for section in quickstart
        for key in set(quickstart[section]) | set(sequential[section])
        if quickstart[section].get(key) != sequential[section].get(key)
    }
    assert differences == {"experiment.name", "reward.weights", "tools.max_calls_per_turn"}


@pytest.mark.parametrize(
    ("dotted", "built_in"),
    [
        ("rollout.protocol", "tags"),
        ("rollout.engine", "hf"),
        ("retriever.backend", "bm25"),
        ("reward.preset", "parallelsearch"),
        ("grpo.advantage_estimator", "rloo"),
    ],
)
def test_registry_backed_keys_accept_what_is_registered_and_nothing_else(dotted, built_in, monkeypatch):
    import importlib

    from rl.app.registries import check_registered_names as validate

    def config_with(value: str) -> ExperimentConfig:
        config = ExperimentConfig()
        section, name = dotted.split(".")
        setattr(getattr(config, section), name, value)
        return config

    validate(config_with(built_in))
    with pytest.raises(ConfigError, match=rf"key '{dotted}' is 'newly_added'; valid choices: .*'{built_in}'"):
        validate(config_with("newly_added"))
    module_name, registry_name = {
        "rollout.protocol": ("rollouts.protocols", "PROTOCOLS"),
        "rollout.engine": ("rollouts.engine", "ENGINES"),
        "retriever.backend": ("data.retriever", "RETRIEVER_BUILDERS"),
        "reward.preset": ("rewards.presets", "PRESETS"),
        "grpo.advantage_estimator": ("rl.grpo.core_algos", "ADVANTAGE_ESTIMATORS"),
    }[dotted]
    registry = getattr(importlib.import_module(module_name), registry_name)
    monkeypatch.setitem(registry, "newly_added", object())  # what a decorator does for an extension
    validate(config_with("newly_added"))  # accepted without editing any schema


def test_a_files_dataset_needs_a_registered_name_or_its_columns(tmp_path, capsys):
    files = ["data.source=files", f"data.train_files.my_qa={tmp_path / 'my_qa.jsonl'}",
             f"data.corpus_path={tmp_path / 'corpus.jsonl'}"]
    assert cli_main(["config", "show", QUICKSTART, *files]) == 2
    error = capsys.readouterr().err
    assert "unknown dataset(s) ['my_qa']" in error and "data.columns.<name>" in error
    assert cli_main(["config", "show", QUICKSTART, *files, "data.columns.my_qa={question: q, answer: a}"]) == 2
    assert "key 'data.columns.my_qa': unknown role(s) ['answer']" in capsys.readouterr().err
    assert cli_main(["config", "show", QUICKSTART, *files, "data.columns.my_qa={question: q, answers: a}"]) == 0
    assert "my_qa:\n      question: q\n      answers: a\n" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("rollout.group_size=1", "rollout.group_size"),  # a cross-field rule (validate)
        ("logging.wandb_mode=loud", "logging.wandb_mode"),  # a fixed choice
        ("rollout.protocol=smoke_signals", "rollout.protocol"),  # a registered name
        ("reward.weights.nonexistent=1.0", "reward.weights"),  # a part of a mapping
    ],
)
def test_an_invalid_value_from_the_command_line_is_blamed_on_the_command_line(override, key, capsys):
    assert cli_main(["config", "show", QUICKSTART, override]) == 2
    error = capsys.readouterr().err
    assert f"fanout: error: command line '{override}': key '{key}'" in error
    assert "quickstart.yaml" not in error


def test_an_invalid_value_from_the_yaml_is_still_blamed_on_the_yaml(tmp_path, capsys):
    path = tmp_path / "small_groups.yaml"
    path.write_text("rollout:\n  group_size: 1\n")
    assert cli_main(["config", "show", str(path), "grpo.learning_rate=1e-5"]) == 2
    assert f"fanout: error: {path}: key 'rollout.group_size'" in capsys.readouterr().err


@pytest.mark.parametrize("engine, lora, expected", [("vllm", True, ("adapter", 8)), ("vllm", False, ("merged", 0)),
                                                    ("hf", True, ("merged", 0))])
def test_automatic_lora_sync_sends_adapters_to_vllm_only(engine, lora, expected, monkeypatch):
    monkeypatch.setenv("FANOUT_ALLOW_VLLM_CPU", "1")
    config = load_config(QUICKSTART, [f"rollout.engine={engine}", f"model.lora.enabled={str(lora).lower()}"])
    assert (config.rollout.lora_sync, config.rollout.max_lora_rank) == expected
