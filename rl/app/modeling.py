"""The tiny causal LM of the embedded default and its locally trained tokenizer.

Nothing here touches a model hub: the tokenizer is a byte-level BPE trained with `tokenizers` on the
generated corpus (so world words become single tokens while any text still round-trips losslessly),
with the agent protocol's tags as single added tokens and a Qwen-style chat template; the model is a
small Qwen2 initialised from a config. Both are saved with `save_pretrained`, so every other part of
fanout-rl loads "a model path" the same way (rollouts/model_loading.py), whether it is this tiny model
or a real HF checkpoint.

    path = create_tiny_checkpoint("runs/tiny/base", texts, TinyModelConfig())
    model, tokenizer = load_model_and_tokenizer(path)
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
from pathlib import Path
from typing import Iterable

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from rl.config import TinyModelConfig

# The agent protocols' tags. Each is one token of the tiny tokenizer, so the tiny model writes a tag in one
# step (turns end on stop strings with any tokenizer; here a tag's string and its id end at the same token).
PROTOCOL_TAGS = [
    "<think>", "</think>",
    "<search>", "</search>",
    "<information>", "</information>",
    "<answer>", "</answer>",
    "<tool_call>", "</tool_call>",
    "<tool_response>", "</tool_response>",
]
# The tag protocol separates parallel sub-queries inside one <search> with "##" (ParallelSearch's syntax).
SUBQUERY_SEPARATOR = "##"
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
PAD_TOKEN, BOS_TOKEN, EOS_TOKEN = "<|endoftext|>", "<|im_start|>", "<|im_end|>"

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


# model.tiny.numbers: how numbers are cut before byte-level BPE (the examples are with number_space "joined").
# - "pairs": into pairs of digits; a year is two tokens from a set of about a hundred ("Ġ18" "43"), each seen in
#   many years, so the order of years is learnable. BPE merges only the pairs its texts held: on the apps world a
#   third of the spaced pairs (" 44", " 80") never occur, and a number holding one is cut finer ("Ġ4" "4") than
#   one the texts held (" 27"). With model.tiny.every_pair (complete_pairs) every pair is one token, spaced and
#   not, so a number the tokenizer never saw is split the same way as one it did.
# - "whole": a number is one piece, and every number up to WHOLE_NUMBERS_UP_TO is in the tokenizer's training
#   texts WHOLE_NUMBER_REPEATS times (with and without a leading space), so each is one token ("Ġ1987") whether
#   or not the world used it. A year is then copied in one step, and its order must be learnt per token.
# - "digits": a number is one token per digit ("Ġ1" "9" "8" "7"), as in Qwen2's and Llama 3's own tokenizers. A
#   year is copied in four steps, and spelling it digit by digit (sft.expert_think=digits) is a copy, not a split.
NUMBER_SPLITS = {"pairs": r"\d\d", "whole": r"\d+", "digits": r"\d"}
# model.tiny.number_space: "joined" puts the space before a number into its first piece (" 19" "87"); "apart" leaves
# it to the text before, so a number is the same tokens after a space, a bracket or a quote.
NUMBER_SPACES = {"joined": " ?", "apart": ""}
WHOLE_NUMBERS_UP_TO = 2099
WHOLE_NUMBER_REPEATS = 20
WHOLE_NUMBER_VOCABULARY = 2 * (WHOLE_NUMBERS_UP_TO + 1) + 300  # the numbers, spaced and not, and BPE's partial merges
COPY_PRETRAINING_FILE = "copy_pretraining.json"  # create_tiny_checkpoint's record of the copy pretraining


def number_texts(numbers: str) -> list[str]:
    """The extra tokenizer training texts of a number style: every number, spaced and not, for "whole"."""
    if numbers not in NUMBER_SPLITS:
        raise ValueError(f"model.tiny.numbers must be one of {tuple(NUMBER_SPLITS)}, got {numbers!r}")
    if numbers == "pairs":
        return []
    spaced = " " + " ".join(str(number) for number in range(WHOLE_NUMBERS_UP_TO + 1))
    glued = "\n".join(str(number) for number in range(WHOLE_NUMBERS_UP_TO + 1))
    return [spaced, glued] * WHOLE_NUMBER_REPEATS


def pair_texts(number_space: str) -> list[str]:
    """The number pieces "pairs" cuts, as text: every two digits ("07", "44"), a space and one digit (" 7": a lone
    digit after a space is one piece either way), and with "joined" a space and two digits (" 44")."""
    glued = [f"{number:02d}" for number in range(100)]
    spaced = [f" {number}" for number in range(100 if number_space == "joined" else 10)]
    return glued + spaced


def complete_pairs(tokenizer: Tokenizer, number_space: str) -> Tokenizer:
    """`tokenizer` (a fitted "pairs" BPE) with every pair_texts piece one token: each missing piece gets merges
    after all the fitted ones, joining the pieces it was cut into left to right. The fitted merges and their ids
    are unchanged (no piece missing: the same tokenizer), and only number pieces gain merges."""
    state = json.loads(tokenizer.to_str())
    vocab, merges = state["model"]["vocab"], state["model"]["merges"]
    pairs_as_lists = bool(merges) and isinstance(merges[0], list)
    added = 0
    for text in pair_texts(number_space):
        if text.replace(" ", "Ġ") in vocab:  # the byte-level form of the piece
            continue
        # cut by the merges so far (those added for earlier pieces included), so no merge is added twice
        parts = Tokenizer.from_str(json.dumps(state)).encode(text).tokens
        while len(parts) > 1:
            left, right = parts[0], parts[1]
            merges.append([left, right] if pairs_as_lists else f"{left} {right}")
            vocab.setdefault(left + right, max(vocab.values()) + 1)
            parts = [left + right] + parts[2:]
            added += 1
    if not added:
        return tokenizer
    completed = Tokenizer.from_str(json.dumps(state))
    missing = [text for text in pair_texts(number_space) if len(completed.encode(text).tokens) != 1]
    if missing:
        raise RuntimeError(f"complete_pairs: pieces still split after adding merges: {missing[:10]}")
    return completed


def build_tokenizer(texts: Iterable[str], vocab_size: int = 4096, numbers: str = "pairs",
                    whole_tokens: Iterable[str] = (), number_space: str = "joined",
                    every_pair: bool = False) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on `texts`; protocol tags and chat markers are single, unsplittable tokens.
    `numbers` ("pairs", "whole" or "digits", above) says how numbers are cut; "whole" adds its own vocabulary room.
    `number_space` ("joined" or "apart", above) says whether the space before a number is part of it.
    `every_pair` (with "pairs" only) makes every pair of digits one token, spaced and not (complete_pairs).
    `whole_tokens` are strings that become one token each wherever they occur (an environment's identifiers,
    e.g. the apps world's e-mail addresses and SKUs), so the model copies one in one step."""
    extra_texts = number_texts(numbers)
    if number_space not in NUMBER_SPACES:
        raise ValueError(f"model.tiny.number_space must be one of {tuple(NUMBER_SPACES)}, got {number_space!r}")
    if every_pair and numbers != "pairs":
        raise ValueError(f"model.tiny.every_pair needs model.tiny.numbers=pairs, got {numbers!r}")
    if extra_texts:
        texts, vocab_size = itertools.chain(texts, extra_texts), vocab_size + WHOLE_NUMBER_VOCABULARY
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(NUMBER_SPACES[number_space] + NUMBER_SPLITS[numbers]), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    if every_pair:
        tokenizer = complete_pairs(tokenizer, number_space)
    # Added (not special) tokens: matched before BPE, kept when decoding with skip_special_tokens.
    tokenizer.add_tokens(PROTOCOL_TAGS + [SUBQUERY_SEPARATOR])
    identifiers = sorted(set(whole_tokens) - set(PROTOCOL_TAGS) - {SUBQUERY_SEPARATOR})
    if any(not identifier or identifier != identifier.strip() for identifier in identifiers):
        raise ValueError("whole tokens must be non-empty and carry no leading or trailing whitespace")
    tokenizer.add_tokens(identifiers)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        unk_token=None,
        padding_side="left",
        clean_up_tokenization_spaces=False,
    )
    wrapped.chat_template = CHAT_TEMPLATE
    return wrapped


# model.tiny.number_embedding "ordered": a number token's embedding starts on a curve its value orders, as a
# pretrained LM's number embeddings lie on a line and on circles of periods 10 and 100 (Kantamneni and Tegmark
# 2025, "Language models use trigonometry to do addition"). The first NUMBER_FEATURES dimensions of a number
# token's row hold its value's place in the range of the tokens with as many digits (-1 to 1), and the cosine
# and sine of its value at each of NUMBER_PERIODS; the rest of the row keeps its random values, so every token
# stays distinct.
NUMBER_PERIODS = (10, 100, 1000)
NUMBER_FEATURES = 1 + 2 * len(NUMBER_PERIODS)
NUMBER_TOKEN = re.compile(r"Ġ?(\d+)")  # byte-level BPE writes a leading space as "Ġ"


def number_token_values(tokenizer: PreTrainedTokenizerFast) -> dict[int, tuple[int, int]]:
    """Every token that is a number (digits, with or without a leading space): id -> (value, digit count)."""
    values = {}
    for token_id, text in enumerate(tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))):
        match = NUMBER_TOKEN.fullmatch(text or "")
        if match:
            values[token_id] = (int(match.group(1)), len(match.group(1)))
    return values


def number_features(values: dict[int, tuple[int, int]]) -> dict[int, list[float]]:
    """The ordered features of each number token (see NUMBER_PERIODS): the linear one spans -1 to 1 over the
    tokens of each digit count, so " 11" ... " 20" and "00" ... "99" each fill the range."""
    spans: dict[int, tuple[int, int]] = {}
    for value, digits in values.values():
        low, high = spans.get(digits, (value, value))
        spans[digits] = (min(low, value), max(high, value))
    features = {}
    for token_id, (value, digits) in values.items():
        low, high = spans[digits]
        row = [2 * (value - low) / (high - low) - 1 if high > low else 0.0]
        for period in NUMBER_PERIODS:
            angle = 2 * math.pi * value / period
            row += [math.cos(angle), math.sin(angle)]
        features[token_id] = row
    return features


def order_number_embeddings(model: Qwen2ForCausalLM, tokenizer: PreTrainedTokenizerFast) -> int:
    """Write the ordered features into the number tokens' embedding rows (tied to the output layer), scaled
    so the features carry about as much of a row's norm as its random part; returns the rows written."""
    features = number_features(number_token_values(tokenizer))
    if not features:
        return 0
    weight = model.get_input_embeddings().weight
    hidden = weight.shape[1]
    if hidden < 2 * NUMBER_FEATURES:
        raise ValueError(f"model.tiny.number_embedding=ordered needs hidden_size >= {2 * NUMBER_FEATURES}, "
                         f"got {hidden}")
    token_ids = sorted(features)
    ids = torch.tensor(token_ids)
    rows = torch.tensor([features[token_id] for token_id in token_ids], dtype=weight.dtype)
    with torch.no_grad():
        random_norm = weight[ids, NUMBER_FEATURES:].norm(dim=1).mean()
        scale = random_norm / rows.norm(dim=1).mean()
        weight[ids, :NUMBER_FEATURES] = rows * scale
    return len(features)


def build_tiny_model(tokenizer: PreTrainedTokenizerFast, tiny: TinyModelConfig, seed: int = 0) -> Qwen2ForCausalLM:
    """A small Qwen2 initialised from a config (deterministic for a seed)."""
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=tiny.hidden_size,
        intermediate_size=tiny.intermediate_size,
        num_hidden_layers=tiny.num_hidden_layers,
        num_attention_heads=tiny.num_attention_heads,
        num_key_value_heads=tiny.num_key_value_heads,
        max_position_embeddings=tiny.max_position_embeddings,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        use_sliding_window=False,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config)
    if tiny.number_embedding == "ordered":
        order_number_embeddings(model, tokenizer)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


def create_tiny_checkpoint(out_dir: str | os.PathLike, texts: Iterable[str], tiny: TinyModelConfig,
                           seed: int = 0, whole_tokens: Iterable[str] = ()) -> Path:
    """Train the tokenizer, build the model, copy-pretrain it for `tiny.pretrain_steps` (rl/app/pretrain.py), save
    both with save_pretrained (and the pretraining's held-out copy accuracy, COPY_PRETRAINING_FILE); returns the
    folder."""
    out_dir = Path(out_dir)
    if tiny.pretrain_steps:  # the tokenizer's training reads both once, and the pretraining again
        texts, whole_tokens = list(texts), list(whole_tokens)
    tokenizer = build_tokenizer(texts, tiny.vocab_size, tiny.numbers, whole_tokens, tiny.number_space,
                                tiny.every_pair)
    model = build_tiny_model(tokenizer, tiny, seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    if tiny.pretrain_steps:
        from rl.app.pretrain import pretrain_tiny_model

        # With every_pair the pair tokens join the list rows' items: a pair the texts never held is a token that no
        # training text writes, and the pretraining is then where the model learns to write it.
        items = whole_tokens + (pair_texts(tiny.number_space) if tiny.every_pair else [])
        accuracy = pretrain_tiny_model(model, tokenizer, texts, items, tiny.pretrain_steps, seed)
        (out_dir / COPY_PRETRAINING_FILE).write_text(json.dumps(
            {"steps": tiny.pretrain_steps, "held_out_copy_accuracy": accuracy}, indent=2) + "\n")
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir
