"""A scripted inference engine: it plays written turns instead of sampling them.

The SFT expert (rl/app/expert.py) plays its demonstrations through the real agent loop with it, the
fan-out benchmark (rl/bench/rollouts.py) plays the expert's two behaviours, and the tests drive the loop
with turns they choose. It is a real `InferenceEngine`, so the loop treats its turns exactly as a
model's: it budgets, cuts, parses and records them with the same code.

A script maps one trajectory's context (prompt + response so far, token ids) to its next turn (token
ids). Two kinds:

- `TurnScripts`: every question's turns written in advance, {prompt ids: [turn ids, ...]}. A context
  finds its script by its prompt and its round by the scripted turns it already holds, so the engine
  keeps no state: concurrent episodes, the rows of one batch and repeated plays of a question each get
  their own next turn.
- `response_policy(tokenizer, policy)`: a function of the response text so far (the tests' "search
  twice, then answer").

Like a model, the engine stops a turn at its first stop token or stop string and at `max_new_tokens`; finish_reason
is "stop" when the turn ends on a stop token, else "length". Each token's log-prob is `logprob` (0.0 by
default). With `model`, each turn is teacher-forced through the model token by token with a KV cache, so
a timing benchmark pays the real decode cost, and the log-probs are the model's.

What it simplifies on purpose: new weights (`load_weights`) only set the version; the script stays.

    scripts = TurnScripts({tuple(prompt_ids): [encode(tokenizer, "<search> a </search>"),
                                               encode(tokenizer, "<answer> x </answer>")]})
    groups = run_episodes(ScriptedEngine(tokenizer, scripts), protocol, executor, [question], 1, rollout_config, 0)
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any, Callable

from rollouts.config import RolloutConfig
from rollouts.engine import GenerationOutput, InferenceEngine
from rollouts.stop_strings import decode_windows

# A script: a trajectory's context (token ids) -> the token ids of its next turn.
Script = Callable[[list[int]], list[int]]

# Where the response starts in a decoded context (the Qwen-style chat template of the tiny model).
ASSISTANT_HEADER = "<|im_start|>assistant\n"


def find_tokens(haystack: list[int], needle: list[int], start: int) -> int:
    """Index of the first occurrence of `needle` in `haystack` at or after `start`; -1 if none."""
    if not needle:
        return start
    while True:
        try:
            index = haystack.index(needle[0], start)
        except ValueError:
            return -1
        if haystack[index:index + len(needle)] == needle:
            return index
        start = index + 1


def turns_played(response_ids: list[int], turns: list[list[int]]) -> int:
    """How many of `turns`, in order, the response holds whole (each after the previous one).

    The tool observations between the turns never quote a whole scripted turn (tags and all), so the
    first occurrence after the previous turn is the turn the engine wrote. A turn the loop cut short is
    not held whole: the engine writes it again.
    """
    position = 0
    for count, turn in enumerate(turns):
        found = find_tokens(response_ids, turn, position)
        if found < 0:
            return count
        position = found + len(turn)
    return len(turns)


class TurnScripts:
    """Each question's turns written in advance: {prompt token ids: [token ids of each turn]}.

    The next turn of a context is the first scripted turn of its prompt that its response does not hold
    yet; once all were played the last one repeats (only a turn that did not end the episode leads there).
    A prompt has one script: to play one question with two scripts, play them in separate calls.
    """

    def __init__(self, turns_by_prompt: Mapping[Sequence[int], Sequence[Sequence[int]]]):
        self.turns_by_prompt: dict[tuple[int, ...], list[list[int]]] = {}
        for prompt_ids, turns in turns_by_prompt.items():
            if not turns:
                raise ValueError(f"the script of the prompt of {len(prompt_ids)} tokens has no turn")
            self.turns_by_prompt[tuple(prompt_ids)] = [list(turn) for turn in turns]
        self.prompt_lengths = sorted({len(prompt) for prompt in self.turns_by_prompt}, reverse=True)

    def prompt_of(self, context_ids: list[int]) -> tuple[int, ...]:
        """The longest scripted prompt that starts `context_ids`."""
        for length in self.prompt_lengths:
            prompt = tuple(context_ids[:length])
            if prompt in self.turns_by_prompt:
                return prompt
        raise KeyError(f"ScriptedEngine: a context of {len(context_ids)} tokens matches no scripted prompt")

    def __call__(self, context_ids: list[int]) -> list[int]:
        prompt = self.prompt_of(context_ids)
        turns = self.turns_by_prompt[prompt]
        played = turns_played(list(context_ids[len(prompt):]), turns)
        return turns[min(played, len(turns) - 1)]


def response_policy(tokenizer: Any, policy: Callable[[str], str]) -> Script:
    """A script that writes `policy(response text so far)`: the text after the prompt's assistant header."""
    def script(context_ids: list[int]) -> list[int]:
        context = tokenizer.decode(context_ids, skip_special_tokens=False)
        response_so_far = context.split(ASSISTANT_HEADER, 1)[1]
        return tokenizer.encode(policy(response_so_far), add_special_tokens=False)

    return script


def stop_turn(turn_ids: list[int], max_new_tokens: int, stop_token_ids: set[int], tokenizer: Any = None,
              stop_strings: Sequence[str] = ()) -> tuple[list[int], str]:
    """The turn as a model would end it: at its first stop token or at the token that completes a stop string
    (decoded as the loop decodes), within max_new_tokens; and why it ended ("stop" or "length")."""
    budget_ids = list(turn_ids[:max_new_tokens])
    end = next((index + 1 for index, token in enumerate(budget_ids) if token in stop_token_ids), None)
    if stop_strings:
        string_end = first_prefix_containing(tokenizer, budget_ids[:end] if end else budget_ids, stop_strings)
        end = string_end if string_end is not None else end
    return (budget_ids[:end], "stop") if end is not None else (budget_ids, "length")


def first_prefix_containing(tokenizer: Any, token_ids: list[int], stop_strings: Sequence[str]) -> int | None:
    """The length of the shortest prefix whose text contains a stop string, or None (bisection: containing
    one is monotone in the prefix length)."""
    def contains(length: int) -> bool:
        text = decode_windows(tokenizer, [token_ids[:length]])[0]
        return any(stop in text for stop in stop_strings)

    if not token_ids or not contains(len(token_ids)):
        return None
    low, high = 1, len(token_ids)
    while low < high:
        middle = (low + high) // 2
        low, high = (low, middle) if contains(middle) else (middle + 1, high)
    return low


class ScriptedEngine(InferenceEngine):
    """Writes each context's next turn from `script` (a TurnScripts, or any Script callable).

    logprob: the behaviour log-prob of every token (without a model). model: a causal LM to teacher-force
    the turns through (the log-probs are then the model's). batch_sizes: the rows of each generate call,
    in order (what a test checks about the loop's batching).
    """

    def __init__(self, tokenizer: Any, script: Script, model: Any = None, logprob: float = 0.0, version: int = 0):
        super().__init__(tokenizer, version)
        self.script = script
        self.model = model.eval() if model is not None else None
        self.logprob = float(logprob)
        self.batch_sizes: list[int] = []

    @classmethod
    def from_pretrained(cls, model_path: str | os.PathLike, rollout_config: RolloutConfig, dtype: str = "float32",
                        device: str = "cpu") -> "ScriptedEngine":
        raise NotImplementedError("ScriptedEngine is built from scripts, not loaded from a model folder")

    def load_weights(self, state_dict_or_ref: Any, version: int) -> None:
        self._version = int(version)

    def generate(self, batch_prompt_ids: list[list[int]], max_new_tokens: int, stop_token_ids: set[int],
                 temperature: float = 1.0, top_p: float = 1.0, seed: int | None = None,
                 stop_strings: Sequence[str] = ()) -> list[GenerationOutput]:
        """Each context's next scripted turn; sampling settings do not apply to a script."""
        self.batch_sizes.append(len(batch_prompt_ids))
        outputs = []
        for context_ids in batch_prompt_ids:
            token_ids, finish_reason = stop_turn(self.script(list(context_ids)), max_new_tokens, stop_token_ids,
                                                 self.tokenizer, stop_strings)
            logprobs = (self.forced_logprobs(list(context_ids), token_ids) if self.model is not None
                        else [self.logprob] * len(token_ids))
            outputs.append(GenerationOutput(token_ids, logprobs, finish_reason))
        return outputs

    def forced_logprobs(self, context_ids: list[int], forced_ids: list[int]) -> list[float]:
        """The model's log-prob of each forced token: prefill, then one cached forward per token (like decoding)."""
        import torch
        from transformers import DynamicCache

        from rollouts.engine_hf import cache_argument_name

        cache_kwargs = {cache_argument_name(self.model): DynamicCache()}
        logprobs = []
        with torch.inference_mode():
            logits = self.model(input_ids=torch.tensor([context_ids]), use_cache=True, logits_to_keep=1,
                                **cache_kwargs).logits[:, -1, :]
            for token_id in forced_ids:
                logprobs.append(float(torch.log_softmax(logits.float(), dim=-1)[0, token_id]))
                logits = self.model(input_ids=torch.tensor([[token_id]]), use_cache=True,
                                    **cache_kwargs).logits[:, -1, :]
        return logprobs


__all__ = ["ASSISTANT_HEADER", "ScriptedEngine", "Script", "TurnScripts", "response_policy", "stop_turn",
           "turns_played"]
