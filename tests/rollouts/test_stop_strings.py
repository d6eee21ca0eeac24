"""Stop strings with a stock tokenizer: the real Qwen2 vocabulary, where each protocol tag is several tokens.

The engine tests run the random tiny Qwen2 of tests/conftest.py (`qwen2_checkpoint`) turned into a
bigram model by hand (stock_model_helpers.py), so that after chosen tokens it writes chosen tokens: e.g.
the tokens of `x</search>` or of `Hall.</answer>` + a newline carried by the tag's last token.
"""

from __future__ import annotations

import copy
import random

import pytest
import torch
from stock_model_helpers import STOP_STRINGS, scripted_bigram_model, scripted_stop_rows

from rollouts.engine_hf import HFEngine
from rollouts.protocols import build_protocol
from rollouts.stop_strings import StopStringMatcher

MAX_NEW_TOKENS = 8


@pytest.fixture(scope="module")
def stock_model_and_tokenizer(qwen2_checkpoint):
    from rollouts.model_loading import load_model_and_tokenizer

    torch.set_num_threads(1)
    return load_model_and_tokenizer(qwen2_checkpoint)


@pytest.fixture(scope="module")
def tokenizer(stock_model_and_tokenizer):
    return stock_model_and_tokenizer[1]


def ids(tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False)


def one_token(tokenizer, text: str) -> int:
    (token_id,) = ids(tokenizer, text)
    return token_id


def decode(tokenizer, token_ids: list[int]) -> str:
    return tokenizer.decode(token_ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


@pytest.fixture(scope="module")
def scripted(stock_model_and_tokenizer):
    """(engine on the scripted bigram model, the rows of stock_model_helpers.scripted_stop_rows)."""
    model, tokenizer = stock_model_and_tokenizer
    rows = scripted_stop_rows(tokenizer)
    return HFEngine(scripted_bigram_model(copy.deepcopy(model), rows.successors), tokenizer), rows


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_hf_engine_ends_rows_on_multi_token_stop_strings_fused_or_not(scripted, temperature):
    engine, rows = scripted
    outputs = engine.generate(rows.prompts, MAX_NEW_TOKENS, rows.stop_token_ids, temperature=temperature, seed=0,
                              stop_strings=STOP_STRINGS)
    for output, expected_ids, expected_text in zip(outputs, rows.expected_token_ids, rows.expected_texts):
        assert len(output.logprobs) == len(output.token_ids)
        if expected_ids is not None:
            assert output.finish_reason == "stop"
            assert output.token_ids == expected_ids  # kept as generated, through the completing token
            assert decode(engine.tokenizer, output.token_ids) == expected_text  # e.g. the "\n" past </answer>
        else:  # the prompt's "</search>" ends nothing
            assert output.finish_reason == "length" and len(output.token_ids) == MAX_NEW_TOKENS
            assert not any(stop in decode(engine.tokenizer, output.token_ids) for stop in STOP_STRINGS)


def test_stop_strings_end_rows_the_same_in_one_batch_or_in_chunks_and_without_them_rows_run_on(scripted):
    engine, rows = scripted
    one_batch = engine.generate(rows.prompts, MAX_NEW_TOKENS, set(), temperature=0.0, stop_strings=STOP_STRINGS)
    chunked = HFEngine(engine.model, engine.tokenizer, max_batch_tokens=1)
    chunks = chunked.generate(rows.prompts, MAX_NEW_TOKENS, set(), temperature=0.0, stop_strings=STOP_STRINGS)
    assert [o.token_ids for o in chunks] == [o.token_ids for o in one_batch]
    assert [o.token_ids for o in one_batch[:3]] == rows.expected_token_ids[:3]
    unstopped = engine.generate(rows.prompts, MAX_NEW_TOKENS, set(), temperature=0.0)
    assert all(o.finish_reason == "length" and len(o.token_ids) == MAX_NEW_TOKENS for o in unstopped)
    for stopped, full in zip(one_batch, unstopped):  # a stop string only cuts what the model writes anyway
        assert full.token_ids[:len(stopped.token_ids)] == stopped.token_ids
        assert full.logprobs[:len(stopped.logprobs)] == pytest.approx(stopped.logprobs, abs=1e-5)


def first_stop_by_prefix_decoding(tokenizer, token_ids: list[int]) -> int | None:
    """The definition: tokens through the first one whose prefix's text contains a stop string."""
    for length in range(1, len(token_ids) + 1):
        if any(stop in decode(tokenizer, token_ids[:length]) for stop in STOP_STRINGS):
            return length
    return None


def test_matcher_steps_agree_with_decoding_every_prefix_on_random_streams(tokenizer):
    matcher = StopStringMatcher(tokenizer, STOP_STRINGS)
    pieces = [ids(tokenizer, text) for text in ["</search>", "x</search>", " Hall.</answer>\n", "</", "search", ">",
                                                 ".</", "answer", ">\n", " </", "é", "日本"]]
    generator = random.Random(0)
    streams = []
    for _ in range(24):
        stream: list[int] = []
        while len(stream) < 24:
            stream += generator.choice(pieces) if generator.random() < 0.5 else [generator.randrange(151000)]
        streams.append(stream[:24])
    generated_BT = torch.tensor(streams)
    first_stop = [None] * len(streams)
    for step in range(generated_BT.shape[1]):
        running_R = torch.tensor([row for row in range(len(streams)) if first_stop[row] is None], dtype=torch.long)
        for row, completes in zip(running_R.tolist(), matcher.rows_completing(generated_BT, running_R, step).tolist()):
            if completes:
                first_stop[row] = step + 1
    assert first_stop == [first_stop_by_prefix_decoding(tokenizer, stream) for stream in streams]
    assert sum(length is not None for length in first_stop) >= 12  # the streams do exercise the stops


def test_matcher_decodes_only_rows_whose_newest_token_can_end_a_stop_string(tokenizer):
    matcher = StopStringMatcher(tokenizer, STOP_STRINGS)
    assert matcher.window_tokens == len("</search>") + 1
    may_end = matcher.may_end_V
    assert may_end[one_token(tokenizer, ">")] and may_end[one_token(tokenizer, ">\n")]
    assert not may_end[one_token(tokenizer, "search")] and not may_end[one_token(tokenizer, " Hall")]
    assert 0 < int(may_end.sum()) < len(may_end) // 20  # a few percent of the vocabulary
    assert StopStringMatcher(tokenizer, ["end "]).may_end_V is None  # a trailing space: every row is decoded


def test_tiny_model_tags_are_single_tokens_and_the_string_ends_at_that_token(tiny_checkpoint):
    from rollouts.model_loading import load_tokenizer

    tiny_tokenizer = load_tokenizer(tiny_checkpoint)
    matcher = StopStringMatcher(tiny_tokenizer, STOP_STRINGS)
    stream = ids(tiny_tokenizer, "<search> Bemo Hall </search> more")
    tag_index = stream.index(tiny_tokenizer.convert_tokens_to_ids("</search>"))
    generated_BT = torch.tensor([stream])
    steps = [step for step in range(len(stream))
             if matcher.rows_completing(generated_BT, torch.tensor([0]), step).item()]
    assert steps[0] == tag_index  # where the old stop on the tag's token id ended the turn


@pytest.mark.parametrize("name", ["tags", "function_call"])
def test_stock_tokenizer_turns_end_on_the_tags_as_strings_and_on_eos_or_im_end_as_ids(name, tokenizer):
    protocol = build_protocol(name)
    assert protocol.stop_token_ids(tokenizer) == {tokenizer.convert_tokens_to_ids("<|endoftext|>"),
                                                  tokenizer.convert_tokens_to_ids("<|im_end|>")}
    assert protocol.stop_strings and all(len(ids(tokenizer, stop)) == 3 for stop in protocol.stop_strings)
