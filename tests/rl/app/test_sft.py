"""SFT warm-start: completion-only labels, the mask-free collator, a few TRL steps lowering the loss, warm-start reuse."""

from __future__ import annotations

import json

import pytest
import torch

from rl.config import ExperimentConfig, TinyModelConfig
from data.config import RetrieverConfig
from rollouts.config import ToolsConfig
from rl.app.expert import write_expert_dataset
from rollouts.model_loading import load_model_and_tokenizer, load_tokenizer
from rl.app.sft import CausalPaddingCollator, WarmStartSource, ensure_warm_start, run_sft
from rollouts.protocols import build_protocol


def small_config(tmp_path, max_steps: int = 8) -> ExperimentConfig:
    config = ExperimentConfig()
    config.experiment.output_dir = str(tmp_path)
    config.experiment.name = "sft-test"
    config.model.tiny = TinyModelConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                        num_key_value_heads=1, intermediate_size=64, vocab_size=600)
    config.sft.num_trajectories = 12
    config.sft.max_steps = max_steps
    config.sft.batch_size = 4
    config.sft.learning_rate = 1e-2
    config.logging.progress_bar = False
    return config


@pytest.fixture(scope="module")
def expert_dataset(tiny_world, tiny_checkpoint):
    from data.retriever import build_retriever
    from rollouts.tools import build_tools

    tokenizer = load_tokenizer(tiny_checkpoint)
    executor = build_tools(ToolsConfig(), RetrieverConfig(), build_retriever(RetrieverConfig(),
                                                                             documents=tiny_world.documents))
    return write_expert_dataset(tiny_world.splits["train"][:12], build_protocol("tags"), tokenizer, executor,
                                num_trajectories=12, parallel_fraction=0.5, seed=0)


def completion_loss(model, dataset) -> float:
    """Mean next-token NLL over the model-turn tokens of every example (one example at a time, no padding)."""
    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for input_ids, completion_mask in zip(dataset["input_ids"], dataset["completion_mask"]):
            input_ids_1L = torch.tensor([input_ids])
            labels_1L = input_ids_1L.masked_fill(torch.tensor([completion_mask]) == 0, -100)
            num_targets = int(sum(completion_mask[1:]))
            total += model(input_ids=input_ids_1L, labels=labels_1L).loss.item() * num_targets
            count += num_targets
    return total / count


def test_sft_lowers_the_loss_on_the_demonstrations_and_saves_a_loadable_model(tmp_path, tiny_world, tiny_checkpoint,
                                                                              expert_dataset):
    torch.set_num_threads(1)
    config = small_config(tmp_path, max_steps=10)
    base_model, _ = load_model_and_tokenizer(tiny_checkpoint)
    loss_before = completion_loss(base_model, expert_dataset)

    out_dir = run_sft(config, tiny_checkpoint, WarmStartSource.from_world(tiny_world), tmp_path / "sft",
                      dataset=expert_dataset)

    model, tokenizer = load_model_and_tokenizer(out_dir)
    assert len(tokenizer) == len(load_tokenizer(tiny_checkpoint))
    assert completion_loss(model, expert_dataset) < loss_before - 0.5
    changed = [name for name, parameter in model.named_parameters()
               if not torch.equal(parameter, base_model.state_dict()[name])]
    assert len(changed) == len(list(model.named_parameters()))
    summary = json.loads((out_dir / "sft_summary.json").read_text())
    assert summary["steps"] == 10 and summary["num_trajectories"] == 12
    log_rows = [json.loads(line) for line in (out_dir / "sft_log.jsonl").read_text().splitlines()]
    assert log_rows and all("sft/loss" in row for row in log_rows)


def test_collated_labels_ignore_prompt_observations_and_padding(expert_dataset):
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    examples = []
    for input_ids, completion_mask in zip(expert_dataset["input_ids"][:3], expert_dataset["completion_mask"][:3]):
        labels = [token if bit else -100 for token, bit in zip(input_ids, completion_mask)]  # TRL's label rule
        examples.append({"input_ids": input_ids, "labels": labels})
    batch = CausalPaddingCollator(pad_token_id=0)(examples)

    assert "attention_mask" not in batch
    length = batch["input_ids"].shape[1]
    assert torch.equal(batch["position_ids"], torch.arange(length).expand(3, length))
    for row, completion_mask in enumerate(expert_dataset["completion_mask"][:3]):
        input_ids = expert_dataset["input_ids"][row]
        labels_L = batch["labels"][row]
        for position, bit in enumerate(completion_mask):
            assert labels_L[position].item() == (input_ids[position] if bit else -100)
        assert (labels_L[len(input_ids):] == -100).all()  # padding carries no loss either

    with_mask = DataCollatorForLanguageModeling(pad_token_id=0)(examples)
    assert torch.equal(with_mask["input_ids"], batch["input_ids"]) and torch.equal(with_mask["labels"], batch["labels"])


def first_trainer_batch(config: ExperimentConfig, tiny_checkpoint, dataset) -> list[tuple[dict, list[int]]]:
    """The first batch TRL's SFTTrainer builds from `dataset` under `config`: (the batch row's input_ids and labels,
    the completion_mask of the example it was padded from)."""
    from trl import SFTTrainer

    from rl.app.sft import trainer_arguments

    model, tokenizer = load_model_and_tokenizer(tiny_checkpoint)
    trainer = SFTTrainer(model=model, args=trainer_arguments(config, config.run_dir), processing_class=tokenizer,
                         train_dataset=dataset, data_collator=CausalPaddingCollator(tokenizer.pad_token_id))
    by_input = {tuple(ids): mask for ids, mask in zip(dataset["input_ids"], dataset["completion_mask"])}
    batch = next(iter(trainer.get_train_dataloader()))
    rows = []
    for input_ids_L, labels_L in zip(batch["input_ids"], batch["labels"]):
        completion_mask = next(mask for ids, mask in by_input.items() if list(ids) == input_ids_L[:len(ids)].tolist())
        rows.append(({"input_ids": input_ids_L, "labels": labels_L}, completion_mask))
    return rows


def test_trainer_builds_labels_from_the_completion_mask(tmp_path, tiny_checkpoint, expert_dataset):
    for row, completion_mask in first_trainer_batch(small_config(tmp_path), tiny_checkpoint, expert_dataset):
        input_ids_L, labels_L = row["input_ids"], row["labels"]
        expected_L = torch.full_like(labels_L, -100)
        expected_L[:len(completion_mask)] = torch.where(torch.tensor(completion_mask) == 1,
                                                        input_ids_L[:len(completion_mask)], -100)
        assert torch.equal(labels_L, expected_L)


def test_loss_on_all_puts_the_loss_on_every_real_token_and_none_on_padding(tmp_path, tiny_checkpoint, expert_dataset):
    config = small_config(tmp_path)
    config.sft.loss_on = "all"
    counted, model_turn_tokens = 0, 0
    for row, completion_mask in first_trainer_batch(config, tiny_checkpoint, expert_dataset):
        input_ids_L, labels_L, length = row["input_ids"], row["labels"], len(completion_mask)
        assert torch.equal(labels_L[:length], input_ids_L[:length])  # prompt and observations included
        assert (labels_L[length:] == -100).all()
        counted += length
        model_turn_tokens += sum(completion_mask)
    assert counted > 2 * model_turn_tokens


def test_loss_without_the_padding_mask_equals_the_loss_with_it(tiny_checkpoint, expert_dataset):
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    model, _ = load_model_and_tokenizer(tiny_checkpoint)
    examples = [{"input_ids": ids, "labels": [t if bit else -100 for t, bit in zip(ids, mask)]}
                for ids, mask in zip(expert_dataset["input_ids"][:4], expert_dataset["completion_mask"][:4])]
    with torch.no_grad():
        loss_with_mask = model(**DataCollatorForLanguageModeling(pad_token_id=0)(examples)).loss
        loss_without = model(**CausalPaddingCollator(pad_token_id=0)(examples)).loss
    assert torch.allclose(loss_with_mask, loss_without, atol=1e-5)


def test_warm_start_builds_the_tiny_model_then_reuses_the_sft_folder(tmp_path, tiny_world):
    config = small_config(tmp_path, max_steps=2)
    config.sft.enabled = False
    base_dir = ensure_warm_start(config, WarmStartSource.from_world(tiny_world))
    assert base_dir == config.run_dir / "base" and (base_dir / "config.json").is_file()

    config.sft.enabled = True
    sft_dir = ensure_warm_start(config, WarmStartSource.from_world(tiny_world))
    assert sft_dir == config.run_dir / "sft" and (sft_dir / "sft_summary.json").is_file()
    weights = next(sft_dir.glob("*.safetensors"))
    first_write = weights.stat().st_mtime_ns
    assert ensure_warm_start(config, WarmStartSource.from_world(tiny_world)) == sft_dir
    assert weights.stat().st_mtime_ns == first_write  # reused, not trained again

    config.model.path = str(sft_dir)
    config.sft.enabled = False
    assert ensure_warm_start(config, WarmStartSource.from_world(tiny_world)) == sft_dir


def test_warm_start_from_question_files_and_a_corpus_file(tmp_path, tiny_world, monkeypatch):
    """data.source=files: the tokenizer learns the corpus and questions, the expert plays the file's questions
    (their sub-questions, or the question itself when a row has none) against the corpus file."""
    from dataclasses import replace

    from data.corpus import write_jsonl
    from rl.app.sft import file_texts

    corpus_path = write_jsonl(tmp_path / "corpus.jsonl", tiny_world.documents)
    questions = [replace(question, sub_questions=[]) if index % 2 else question
                 for index, question in enumerate(tiny_world.splits["train"][:12])]
    source = WarmStartSource(questions=questions, corpus_path=str(corpus_path))
    texts = list(file_texts(questions, str(corpus_path)))
    assert texts[0] == tiny_world.documents[0]["contents"] and questions[-1].answers[-1] == texts[-1]

    import rl.app.sft

    tokenizer_texts = []
    real_create = rl.app.sft.create_tiny_checkpoint

    def recording_create(out_dir, texts, tiny, seed=0, whole_tokens=()):
        tokenizer_texts.extend(texts)
        assert not list(whole_tokens)  # question files carry no identifiers
        return real_create(out_dir, tokenizer_texts, tiny, seed=seed, whole_tokens=whole_tokens)

    monkeypatch.setattr(rl.app.sft, "create_tiny_checkpoint", recording_create)
    config = small_config(tmp_path, max_steps=2)
    config.data.source, config.data.corpus_path = "files", str(corpus_path)
    sft_dir = ensure_warm_start(config, source)
    assert tokenizer_texts == texts
    summary = json.loads((sft_dir / "sft_summary.json").read_text())
    assert summary["steps"] == 2 and summary["num_trajectories"] == 12  # every question was demonstrated
    assert len(load_tokenizer(sft_dir)) == len(load_tokenizer(config.run_dir / "base"))


def test_the_tiny_tokenizer_holds_every_name_word_whole_and_splits_a_fresh_worlds_names_the_same_way():
    from data.config import WorldConfig
    from data.world import generate_world, name_lexicon
    from rl.app.modeling import build_tokenizer
    from rl.app.sft import world_texts

    world = generate_world(WorldConfig(seed=0, num_entities_per_kind=20, num_train=100, num_validation=10,
                                       num_test=10, train_worlds=2))
    tokenizer = build_tokenizer(world_texts(world), TinyModelConfig().vocab_size)
    words = name_lexicon().words()
    assert all(len(tokenizer.tokenize(" " + word)) == 1 for word in words)
    fresh = generate_world(WorldConfig(seed=9, num_entities_per_kind=20, num_train=10, num_validation=10,
                                       num_test=10))
    for entity in fresh.entities:  # a name of a world the tokenizer never saw: one token per word
        assert len(tokenizer.tokenize(" " + entity.name)) == len(entity.name.split()), entity.name
    # fitted on training data only: the test split's passages are not in its texts
    texts = set(world_texts(world))
    test_doc_ids = {doc_id for question in world.splits["test"] for doc_id in question.supporting_doc_ids}
    assert not any(document["contents"] in texts for document in world.documents if document["id"] in test_doc_ids)


def test_the_warm_start_dataset_appends_the_comparison_drills_to_the_demonstrations(tmp_path, tiny_world,
                                                                                     tiny_checkpoint):
    from rl.app.sft import build_expert_dataset

    config = small_config(tmp_path)
    config.sft.expert_think = "side_by_side"
    config.rollout.max_new_tokens_per_turn = 96
    tokenizer = load_tokenizer(tiny_checkpoint)
    without = build_expert_dataset(config, tokenizer, WarmStartSource.from_world(tiny_world))
    config.sft.comparison_drills = 6
    dataset = build_expert_dataset(config, tokenizer, WarmStartSource.from_world(tiny_world))
    assert len(dataset) == len(without) + 6
    assert dataset["input_ids"][:len(without)] == without["input_ids"]  # the demonstrations are unchanged
    drills = [row for row in dataset if row["mode"] == "drill"]
    assert len(drills) == 6
    assert all(0 < sum(row["completion_mask"]) < len(row["input_ids"]) for row in drills)


def test_drills_without_world_comparisons_leave_the_demonstrations_alone_and_say_so(tmp_path, tiny_world,
                                                                                   tiny_checkpoint, caplog):
    """The user's own files (no world metadata): the quickstart's drills must not stop the run."""
    import dataclasses
    import logging

    from rl.app.sft import build_expert_dataset

    config = small_config(tmp_path)
    config.sft.expert_think = "side_by_side"
    config.rollout.max_new_tokens_per_turn = 96
    tokenizer = load_tokenizer(tiny_checkpoint)
    source = WarmStartSource.from_world(tiny_world)
    source = dataclasses.replace(source, questions=[dataclasses.replace(question, metadata={})
                                                    for question in source.questions])
    without = build_expert_dataset(config, tokenizer, source)
    config.sft.comparison_drills = 6
    with caplog.at_level(logging.WARNING, logger="rl.app.sft"):
        dataset = build_expert_dataset(config, tokenizer, source)
    assert dataset["input_ids"] == without["input_ids"]
    assert "drill" not in set(dataset["mode"])
    assert "sft.comparison_drills=6: none of the" in caplog.text
