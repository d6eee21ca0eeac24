"""Copy pretraining of the tiny model (rl/app/pretrain.py, model.tiny.pretrain_steps)."""

import json
import random

import pytest
import torch

from rl.app.modeling import COPY_PRETRAINING_FILE, build_tiny_model, build_tokenizer, create_tiny_checkpoint
from rl.app.pretrain import (CopyRows, collate, copy_accuracy, greedy_hits, list_item_shares,
                             pretrain_tiny_model, row_loss)
from rl.grpo.lm_head import install_compact_lm_head
from rl.config import TinyModelConfig
from rollouts.model_loading import load_model_and_tokenizer

WORDS = "the red fox runs over a green hill and sees two tall trees near one small lake".split()
ITEMS = [f"ID-{number}" for number in range(12)]


def texts(count: int = 300, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS + ITEMS) for _ in range(rng.randint(6, 14))) for _ in range(count)]


def token_stream(tokenizer, seed: int = 0) -> list[int]:
    encoded = (tokenizer(text, add_special_tokens=False).input_ids for text in texts(seed=seed))
    return [token for ids in encoded for token in ids]


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer(texts(), vocab_size=300, whole_tokens=ITEMS)


@pytest.fixture(scope="module")
def rows(tokenizer):
    token_ids = token_stream(tokenizer)
    item_ids = [tokenizer.convert_tokens_to_ids(item) for item in ITEMS]
    comma = tokenizer(",", add_special_tokens=False)["input_ids"][0]
    return CopyRows(token_ids, item_ids, tokenizer.eos_token_id, comma, seed=0)


def test_a_repeat_row_is_a_span_the_separator_and_the_span_again(rows, tokenizer):
    for _ in range(50):
        ids, start = rows.row("repeat")
        span = ids[:start - 1]
        assert ids[start - 1] == tokenizer.eos_token_id and ids[start:] == span and 8 <= len(span) <= 40


def test_a_list_row_lists_the_items_of_its_text_in_order_each_with_a_comma(rows, tokenizer):
    item_ids = set(rows.items)
    for _ in range(50):
        ids, start = rows.row("list")
        source, target = ids[:start - 1], ids[start:]
        in_order = [token for token in source if token in item_ids]
        assert 2 <= len(in_order) <= 5 and len(set(in_order)) == len(in_order)
        assert target[0::2] == in_order and set(target[1::2]) == {rows.comma}
        assert ids[start - 1] == tokenizer.eos_token_id


def test_a_text_of_items_alone_still_gives_list_rows(rows):
    dense = CopyRows(rows.items * 20, rows.items, rows.separator, rows.comma, seed=2)
    for _ in range(20):
        ids, start = dense.row("list")
        assert ids[start - 1] == rows.separator and ids[start:][0::2] == ids[:start - 1]


def test_without_items_only_repeat_rows_are_drawn(rows):
    plain = CopyRows(rows.token_ids, [], rows.separator, rows.comma, seed=1)
    assert plain.kinds == ("repeat",)
    for _ in range(20):
        ids, start = plain.row()
        assert ids[start:] == ids[:start - 1]


def test_bad_inputs_are_refused(rows, tokenizer):
    with pytest.raises(ValueError, match="more than 40 tokens"):
        CopyRows(rows.token_ids[:40], rows.items, rows.separator, rows.comma, seed=0)
    with pytest.raises(ValueError, match="at least 5"):
        CopyRows(rows.token_ids, rows.items[:3], rows.separator, rows.comma, seed=0)
    model = build_tiny_model(tokenizer, TinyModelConfig(hidden_size=32, intermediate_size=64))
    with pytest.raises(ValueError, match="model.tiny.pretrain_steps must be >= 0"):
        pretrain_tiny_model(model, tokenizer, texts(), ITEMS, steps=-1)


def test_collate_scores_only_each_rows_second_part():
    input_ids, labels = collate([([5, 6, 7, 9, 5, 6], 4), ([8, 9, 3], 2)], pad_token_id=0)
    assert input_ids.tolist() == [[5, 6, 7, 9, 5, 6], [8, 9, 3, 0, 0, 0]]
    assert labels.tolist() == [[-100, -100, -100, -100, 5, 6], [-100, -100, 3, -100, -100, -100]]


def test_the_compact_head_gives_the_full_heads_loss_and_gradients(tokenizer, rows):
    model = build_tiny_model(tokenizer, TinyModelConfig(hidden_size=32, intermediate_size=64), seed=0)
    input_ids, labels = collate([rows.row() for _ in range(8)], tokenizer.pad_token_id)
    full = row_loss(model, input_ids, labels, compact=False)
    full.backward()
    full_grad = model.lm_head.weight.grad.clone()
    model.zero_grad()
    assert install_compact_lm_head(model)
    compact = row_loss(model, input_ids, labels, compact=True)
    compact.backward()
    assert compact.item() == pytest.approx(full.item(), rel=1e-5)
    assert torch.allclose(model.lm_head.weight.grad, full_grad, atol=1e-6)


def test_pretraining_teaches_a_random_model_to_copy(tokenizer, rows):
    config = TinyModelConfig(hidden_size=64, intermediate_size=128)
    model = build_tiny_model(tokenizer, config, seed=0)
    probe = CopyRows(token_stream(tokenizer, seed=9), rows.items, rows.separator, rows.comma, seed=7)
    repeats = collate([probe.row("repeat") for _ in range(64)], tokenizer.pad_token_id)
    before = copy_accuracy(model, *repeats)
    accuracy = pretrain_tiny_model(model, tokenizer, texts(), ITEMS, steps=120, seed=0)
    # The texts are random draws of 28 words, so without copying no model predicts more than about 1 in 28.
    assert before < 0.05
    assert copy_accuracy(model, *repeats) > 0.25 and accuracy["repeat"] > 0.25
    assert set(accuracy) == {"repeat", "list", "list_first_item", "list_next_items"}
    assert all(0.0 <= value <= 1.0 for value in accuracy.values())


def test_the_checkpoint_is_pretrained_and_says_how_well_it_copies(tmp_path):
    config = TinyModelConfig(hidden_size=32, intermediate_size=64, vocab_size=300, pretrain_steps=20)
    path = create_tiny_checkpoint(tmp_path / "pretrained", texts(), config, seed=0, whole_tokens=ITEMS)
    plain = create_tiny_checkpoint(tmp_path / "plain", texts(), TinyModelConfig(
        hidden_size=32, intermediate_size=64, vocab_size=300), seed=0, whole_tokens=ITEMS)
    summary = json.loads((path / COPY_PRETRAINING_FILE).read_text())
    assert summary["steps"] == 20 and set(summary["held_out_copy_accuracy"]) == {
        "repeat", "list", "list_first_item", "list_next_items"}
    assert not (plain / COPY_PRETRAINING_FILE).exists()
    model, _ = load_model_and_tokenizer(path)
    plain_model, _ = load_model_and_tokenizer(plain)
    weight = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(model.state_dict()[weight], plain_model.state_dict()[weight])


class Writes:
    """A stand-in model whose greedy prediction at every position is a fixed token id per row and position."""

    training = False

    def __init__(self, predictions: torch.Tensor, vocab: int):
        self.predictions, self.vocab = predictions, vocab

    def eval(self):
        pass

    def train(self, mode=True):
        pass

    def __call__(self, input_ids):
        logits = torch.zeros(*input_ids.shape, self.vocab)
        logits.scatter_(2, self.predictions.unsqueeze(-1), 1.0)
        return type("Output", (), {"logits": logits})()


def test_list_item_shares_split_the_first_item_from_the_later_ones():
    # Two list rows, items 10, 11, 12 (and 13, 14) with comma 5 after each, separator 2.
    first_row = [7, 10, 8, 11, 12, 2, 10, 5, 11, 5, 12, 5]
    second_row = [13, 9, 14, 2, 13, 5, 14, 5]
    input_ids, labels = collate([(first_row, 6), (second_row, 4)], pad_token_id=0)
    # Predicting the next token everywhere is right; then spoil the first row's third item (12) and one comma.
    predictions = torch.cat([input_ids[:, 1:], torch.zeros(2, 1, dtype=torch.long)], dim=1)
    predictions[0, 9] = 11  # where 12 comes: the item before it again
    predictions[1, 4] = 14  # where a comma comes
    hit, _ = greedy_hits(Writes(predictions, vocab=16), input_ids, labels)
    accuracy = list_item_shares(hit, labels, [10, 11, 12, 13, 14])
    assert accuracy == {"list_first_item": 1.0, "list_next_items": pytest.approx(2 / 3)}
    assert copy_accuracy(Writes(predictions, vocab=16), input_ids, labels) == pytest.approx(8 / 10)


def test_a_negative_step_count_is_refused_by_name():
    from rl.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="model.tiny.pretrain_steps"):
        load_config(None, ["model.tiny.pretrain_steps=-5"])


def test_with_every_pair_the_pretraining_lists_the_pair_tokens_among_its_items(tmp_path, monkeypatch):
    import rl.app.pretrain

    seen = {}

    def record(model, tokenizer, texts, items, steps, seed=0):
        seen["items"], seen["tokenizer"] = list(items), tokenizer
        return {"repeat": 0.0}

    monkeypatch.setattr(rl.app.pretrain, "pretrain_tiny_model", record)
    config = TinyModelConfig(hidden_size=32, intermediate_size=64, vocab_size=300, pretrain_steps=5)
    create_tiny_checkpoint(tmp_path / "plain", texts(), config, seed=0, whole_tokens=ITEMS)
    assert seen["items"] == ITEMS
    config.every_pair = True
    create_tiny_checkpoint(tmp_path / "pairs", texts(), config, seed=0, whole_tokens=ITEMS)
    numbers = seen["items"][len(ITEMS):]
    assert seen["items"][:len(ITEMS)] == ITEMS and len(numbers) == 200
    assert {" 44", "44", " 7", "07"} <= set(numbers)
    tokenizer = seen["tokenizer"]
    assert all(len(tokenizer(number, add_special_tokens=False)["input_ids"]) == 1 for number in numbers)
