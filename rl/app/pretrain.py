"""Copy pretraining of the tiny model (`model.tiny.pretrain_steps`): the copying a pretrained LM brings.

A real checkpoint arrives able to copy from its context: its induction heads repeat what followed a token the
last time it occurred. The tiny model starts from random weights, and the apps warm-start alone teaches it
to copy only late, after it has learnt the training tasks by heart (docs/RESULTS.md, "Apps"). Pretraining
first teaches copying on rows built from the environment's own texts, with the loss on each row's second
part only:

- **repeat**: a span of the texts, the end-of-turn token, the same span again (what followed this token
  the last time);
- **list**: a span of the texts with 2-5 of the environment's items put in at random places, the end-of-turn
  token, then those items in their order, each followed by a comma (which item comes after the one just
  written). The items are the identifiers the tokenizer keeps whole (the apps world's addresses and SKUs),
  and with `model.tiny.every_pair` the pair-of-digit tokens; with no items (the QA world by default) the rows
  are repeat rows only.

The rows are random draws, so copying is the only way to predict a row's second part. On the apps world the
quickstart's model gets 91% of the repeat rows' second-part tokens right after 500 steps, and 71-76% of the
list rows' (`pretrain_tiny_model` logs these shares on fixed held-out rows of each kind, and returns them).
Those list shares count the commas; of the items themselves, the first is right in 79% and the later ones in
29% (`list_first_item`, `list_next_items`; 85% and 38% after 1500 steps): at this learning rate the 2-layer
model learns where a list starts far sooner than which item follows the one it just wrote (at 1e-3 the later
items reach 70% in 1000 steps; docs/RESULTS.md, "Apps").

On the QA world there are no items by default (with `every_pair`, its pair tokens), and the reader
(configs/reader.yaml) and the quickstart pretrain on repeat rows of its training questions and the passages
they cite: 89-92% after 500 steps (about 80 s), 87-92% after 400. The reader's warm-start then reads far
sooner: after 1200 SFT steps, held-out EM 0.647 where the same run without pretraining scores 0.297, and
after 3000 every chain and single-hop question of seed 0 is right (docs/RESULTS.md, "Reading").

    accuracy = pretrain_tiny_model(model, tokenizer, texts, items, steps=500, seed=0)
"""

from __future__ import annotations

import logging
import random
import time
from typing import Any, Iterable, Sequence

import torch

from rl.grpo.lm_head import install_compact_lm_head

logger = logging.getLogger(__name__)

ROW_KINDS = ("repeat", "list")
LEARNING_RATE = 3e-3
WARMUP_STEPS = 100
BATCH_SIZE = 32
SPAN_TOKENS = (8, 40)  # a repeat row's span; a list row's filler span
LIST_ITEMS = (2, 5)
EVAL_ROWS = 128
LOG_EVERY = 200
MAX_TEXT_TOKENS = 200_000  # the rows are cut from a sample of the environment's texts this long


class CopyRows:
    """Draws pretraining rows (token ids, and where the loss starts) from a token stream and items."""

    def __init__(self, token_ids: list[int], items: list[int], separator: int, comma: int, seed: int):
        if len(token_ids) <= SPAN_TOKENS[1]:
            raise ValueError(f"copy pretraining needs more than {SPAN_TOKENS[1]} tokens of text, "
                             f"got {len(token_ids)}")
        if items and len(items) < LIST_ITEMS[1]:
            raise ValueError(f"copy pretraining needs no items or at least {LIST_ITEMS[1]}, got {len(items)}")
        self.token_ids, self.items, self.item_set = token_ids, items, set(items)
        self.separator, self.comma = separator, comma
        self.rng = random.Random(seed)

    def span(self, length: int) -> list[int]:
        start = self.rng.randrange(len(self.token_ids) - length)
        return self.token_ids[start:start + length]

    def repeat_row(self) -> tuple[list[int], int]:
        span = self.span(self.rng.randint(*SPAN_TOKENS))
        return span + [self.separator] + span, len(span) + 1

    def list_row(self) -> tuple[list[int], int]:
        chosen = self.rng.sample(self.items, self.rng.randint(*LIST_ITEMS))
        source = [token for token in self.span(self.rng.randint(*SPAN_TOKENS)) if token not in self.item_set]
        chosen = chosen[:len(source) + 1]  # a span of items alone leaves fewer places than items
        for position, item in sorted(zip(self.rng.sample(range(len(source) + 1), len(chosen)), chosen),
                                     reverse=True):
            source.insert(position, item)
        target = [token for item in source if item in self.item_set for token in (item, self.comma)]
        return source + [self.separator] + target, len(source) + 1

    @property
    def kinds(self) -> tuple[str, ...]:
        return ROW_KINDS if self.items else ROW_KINDS[:1]

    def row(self, kind: str | None = None) -> tuple[list[int], int]:
        kind = kind or self.rng.choice(self.kinds)
        return self.repeat_row() if kind == "repeat" else self.list_row()


def sample_tokens(tokenizer: Any, texts: Sequence[str], seed: int) -> list[int]:
    """The token ids of texts drawn at random (one pass, no repeats) until MAX_TEXT_TOKENS are collected."""
    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    token_ids: list[int] = []
    for index in order:
        token_ids.extend(tokenizer(texts[index], add_special_tokens=False)["input_ids"])
        if len(token_ids) >= MAX_TEXT_TOKENS:
            break
    return token_ids


def collate(rows: list[tuple[list[int], int]], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded input ids and labels (-100 before each row's second part and on the padding)."""
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), pad_token_id)
    labels = torch.full((len(rows), width), -100)
    for index, (ids, start) in enumerate(rows):
        input_ids[index, :len(ids)] = torch.tensor(ids)
        labels[index, start:len(ids)] = torch.tensor(ids[start:])
    return input_ids, labels


def row_loss(model: Any, input_ids: torch.Tensor, labels: torch.Tensor, compact: bool) -> torch.Tensor:
    """Mean next-token loss over the labelled positions; with a compact LM head (rl/grpo/lm_head.py, its
    fused-head call) only those positions are projected to the vocabulary."""
    return model(input_ids=input_ids, labels=labels, **({"fused_lm_head": True} if compact else {})).loss


@torch.no_grad()
def greedy_hits(model: Any, input_ids: torch.Tensor,
                labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher-forced greedy predictions against the next tokens: (hit, scored), each batch x (width - 1)."""
    was_training = model.training
    model.eval()
    predicted = model(input_ids=input_ids).logits[:, :-1].argmax(-1)
    model.train(was_training)
    targets = labels[:, 1:]
    scored = targets != -100
    return (predicted == targets) & scored, scored


def hit_share(hit: torch.Tensor, scored: torch.Tensor) -> float:
    """The share of the scored positions greedy_hits found right."""
    return hit.sum().item() / scored.sum().item()


def copy_accuracy(model: Any, input_ids: torch.Tensor, labels: torch.Tensor) -> float:
    """The share of second-part tokens the model predicts right (greedy, teacher-forced)."""
    return hit_share(*greedy_hits(model, input_ids, labels))


def list_item_shares(hit: torch.Tensor, labels: torch.Tensor, item_ids: Iterable[int]) -> dict[str, float]:
    """From greedy_hits on list rows: the share of first items right, and of the items after the first (each
    the item that follows, in the text, the one just written). The commas, always right, are left out of
    both."""
    is_item = torch.isin(labels[:, 1:], torch.tensor(sorted(item_ids)))  # -100 (unscored) is no item
    first = is_item & (is_item.cumsum(dim=1) == 1)
    later = is_item & ~first
    return {"list_first_item": (hit & first).sum().item() / max(1, first.sum().item()),
            "list_next_items": (hit & later).sum().item() / max(1, later.sum().item())}


def pretrain_tiny_model(model: Any, tokenizer: Any, texts: Sequence[str], items: Iterable[str], steps: int,
                        seed: int = 0) -> dict[str, float]:
    """Train `model` in place on `steps` batches of copy rows; returns the held-out accuracy per row kind.
    `items` are strings the tokenizer keeps as one token (others are left out); with none, repeat rows only.
    """
    if steps < 0:
        raise ValueError(f"model.tiny.pretrain_steps must be >= 0, got {steps}")
    token_ids = sample_tokens(tokenizer, texts, seed)
    encoded = (tokenizer(item, add_special_tokens=False)["input_ids"] for item in items)
    item_ids = sorted({ids[0] for ids in encoded if len(ids) == 1})
    separator = tokenizer.eos_token_id
    comma = tokenizer(",", add_special_tokens=False)["input_ids"][0]
    rows = CopyRows(token_ids, item_ids, separator, comma, seed)
    held_out_rows = CopyRows(token_ids, item_ids, separator, comma, seed + 1)
    held_out = {kind: collate([held_out_rows.row(kind) for _ in range(EVAL_ROWS)], tokenizer.pad_token_id)
                for kind in rows.kinds}

    def held_out_accuracy() -> dict[str, float]:
        accuracy = {}
        for kind, (input_ids, labels) in held_out.items():
            hit, scored = greedy_hits(model, input_ids, labels)  # one forward pass per kind
            accuracy[kind] = hit_share(hit, scored)
            if kind == "list":
                accuracy.update(list_item_shares(hit, labels, item_ids))
        return accuracy

    accuracy = held_out_accuracy() if steps == 0 else {}
    compact = install_compact_lm_head(model)  # the vocabulary projection at the second parts only
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / WARMUP_STEPS))
    model.train()
    started = time.monotonic()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for step in range(1, steps + 1):
            input_ids, labels = collate([rows.row() for _ in range(BATCH_SIZE)], tokenizer.pad_token_id)
            loss = row_loss(model, input_ids, labels, compact)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            if step % LOG_EVERY == 0 or step == steps:
                accuracy = held_out_accuracy()
                shares = ", ".join(f"{kind} {value:.3f}" for kind, value in accuracy.items())
                logger.info("copy pretraining: step %d/%d, loss %.3f, held-out copy accuracy %s (%.0f s)",
                            step, steps, loss.item(), shares, time.monotonic() - started)
    model.eval()
    return accuracy
