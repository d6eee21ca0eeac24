"""SFT warm-start: TRL's SFTTrainer on scripted-expert trajectories, loss on the model's turns (by default).

GRPO from a randomly initialised tiny model would never find the protocol, so `fanout train` first
teaches it by imitation: the scripted expert (rl/app/expert.py) plays training questions with the real
retriever, and TRL's `SFTTrainer` fits the pre-tokenised trajectories with `completion_only_loss`
(the `completion_mask` column zeroes the loss on the prompt and on every <information> block;
`sft.loss_on=all` puts it on every token instead, docs/RESULTS.md "Reading"). The mixture fans out on
only `sft.parallel_fraction` of the parallel questions, so the warm-started policy mostly searches one
sub-query per turn and RL has something to learn.

`ensure_warm_start` is what the training entry point calls: it builds the tiny model (tokenizer trained
on the data's texts) when `model.path` is empty, runs SFT into <run_dir>/<sft.output_subdir> (reused if
it is already there and `sft.reuse`), and returns the folder GRPO starts from. It learns from a
`WarmStartSource`: the generated world, or the run's own training questions and corpus (`data.source=files`:
the expert then searches each question's sub-questions, or the question itself when the data has none), or
another environment's demonstrations (the apps solver's, rl/app/apps_env.py; both kinds in a mixed run,
rl/app/mixed_env.py, whose sft_summary.json counts the rows of each environment under `environments`).

On CPU, TRL's fused LM head is wrapped by rl/grpo/lm_head.py's compact one (the vocabulary projection only
on the model's turns; the same loss, about 3x the steps per second).

The loss curve is written to <out_dir>/sft_log.jsonl (`sft/loss`, `sft/learning_rate`, ...), and the
training run copies it into its own metrics.jsonl and wandb run (`log_sft_curve`: rows at step 0 with
`sft/step`), so the warm-start's loss sits next to GRPO's curves.

What it simplifies on purpose: one process on the configured device (no DeepSpeed for this short
stage), length-grouped right-padded batches without an attention mask (see `CausalPaddingCollator`),
no evaluation inside the trainer (the GRPO run evaluates), TRL's own progress bar and no TRL reporting
integration (`report_to="none"`: the curve reaches wandb through the run's MetricsLogger, in one wandb run).

    python -c "from rl.config import load_config; from rl.app.sft import WarmStartSource, ensure_warm_start; \
               from data.world import ensure_world; c = load_config('configs/quickstart.yaml'); \
               print(ensure_warm_start(c, WarmStartSource.from_world(ensure_world(c.run_dir / 'world', c.data.world))))"
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from data.types import Question
from data.world import name_lexicon
from rl.config import ExperimentConfig
from rl.app.modeling import create_tiny_checkpoint
from rollouts.model_loading import load_model_and_tokenizer, local_model_folder, set_offline_mode
from rl.grpo.lm_head import install_compact_lm_head

logger = logging.getLogger(__name__)

SFT_LOG_FILE_NAME = "sft_log.jsonl"
SFT_SUMMARY_FILE_NAME = "sft_summary.json"
ENVIRONMENT_COLUMN = "environment"  # a mixed run's SFT rows: the environment of each demonstration ("qa", "apps")
BASE_MODEL_SUBDIR = "base"
LEXICON_REPEATS = 20  # copies of the name lexicon in the tokenizer's training texts
WARMUP_FRACTION = 0.05  # share of sft.max_steps spent warming the learning rate up


def world_texts(world: Any) -> list[str]:
    """The texts the tiny model's tokenizer is fitted on: the training questions (with their gold
    sub-questions and answers) and the passages they cite. Test entities that no training question asks
    about are then split into tokens the way a freshly generated world's would be."""
    documents = {document["id"]: document["contents"] for document in world.documents}
    texts, cited = [], set()
    for question in world.splits["train"]:
        texts.append(question.question)
        texts.extend(question.sub_questions)
        texts.extend(question.answers)
        cited.update(question.supporting_doc_ids)
    texts.extend(documents[doc_id] for doc_id in sorted(cited) if doc_id in documents)
    # Every word a generated name can contain, often enough that each becomes one token (given the vocabulary
    # room, model.tiny.vocab_size): a name in any world, this one's test split or a fresh seed's, is then
    # a few whole tokens the policy copies, never pieces it has not seen together.
    texts.extend([" " + " ".join(name_lexicon().words())] * LEXICON_REPEATS)
    return texts


def file_texts(questions: list[Question], corpus_path: str) -> Iterator[str]:
    """The same texts for data.source=files: the corpus file's passages (if any), then the questions."""
    if corpus_path:
        from data.corpus import iter_jsonl

        for _, row in iter_jsonl(corpus_path):
            yield row["contents"]
    for question in questions:
        yield question.question
        yield from question.sub_questions
        yield from question.answers


@dataclass
class WarmStartSource:
    """What the warm start learns from: the questions the expert plays, the corpus its searches read."""

    questions: list[Question]  # the training questions
    documents: list[dict] | None = None  # the corpus in memory (the generated world), or
    corpus_path: str = ""  # a corpus file ("" when retriever.backend=http serves it)
    world: Any = None  # data.world.World when the data is the generated world
    texts: list[str] | None = None  # the tokenizer's texts of another environment (the apps: rl/app/apps_env.py)
    # strings the tiny tokenizer keeps as one token each (model.tiny.whole_identifiers; the apps world's ids)
    identifiers: list[str] = field(default_factory=list)
    # another environment's demonstrations: fn(config, tokenizer) -> Dataset (input_ids, completion_mask)
    dataset_builder: Callable[[Any, Any], Any] | None = None

    @classmethod
    def from_world(cls, world: Any) -> "WarmStartSource":
        return cls(questions=world.splits["train"], documents=world.documents, world=world)

    def tokenizer_texts(self) -> Iterable[str]:
        """What the tiny model's tokenizer is trained on."""
        if self.texts is not None:
            return self.texts
        return world_texts(self.world) if self.world is not None else file_texts(self.questions, self.corpus_path)


def is_saved_model(path: Path) -> bool:
    return (path / "config.json").is_file()


def build_expert_dataset(config: ExperimentConfig, tokenizer: Any, source: WarmStartSource) -> Any:
    """Expert demonstrations on the training questions, observed through the same tools as rollouts."""
    if source.dataset_builder is not None:
        return source.dataset_builder(config, tokenizer)
    from rl.app.expert import write_expert_dataset
    from rollouts.environment import build_environment

    environment = build_environment(config.rollout, config.tools, config.retriever, documents=source.documents,
                                    corpus_path=source.corpus_path or None)
    protocol, executor = environment.protocol, environment.executor
    try:
        dataset = write_expert_dataset(
            source.questions, protocol, tokenizer, executor, config.rollout,
            num_trajectories=config.sft.num_trajectories, parallel_fraction=config.sft.parallel_fraction,
            seed=config.experiment.seed, think=config.sft.expert_think,
            forced_answer_fraction=config.sft.forced_answer_fraction,
        )
        if config.sft.comparison_drills:
            dataset = with_comparison_drills(config, tokenizer, source.questions, dataset)
        return dataset
    finally:
        close = getattr(executor, "close", None)
        if callable(close):
            close()


class CausalPaddingCollator:
    """TRL's padding collator without the attention mask: right padding under a causal mask needs none.

    A real token only attends to earlier positions, and with right padding those are all real, so the
    attention mask changes nothing for the tokens that carry loss (padding positions are labelled -100).
    Dropping it keeps attention on PyTorch's fused causal kernel; with an explicit padding mask, CPU
    attention takes a generic path several times slower. Position ids are passed explicitly (0..L-1 on
    every row) so transformers never mistakes padding for packed sequences.
    """

    def __init__(self, pad_token_id: int):
        from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

        self.padding_collator = DataCollatorForLanguageModeling(pad_token_id=pad_token_id)

    def __call__(self, examples: list[dict]) -> dict:
        import torch

        batch = self.padding_collator(examples)
        attention_mask_BL = batch.pop("attention_mask")
        batch_size, length = attention_mask_BL.shape
        batch["position_ids"] = torch.arange(length).unsqueeze(0).expand(batch_size, length)
        return batch


def with_comparison_drills(config: ExperimentConfig, tokenizer: Any, questions: list, dataset: Any) -> Any:
    """`dataset` and sft.comparison_drills drills after it. Drills take their names from the world's
    earliest / latest comparisons; when the training questions hold none (the user's own files, a benchmark),
    the demonstrations are used alone and a warning says so, as sft.expert_think writes no thought there."""
    from datasets import concatenate_datasets

    from data.worked_comparisons import drill_pool
    from rl.app.expert import comparison_drill_dataset

    if not drill_pool(questions):
        logger.warning("sft.comparison_drills=%d: none of the %d training questions is an earliest / latest "
                       "comparison with the generated world's metadata, so no drills are written (set "
                       "sft.comparison_drills=0 to silence this)",
                       config.sft.comparison_drills, len(questions))
        return dataset
    drills = comparison_drill_dataset(questions, tokenizer, config.sft.comparison_drills,
                                      config.sft.expert_think, seed=config.experiment.seed,
                                      loss=config.sft.drill_loss)
    return concatenate_datasets([dataset, drills])


def trainer_arguments(config: ExperimentConfig, out_dir: Path) -> Any:
    """TRL's SFTConfig from our `sft` section (TRL's own names for everything else)."""
    from trl import SFTConfig as TRLSFTConfig

    sft = config.sft
    on_cpu = config.experiment.device == "cpu"
    return TRLSFTConfig(
        output_dir=str(out_dir / "trainer"),
        max_steps=sft.max_steps,
        per_device_train_batch_size=sft.batch_size,
        learning_rate=sft.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=max(1, math.ceil(WARMUP_FRACTION * sft.max_steps)),
        weight_decay=0.0,
        max_grad_norm=1.0,
        completion_only_loss=sft.loss_on == "model_turns",  # True: the completion_mask column, loss on model turns only
        max_length=config.rollout.max_context_tokens,
        padding_free=False,
        # Batches of similar length (random megabatches sorted by length): a third fewer padded tokens.
        train_sampling_strategy="group_by_length",
        bf16=config.model.dtype == "bfloat16" and not on_cpu,
        fp16=False,
        activation_checkpointing=config.model.gradient_checkpointing,  # transformers 5 name of gradient checkpointing
        use_cpu=on_cpu,
        seed=config.experiment.seed,
        data_seed=config.experiment.seed,
        logging_steps=max(1, min(50, sft.max_steps // 20)),
        save_strategy="no",
        report_to="none",
        disable_tqdm=not config.logging.progress_bar,
        dataloader_num_workers=0,
        dataset_num_proc=None,
    )


def lora_config(config: ExperimentConfig) -> Any:
    """peft's LoraConfig when model.lora.enabled (adapters are merged into the saved model), else None."""
    lora = config.model.lora
    if not lora.enabled:
        return None
    from peft import LoraConfig as PeftLoraConfig

    return PeftLoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                          target_modules=list(lora.target_modules), task_type="CAUSAL_LM")


def run_sft(config: ExperimentConfig, base_model_dir: str | os.PathLike, source: WarmStartSource | None,
            out_dir: str | os.PathLike, dataset: Any = None) -> Path:
    """SFT the model in `base_model_dir` on expert trajectories; save model + tokenizer to `out_dir`.

    dataset: pre-tokenised trajectories (input_ids, completion_mask); built from `source` when None.
    Returns `out_dir`, which then holds a save_pretrained model, its tokenizer, sft_log.jsonl and
    sft_summary.json (steps, final loss, time, number of demonstrations). Everything is written to a
    staging folder renamed to `out_dir` at the end (replacing an older one).
    """
    from trl import SFTTrainer

    set_offline_mode()
    out_dir = Path(out_dir)
    staging_dir = staging_folder(out_dir)
    started = time.perf_counter()
    model, tokenizer = load_model_and_tokenizer(base_model_dir, dtype=config.model.dtype,
                                                device=config.experiment.device)
    if dataset is None:
        dataset = build_expert_dataset(config, tokenizer, source)
    data_s = time.perf_counter() - started
    trainer = SFTTrainer(model=model, args=trainer_arguments(config, staging_dir), train_dataset=dataset,
                         processing_class=tokenizer, data_collator=CausalPaddingCollator(tokenizer.pad_token_id),
                         peft_config=lora_config(config))
    if install_compact_lm_head(trainer.model):  # after SFTTrainer added its fused head, which it wraps
        logger.info("sft: compact LM head (the vocabulary projection at the loss positions only, rl/grpo/lm_head.py)")
    result = trainer.train()
    trained = trainer.model.merge_and_unload() if config.model.lora.enabled else trainer.model
    staging_dir.mkdir(parents=True, exist_ok=True)
    remove_if_empty(Path(trainer.args.output_dir))  # TRL's scratch folder; nothing is saved there (save_strategy=no)
    trained.save_pretrained(staging_dir)
    tokenizer.save_pretrained(staging_dir)
    summary = write_sft_logs(trainer.state.log_history, staging_dir, {
        "num_trajectories": len(dataset),
        "steps": result.global_step,
        "train_loss": result.training_loss,
        "data_s": round(data_s, 2),
        "total_s": round(time.perf_counter() - started, 2),
        "base_model": str(base_model_dir),
        **demonstrations_by_environment(dataset),
    })
    publish(staging_dir, out_dir)
    logger.info("sft: %d steps in %.0f s, final loss %.4f -> %s", summary["steps"], summary["total_s"],
                summary["final_loss"], out_dir)
    return out_dir


def demonstrations_by_environment(dataset: Any) -> dict:
    """{"environments": {environment: rows}} for a dataset with an `environment` column (a mixed run's), else {}."""
    if ENVIRONMENT_COLUMN not in getattr(dataset, "column_names", []):
        return {}
    counts: dict[str, int] = {}
    for environment in dataset[ENVIRONMENT_COLUMN]:
        counts[environment] = counts.get(environment, 0) + 1
    return {"environments": counts}


def staging_folder(final_dir: Path) -> Path:
    """A fresh sibling folder to write into; `publish` renames it, so a killed run never leaves half a model."""
    staging_dir = final_dir.parent / f".{final_dir.name}.partial"
    shutil.rmtree(staging_dir, ignore_errors=True)
    return staging_dir


def publish(staging_dir: Path, final_dir: Path) -> None:
    if final_dir.exists():
        shutil.rmtree(final_dir)
    os.replace(staging_dir, final_dir)


def remove_if_empty(folder: Path) -> None:
    if folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()


def write_sft_logs(log_history: list[dict], out_dir: Path, summary: dict) -> dict:
    """Write the trainer's log rows to sft_log.jsonl and the summary (plus the last logged loss) as JSON."""
    rows = [row for row in log_history if "loss" in row]
    with open(out_dir / SFT_LOG_FILE_NAME, "w") as handle:
        for row in rows:
            # TRL's num_tokens assumes padding-free rows once position_ids replace the attention mask: dropped.
            kept = {f"sft/{key}": value for key, value in row.items() if key not in ("step", "num_tokens")}
            handle.write(json.dumps({"step": row.get("step"), **kept}) + "\n")
    summary = {**summary, "final_loss": rows[-1]["loss"] if rows else summary.get("train_loss")}
    (out_dir / SFT_SUMMARY_FILE_NAME).write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def log_sft_curve(metrics_logger: Any, model_dir: str | os.PathLike) -> int:
    """Copy the SFT loss curve of the warm-start in `model_dir` (its sft_log.jsonl) into the run's metrics
    (MetricsLogger.log_stage: JSONL rows at step 0 with `sft/step`, wandb on its own axis); returns the
    number of rows (0 when `model_dir` holds no SFT log, e.g. a base model or model.path with SFT off)."""
    log_path = Path(model_dir) / SFT_LOG_FILE_NAME
    if not log_path.is_file():
        return 0
    rows = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    for row in rows:
        metrics_logger.log_stage("sft", row["step"], {key: value for key, value in row.items() if key != "step"})
    return len(rows)


def ensure_warm_start(config: ExperimentConfig, source: WarmStartSource) -> Path:
    """The model folder GRPO starts from, building the tiny model and/or running SFT as configured.

    model.path empty: the tiny model (tokenizer trained on the source's texts) in <run_dir>/base, then SFT
    into <run_dir>/<sft.output_subdir> unless sft.enabled is false. model.path given (a folder or a hub id):
    SFT from it when sft.enabled, else its folder itself. An existing warm-start folder is reused when sft.reuse.
    """
    run_dir = config.run_dir
    if config.model.path:
        base_dir = local_model_folder(config.model.path)  # a hub id: its folder in the hub cache
    else:
        base_dir = run_dir / BASE_MODEL_SUBDIR
        if not is_saved_model(base_dir):
            logger.info("building the tiny model and its tokenizer in %s", base_dir)
            staging_dir = staging_folder(base_dir)
            whole_tokens = source.identifiers if config.model.tiny.whole_identifiers else ()
            create_tiny_checkpoint(staging_dir, source.tokenizer_texts(), config.model.tiny, seed=config.experiment.seed,
                                   whole_tokens=whole_tokens)
            publish(staging_dir, base_dir)
    if not config.sft.enabled:
        return base_dir
    sft_dir = run_dir / config.sft.output_subdir
    if config.sft.reuse and is_saved_model(sft_dir):
        logger.info("reusing the SFT warm-start in %s (sft.reuse=true)", sft_dir)
        return sft_dir
    return run_sft(config, base_dir, source, sft_dir)


__all__ = ["CausalPaddingCollator", "WarmStartSource", "build_expert_dataset", "ensure_warm_start", "file_texts",
           "log_sft_curve", "run_sft", "trainer_arguments", "world_texts"]
