"""Stop strings for a batched sampler: which rows' text now contains a string that ends the turn.

A stock chat tokenizer splits a protocol tag into several tokens (`</search>` is `</`, `search`, `>` for
Qwen2), and a model may fuse it with the text before it (`x</search>` starts with the token `x</`), so a
turn cannot end on a token id. The sampler asks, after each step, whether the decoded tail of a row
contains a stop string; the row ends at the token that completes it, and its tokens stay exactly as
generated (that token may carry characters past the stop string: the turn's text is its decoded tokens).

Why a short window is enough: a string of n UTF-8 bytes spans at most n tokens (every token holds at
least one byte), and every step checks every running row, so a match found now must end in the newest
token (an older one would have been found, and the row stopped, at an earlier step). The window covers
generated tokens only: a stop string in the prompt ends nothing.

What keeps it cheap: only rows still running are checked, and only those whose newest token can end a
stop string at all, i.e. whose own text holds the last character of one (or an incomplete UTF-8
sequence, which can end a multi-byte character). That per-token test is a lookup in a table built once
per vocabulary and set of stop strings; on the tiny model a row is decoded only when it writes `>`.

    matcher = StopStringMatcher(tokenizer, ["</search>", "</answer>"])
    stopped_R = matcher.rows_completing(generated_BT, rows_R, step)
"""

from __future__ import annotations

from typing import Any, Iterable

import torch

REPLACEMENT_CHARACTER = "\ufffd"  # what a token holding part of a multi-byte character decodes to


def decode_windows(tokenizer: Any, windows: list[list[int]]) -> list[str]:
    """The text of each window, decoded the way the agent loop decodes a turn (special tokens kept)."""
    return tokenizer.batch_decode(windows, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def token_texts(tokenizer: Any, vocabulary_size: int) -> list[str]:
    """The text of every token on its own (the Rust decoder of a fast tokenizer when there is one)."""
    single_tokens = [[token_id] for token_id in range(vocabulary_size)]
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        return backend.decode_batch(single_tokens, skip_special_tokens=False)
    return decode_windows(tokenizer, single_tokens)


class StopStringMatcher:
    """Detects, step by step, the rows of a batch whose generated text now contains one of `stop_strings`."""

    def __init__(self, tokenizer: Any, stop_strings: Iterable[str]):
        self.tokenizer = tokenizer
        self.stop_strings = tuple(sorted({text for text in stop_strings if text}))
        if not self.stop_strings:
            raise ValueError("StopStringMatcher needs at least one non-empty stop string")
        # one token more than the longest string's bytes: a tokenizer that strips the first token's
        # leading space (SentencePiece) then still sees the string whole when it starts with a space
        self.window_tokens = max(len(text.encode("utf-8")) for text in self.stop_strings) + 1
        self.may_end_V = self._may_end_table()

    def _may_end_table(self) -> torch.Tensor | None:
        """(V,) bool: the token's own text can end a stop string; None when every token must be checked."""
        last_characters = {text[-1] for text in self.stop_strings}
        if any(character.isspace() for character in last_characters):
            return None  # a decoder may drop a token's leading space on its own (SentencePiece): check all
        ending_characters = last_characters | {REPLACEMENT_CHARACTER}
        texts = token_texts(self.tokenizer, len(self.tokenizer))
        return torch.tensor([any(character in text for character in ending_characters) for text in texts],
                            dtype=torch.bool)

    def contains_stop(self, text: str) -> bool:
        return any(stop in text for stop in self.stop_strings)

    def rows_completing(self, generated_BT: torch.Tensor, rows_R: torch.Tensor, step: int) -> torch.Tensor:
        """(R,) bool: whether row rows_R[r] of generated_BT (CPU) completes a stop string with its token at step.

        The caller passes only the rows still running, and calls this at every step.
        """
        completes_R = torch.zeros(len(rows_R), dtype=torch.bool)
        if len(rows_R) == 0:
            return completes_R
        candidates_R = torch.ones(len(rows_R), dtype=torch.bool)
        if self.may_end_V is not None:
            newest_R = generated_BT[rows_R, step]
            known_R = newest_R < len(self.may_end_V)  # ids past the tokenizer (a padded vocab): always checked
            candidates_R = ~known_R | self.may_end_V[newest_R.clamp(max=len(self.may_end_V) - 1)]
        candidate_indices = candidates_R.nonzero().squeeze(-1)
        if len(candidate_indices) == 0:
            return completes_R
        start = max(0, step + 1 - self.window_tokens)
        windows = generated_BT[rows_R[candidate_indices], start:step + 1].tolist()
        for index, text in zip(candidate_indices.tolist(), decode_windows(self.tokenizer, windows)):
            completes_R[index] = self.contains_stop(text)
        return completes_R


__all__ = ["StopStringMatcher", "decode_windows", "token_texts"]
