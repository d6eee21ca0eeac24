"""A random stock-shaped Qwen2 made to write chosen tokens: the rows that test stop strings in every engine.

`scripted_bigram_model` turns the random tiny Qwen2 of tests/conftest.py (`qwen2_checkpoint`, real Qwen2
vocabulary) into a bigram model by hand: after each scripted token it writes the scripted successor,
whatever the sampling temperature. `scripted_stop_rows` is one batch with every way a turn can end.
Used by tests/rollouts/test_stop_strings.py ("hf") and test_engine_vllm.py ("vllm", in a subprocess).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

STOP_STRINGS = ("</search>", "</answer>")


def scripted_bigram_model(model: torch.nn.Module, successors: dict[int, int], logit_scale: float = 50.0):
    """`model` (a Qwen2 with untied embeddings), changed in place to write successors[t] right after token t.

    Every layer's output projections are zeroed, so the last hidden state is the current token's
    embedding. Scripted token number k gets hidden dimension k: its embedding is that unit vector and its
    successor's lm_head row points along it. The other tokens' embeddings and lm_head rows are zero on
    those dimensions, so every other token keeps the random model's (untrained) next-token logits.
    """
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        embedding, lm_head = model.model.embed_tokens.weight, model.lm_head.weight
        dimensions = list(range(len(successors)))
        assert len(dimensions) < embedding.shape[1], "one hidden dimension per scripted token"
        embedding[:, dimensions] = 0.0
        lm_head[:, dimensions] = 0.0
        for dimension, (token, successor) in zip(dimensions, successors.items()):
            embedding[token] = 0.0
            embedding[token, dimension] = 1.0
            lm_head[successor, dimension] = logit_scale
    return model


@dataclass
class ScriptedStopRows:
    """One batch: prompts, the bigram script that makes each row write its tokens, what an engine keeps."""

    prompts: list[list[int]]
    successors: dict[int, int]
    expected_token_ids: list[list[int] | None]  # None: an unscripted row that runs to the token budget
    expected_texts: list[str | None]
    stop_token_ids: set[int]


def scripted_stop_rows(tokenizer) -> ScriptedStopRows:
    """Rows ending on `x</search>` (tag split in 3 tokens after the text), ` Hall.</answer>` + "\\n" (the tag
    fused with the text before it, its last token carrying a newline past it), ` y </search>`, the
    special token <|im_end|>, and a row whose prompt holds a stop string but whose completion does not."""

    def token(text: str) -> int:
        (token_id,) = tokenizer.encode(text, add_special_tokens=False)
        return token_id

    end_of_turn = tokenizer.convert_tokens_to_ids("<|im_end|>")
    tag = [token("</"), token("search"), token(">")]
    rows = {  # the prompt's last token -> (what the model writes after it, what an engine keeps)
        token("Search"): ([token(" x"), *tag, token(" after")], [token(" x"), *tag]),
        token("Answer"): ([token(" Hall"), token(".</"), token("answer"), token(">\n"), token(" z")],
                          [token(" Hall"), token(".</"), token("answer"), token(">\n")]),
        token("Keep"): ([token(" y"), token(" </"), *tag[1:]], [token(" y"), token(" </"), *tag[1:]]),
        token("Reply"): ([token(" go"), end_of_turn, token(" q")], [token(" go"), end_of_turn]),
    }
    successors: dict[int, int] = {}
    for last_prompt_token, (written, _) in rows.items():
        sequence = [last_prompt_token, *written]
        for current, successor in zip(sequence[:-1], sequence[1:]):
            assert successors.get(current, successor) == successor, "a bigram model has one successor per token"
            successors[current] = successor
    question = tokenizer.encode("Who founded Bemo Hall? ", add_special_tokens=False)
    prompts = [question + [last] for last in rows]
    prompts.append(tokenizer.encode("<search> q </search> then", add_special_tokens=False))
    return ScriptedStopRows(
        prompts=prompts,
        successors=successors,
        expected_token_ids=[kept for _, kept in rows.values()] + [None],
        expected_texts=[" x</search>", " Hall.</answer>\n", " y </search>", " go<|im_end|>", None],
        stop_token_ids={end_of_turn},
    )
