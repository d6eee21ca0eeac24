"""The tiny model and its local tokenizer (rl/app/modeling.py), loaded back through rollouts/model_loading.py."""

import random

import pytest
import torch

from rl.config import ConfigError, TinyModelConfig
from rl.app.modeling import PROTOCOL_TAGS, SUBQUERY_SEPARATOR, build_tiny_model, build_tokenizer
from rollouts.model_loading import load_model_and_tokenizer

TEXTS = ["Varlo Tenmis was born in 1873 in Quenbridge.", "Which was founded earlier, Aldrin Works or Bemo Hall?"] * 30


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer(TEXTS, vocab_size=400)


def test_protocol_tags_are_single_tokens(tokenizer):
    for tag in PROTOCOL_TAGS + [SUBQUERY_SEPARATOR, "<|im_start|>", "<|im_end|>"]:
        assert len(tokenizer.encode(tag, add_special_tokens=False)) == 1, tag


def test_tags_inside_text_stay_single_tokens(tokenizer):
    text = "<think>x</think><search>a ## b</search>"
    pieces = [tokenizer.decode([i]) for i in tokenizer.encode(text, add_special_tokens=False)]
    for tag in ("<think>", "</think>", "<search>", "</search>", "##"):
        assert tag in pieces


def test_decoding_is_lossless_on_arbitrary_text(tokenizer):
    rng = random.Random(0)
    alphabet = "abcXYZ 019 \n\t.,!?#<>/ü日本é😀" + "".join(PROTOCOL_TAGS)
    for _ in range(200):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 60)))
        assert tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)) == text


def test_chat_template_ends_with_generation_prompt(tokenizer):
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": "Who?"}], add_generation_prompt=True,
                                             tokenize=False)
    assert rendered == "<|im_start|>user\nWho?<|im_end|>\n<|im_start|>assistant\n"


def test_tiny_model_round_trips_and_generates(tmp_path, tokenizer):
    tiny = TinyModelConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                           intermediate_size=64, vocab_size=400)
    model = build_tiny_model(tokenizer, tiny, seed=3)
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    loaded, loaded_tokenizer = load_model_and_tokenizer(tmp_path)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name]), name
    assert loaded_tokenizer.encode("Varlo ## <answer>") == tokenizer.encode("Varlo ## <answer>")
    # The saved tokenizer is loaded as trained: a year is two tokens of two digits each (a Qwen2
    # pre-tokenizer substituted at load time would split it into four digits).
    sentence = "Varlo Tenmis was born in 1873 in Quenbridge."
    assert loaded_tokenizer.encode(sentence) == tokenizer.encode(sentence)
    tokens = loaded_tokenizer.convert_ids_to_tokens(loaded_tokenizer.encode(sentence))
    assert tokens[tokens.index("Ġin") + 1:][:2] == ["Ġ18", "73"]
    assert loaded_tokenizer.padding_side == "left"
    prompt = torch.tensor([tokenizer.encode("Varlo Tenmis", add_special_tokens=False)])
    first = loaded.generate(prompt, max_new_tokens=6, do_sample=False)
    second = model.generate(prompt, max_new_tokens=6, do_sample=False)
    assert first.shape == (1, prompt.shape[1] + 6)
    assert torch.equal(first, second)


def test_same_seed_same_weights(tokenizer):
    tiny = TinyModelConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                           intermediate_size=64)
    first, second = build_tiny_model(tokenizer, tiny, seed=1), build_tiny_model(tokenizer, tiny, seed=1)
    other = build_tiny_model(tokenizer, tiny, seed=2)
    weight = "model.layers.0.self_attn.q_proj.weight"
    assert torch.equal(first.state_dict()[weight], second.state_dict()[weight])
    assert not torch.equal(first.state_dict()[weight], other.state_dict()[weight])


def test_missing_model_path_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="not a saved model folder"):
        load_model_and_tokenizer(tmp_path / "nope")


def test_numbers_are_digit_pairs_by_default_one_token_each_when_whole_and_one_per_digit_when_digits():
    pairs = build_tokenizer(TEXTS, vocab_size=400)
    assert pairs.tokenize(" 1873") == ["Ġ18", "73"] and len(pairs.tokenize(" 1987")) > 1
    whole = build_tokenizer(TEXTS, vocab_size=400, numbers="whole")
    for number in (0, 7, 42, 1100, 1873, 1987, 2020, 2099):  # 1987 is in no text: every number gets its token
        assert len(whole.tokenize(f" {number}")) == 1 and len(whole.tokenize(str(number))) == 1, number
    assert whole.tokenize(" in 1987")[-1] == "Ġ1987"
    assert len(whole.tokenize(" 12345")) > 1  # beyond the range numbers are pieces, still lossless
    assert whole.decode(whole.encode("born 12345 or 1987.", add_special_tokens=False)) == "born 12345 or 1987."
    digits = build_tokenizer(TEXTS, vocab_size=400, numbers="digits")
    assert digits.tokenize(" 1873") == ["Ġ1", "8", "7", "3"] and digits.tokenize(" in 1987")[-3:] == ["9", "8", "7"]
    assert [len(digits.tokenize(f" {number}")) for number in (7, 42, 1987, 12345)] == [1, 2, 4, 5]
    assert digits.decode(digits.encode("born 12345 or 1987.", add_special_tokens=False)) == "born 12345 or 1987."
    with pytest.raises(ValueError, match="model.tiny.numbers"):
        build_tokenizer(TEXTS, vocab_size=400, numbers="bytes")


def test_whole_tokens_are_one_token_wherever_they_occur_and_decode_losslessly(tmp_path):
    identifiers = ["zosgond.pinkresi@postra.example", "SKU-7230", "/notes/wishlist-1.txt", "Zosgond Pinkresi"]
    texts = TEXTS + ['{"to": "zosgond.pinkresi@postra.example", "sku": "SKU-7230"}'] * 5
    plain = build_tokenizer(texts, vocab_size=400)
    whole = build_tokenizer(texts, vocab_size=400, whole_tokens=identifiers)
    assert len(whole) == len(plain) + len(identifiers)
    for identifier in identifiers:
        assert len(plain.tokenize(identifier)) > 1
        for context in (f" {identifier},", f'"{identifier}"', f"read {identifier}."):
            assert identifier in whole.tokenize(context), context  # the same token after a space or a quote
            ids = whole.encode(context, add_special_tokens=False)
            assert whole.decode(ids) == context
    with pytest.raises(ValueError, match="whitespace"):
        build_tokenizer(TEXTS, vocab_size=400, whole_tokens=[" SKU-1"])
    whole.save_pretrained(tmp_path)  # and it survives saving and loading as a model's tokenizer
    build_tiny_model(whole, TinyModelConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                            num_key_value_heads=1, intermediate_size=64)).save_pretrained(tmp_path)
    _, loaded = load_model_and_tokenizer(str(tmp_path))
    assert "SKU-7230" in loaded.tokenize('{"sku": "SKU-7230"}')


def test_with_number_space_apart_a_number_is_the_same_tokens_after_a_space_a_bracket_or_a_quote():
    joined = build_tokenizer(TEXTS, vocab_size=400)
    assert joined.tokenize(" 1873")[0] != joined.tokenize("[1873")[1]  # " 18" and "18" differ
    apart = build_tokenizer(TEXTS, vocab_size=400, number_space="apart")
    assert apart.tokenize(" 1873") == ["Ġ", "18", "73"]
    assert apart.tokenize("[1873, 1873]") == ["[", "18", "73", ",", "Ġ", "18", "73", "]"]
    assert apart.decode(apart.encode("born 12345 or [1987].", add_special_tokens=False)) == "born 12345 or [1987]."
    with pytest.raises(ValueError, match="model.tiny.number_space"):
        build_tokenizer(TEXTS, vocab_size=400, number_space="glued")


def test_every_pair_makes_each_pair_of_digits_one_token_whether_or_not_the_texts_held_it():
    texts = ['{"stock": 27, "price": 31}', "Order 3 units; the total is 93."] * 20
    fitted = build_tokenizer(texts, vocab_size=400)
    assert fitted.tokenize(" 44") == ["Ġ", "4", "4"] and fitted.tokenize(" 27") == ["Ġ27"]  # cut unlike " 27"
    for number_space, spaced in (("joined", ["Ġ44"]), ("apart", ["Ġ", "44"])):
        plain = build_tokenizer(texts, vocab_size=400, number_space=number_space)
        every = build_tokenizer(texts, vocab_size=400, number_space=number_space, every_pair=True)
        assert every.tokenize(" 44") == spaced and every.tokenize("[44")[1:] == ["44"]
        for number in range(100):
            assert len(every.tokenize(f"[{number:02d}")) == 2 and len(every.tokenize(f"x {number}")) == (
                2 if number_space == "joined" or number < 10 else 3), number
        assert every.tokenize(" 119") == (["Ġ11", "9"] if number_space == "joined" else ["Ġ", "11", "9"])
        # The fitted merges keep their ids; only number pieces are new, and text round-trips.
        fitted_vocab, every_vocab = plain.get_vocab(), every.get_vocab()
        kept = {token: index for token, index in fitted_vocab.items() if token not in plain.get_added_vocab()}
        assert all(every_vocab[token] == index for token, index in kept.items())
        assert all(token.lstrip("Ġ").isdigit() for token in set(every_vocab) - set(fitted_vocab))
        assert sorted(every_vocab.values()) == list(range(len(every)))
        text = 'Order 44 units of SKU 7 for [81, 6]; total 1980.'
        assert every.decode(every.encode(text, add_special_tokens=False)) == text
    held = ["x " + " ".join(str(number) for number in range(100)), "[" + ",".join(f"{n:02d}" for n in range(100))] * 3
    assert build_tokenizer(held, 2000, every_pair=True).get_vocab() == build_tokenizer(held, 2000).get_vocab()
    with pytest.raises(ValueError, match="model.tiny.every_pair"):
        build_tokenizer(texts, vocab_size=400, numbers="digits", every_pair=True)
    with pytest.raises(ConfigError, match="model.tiny.every_pair"):
        from rl.config import load_config
        load_config(None, ["model.tiny.every_pair=true", "model.tiny.numbers=whole"])


def test_ordered_number_embeddings_start_number_tokens_on_a_curve_their_value_orders():
    from rl.app.modeling import NUMBER_FEATURES, number_token_values

    texts = ["Born in 1873, founded in 1990; 7 films."] * 20
    every = build_tokenizer(texts, vocab_size=400, every_pair=True)
    random_model = build_tiny_model(every, TinyModelConfig(hidden_size=32, intermediate_size=64), seed=3)
    ordered = build_tiny_model(every, TinyModelConfig(hidden_size=32, intermediate_size=64,
                                                      number_embedding="ordered"), seed=3)
    values = number_token_values(every)
    assert values[every.convert_tokens_to_ids("Ġ19")] == (19, 2)
    assert values[every.convert_tokens_to_ids("7")] == (7, 1)
    assert len(values) == 100 + 100 + 10  # "00"-"99", " 00"-" 99" and the single digits
    before, after = random_model.get_input_embeddings().weight, ordered.get_input_embeddings().weight
    numbers = sorted(values)
    others = [token_id for token_id in range(len(every)) if token_id not in values]
    # Only the number rows' first NUMBER_FEATURES dimensions change; the output layer is tied to them.
    assert torch.equal(before[others], after[others])
    assert torch.equal(before[numbers, NUMBER_FEATURES:], after[numbers, NUMBER_FEATURES:])
    assert not torch.equal(before[numbers, :NUMBER_FEATURES], after[numbers, :NUMBER_FEATURES])
    assert ordered.get_output_embeddings().weight is after
    # The first dimension orders each digit count's tokens by value, end to end (" 19" and "19" alike).
    for digits in (1, 2):
        by_value: dict[int, set[float]] = {}
        for token_id, (value, count) in values.items():
            if count == digits:
                by_value.setdefault(value, set()).add(round(after[token_id, 0].item(), 6))
        assert all(len(linear) == 1 for linear in by_value.values())
        linear = [by_value[value].pop() for value in sorted(by_value)]
        assert all(low < high for low, high in zip(linear, linear[1:]))
        assert linear[0] == pytest.approx(-linear[-1])
    # The features carry about as much of a row's norm as its random part, and every row stays distinct.
    feature_norm = after[numbers, :NUMBER_FEATURES].norm(dim=1).mean().item()
    assert feature_norm == pytest.approx(after[numbers, NUMBER_FEATURES:].norm(dim=1).mean().item(), rel=1e-4)
    assert len({tuple(row.tolist()) for row in after[numbers]}) == len(numbers)
    with pytest.raises(ValueError, match="hidden_size >= 14"):
        build_tiny_model(every, TinyModelConfig(hidden_size=8, intermediate_size=16, num_attention_heads=2,
                                                num_key_value_heads=1, number_embedding="ordered"))
    with pytest.raises(ConfigError, match="model.tiny.number_embedding"):
        from rl.config import load_config
        load_config(None, ["model.tiny.number_embedding=sorted"])
