"""The "hf" inference engine: a batched sampling loop with a KV cache on a transformers causal LM.

The CPU default. HF `generate()` does a lot of per-step bookkeeping that dominates the time of a tiny
model, so this is a hand-written loop: left-pad the batch, prefill once into a DynamicCache (computing
logits for the last position only), then one forward per new token for the whole batch. Sampling,
stop-token detection and log-probs are tensor ops on the batch; python touches each row only once, at
the end, except for stop strings: after each step the rows still running whose newest token can end a
stop string have their last few tokens decoded (rollouts/stop_strings.py), and a row whose text now
contains one ends at that token. Rows that stopped keep decoding (their extra tokens are dropped) until
every row stopped, and are compacted out of the batch once enough of them have stopped.

Log-probs are those of the sampled tokens under log_softmax(logits / temperature) (logits at
temperature 1 for greedy), i.e. exactly what the trainer recomputes for the policy at that temperature;
top-p only restricts which tokens can be sampled (the "vllm" engine, whose log-probs are renormalised
over the nucleus, agrees at the default top_p = 1). What is simplified on purpose: one
sampling setting per batch, prompts of very different lengths are grouped into length-sorted chunks
(to bound padding and attention memory) rather than scheduled continuously like vLLM.

    engine = HFEngine.from_pretrained(model_path, RolloutConfig())
    outputs = engine.generate(prompts, max_new_tokens=40, stop_token_ids={eos_id}, temperature=1.0, seed=0,
                              stop_strings=("</search>", "</answer>"))
"""

from __future__ import annotations

import inspect
import os
from typing import Any, Sequence

import torch
from transformers import DynamicCache

from rollouts.config import RolloutConfig
from rollouts.engine import GenerationOutput, InferenceEngine, register_engine, resolve_state_dict
from rollouts.stop_strings import StopStringMatcher

# A chunk of the batch holds at most this many (row x padded length) tokens; bounds prefill attention memory.
DEFAULT_MAX_BATCH_TOKENS = 131072
# Compact the batch (drop stopped rows from the cache) when at least this share of its rows have stopped.
COMPACT_WHEN_STOPPED_FRACTION = 0.25


def left_pad(batch_prompt_ids: list[list[int]], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids_BL, attention_mask_BL) with every prompt right-aligned."""
    max_length = max(len(prompt_ids) for prompt_ids in batch_prompt_ids)
    input_ids_BL = torch.full((len(batch_prompt_ids), max_length), pad_token_id, dtype=torch.long)
    attention_mask_BL = torch.zeros((len(batch_prompt_ids), max_length), dtype=torch.long)
    for row, prompt_ids in enumerate(batch_prompt_ids):
        if prompt_ids:
            input_ids_BL[row, max_length - len(prompt_ids):] = torch.tensor(prompt_ids, dtype=torch.long)
            attention_mask_BL[row, max_length - len(prompt_ids):] = 1
    return input_ids_BL, attention_mask_BL


def nucleus_filter(logprobs_BV: torch.Tensor, top_p: float) -> torch.Tensor:
    """Set to -inf the tokens outside the smallest set whose probability reaches top_p (the top token stays)."""
    sorted_logprobs_BV, sorted_indices_BV = logprobs_BV.sort(dim=-1, descending=True)
    sorted_probs_BV = sorted_logprobs_BV.exp()
    mass_before_BV = sorted_probs_BV.cumsum(dim=-1) - sorted_probs_BV
    remove_sorted_BV = mass_before_BV >= top_p
    remove_BV = torch.zeros_like(remove_sorted_BV).scatter(-1, sorted_indices_BV, remove_sorted_BV)
    return logprobs_BV.masked_fill(remove_BV, float("-inf"))


def inverse_cdf_sample(probs_BV: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """tokens_B drawn from each row's distribution by inverting its CDF (several times faster than multinomial).

    right=True never picks a zero-probability token: its CDF step has zero width.
    """
    cdf_BV = probs_BV.cumsum(dim=-1)
    uniform_B1 = torch.rand((probs_BV.shape[0], 1), generator=generator, device=probs_BV.device) * cdf_BV[:, -1:]
    tokens_B = torch.searchsorted(cdf_BV, uniform_B1, right=True).squeeze(-1)
    return tokens_B.clamp(max=probs_BV.shape[-1] - 1)


def sample_next_tokens(logits_BV: torch.Tensor, temperature: float, top_p: float,
                       generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens_B, logprobs_B): sampled tokens and their log-probs under log_softmax(logits / temperature)."""
    logits_BV = logits_BV.float()
    if temperature <= 0:
        logprobs_BV = torch.log_softmax(logits_BV, dim=-1)
        tokens_B = logprobs_BV.argmax(dim=-1)
    else:
        logprobs_BV = torch.log_softmax(logits_BV / temperature, dim=-1)
        sampling_logprobs_BV = nucleus_filter(logprobs_BV, top_p) if top_p < 1.0 else logprobs_BV
        tokens_B = inverse_cdf_sample(sampling_logprobs_BV.exp(), generator)
    return tokens_B, logprobs_BV.gather(-1, tokens_B[:, None]).squeeze(-1)


def first_stop_lengths(generated_BT: torch.Tensor, stop_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(lengths_B, stopped_B): tokens kept per row (through the first stop token) and whether a row stopped."""
    is_stop_BT = torch.isin(generated_BT, stop_ids)
    stopped_B = is_stop_BT.any(dim=-1)
    first_stop_B = is_stop_BT.int().argmax(dim=-1)
    lengths_B = torch.where(stopped_B, first_stop_B + 1, torch.full_like(first_stop_B, generated_BT.shape[1]))
    return lengths_B, stopped_B


def kept_lengths(generated_BT: torch.Tensor, stop_ids: torch.Tensor,
                 string_stop_lengths_B: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(lengths_B, stopped_B): tokens kept through the first stop token or stop string completion, and stops.

    string_stop_lengths_B: per row, tokens through the one that completed a stop string (0: none did).
    """
    lengths_B, stopped_B = first_stop_lengths(generated_BT, stop_ids)  # lengths_B is T where no stop token
    string_stopped_B = string_stop_lengths_B > 0
    lengths_B = torch.where(string_stopped_B, torch.minimum(lengths_B, string_stop_lengths_B), lengths_B)
    return lengths_B, stopped_B | string_stopped_B


def length_sorted_chunks(lengths: list[int], extra_tokens: int, max_batch_tokens: int) -> list[list[int]]:
    """Row indices grouped by length so that rows x (longest prompt + extra_tokens) stays within the budget."""
    order = sorted(range(len(lengths)), key=lambda row: lengths[row])
    chunks: list[list[int]] = []
    current: list[int] = []
    for row in order:
        padded_tokens = (len(current) + 1) * (lengths[row] + extra_tokens)
        if current and padded_tokens > max_batch_tokens:
            chunks.append(current)
            current = []
        current.append(row)
    if current:
        chunks.append(current)
    return chunks


def cache_argument_name(model: torch.nn.Module) -> str:
    """The forward argument that takes the KV cache: "cache" (transformers >= 5.2x) or "past_key_values"."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


@register_engine("hf")
class HFEngine(InferenceEngine):
    """Batched sampling with a KV cache on a transformers model (any causal LM that takes position_ids)."""

    def __init__(self, model: torch.nn.Module, tokenizer: Any, version: int = 0,
                 max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS):
        super().__init__(tokenizer, version)
        self.model = model.eval()
        self.max_batch_tokens = max_batch_tokens
        pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.pad_token_id = int(pad_token_id or 0)
        self.cache_argument = cache_argument_name(model)
        self._stop_string_matchers: dict[tuple[str, ...], StopStringMatcher] = {}

    @classmethod
    def from_pretrained(cls, model_path: str | os.PathLike, rollout_config: RolloutConfig, dtype: str = "float32",
                        device: str = "cpu") -> "HFEngine":
        from rollouts.model_loading import load_model_and_tokenizer

        model, tokenizer = load_model_and_tokenizer(model_path, dtype=dtype, device=device)
        return cls(model, tokenizer)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def stop_string_matcher(self, stop_strings: Sequence[str]) -> StopStringMatcher | None:
        """The matcher of these stop strings (built once: it holds a table over the vocabulary)."""
        key = tuple(sorted({text for text in stop_strings if text}))
        if not key:
            return None
        if key not in self._stop_string_matchers:
            self._stop_string_matchers[key] = StopStringMatcher(self.tokenizer, key)
        return self._stop_string_matchers[key]

    @torch.inference_mode()
    def generate(self, batch_prompt_ids: list[list[int]], max_new_tokens: int, stop_token_ids: set[int],
                 temperature: float = 1.0, top_p: float = 1.0, seed: int | None = None,
                 stop_strings: Sequence[str] = ()) -> list[GenerationOutput]:
        if not batch_prompt_ids:
            return []
        if max_new_tokens < 1:
            return [GenerationOutput([], [], "length") for _ in batch_prompt_ids]
        generator = None
        if seed is not None and temperature > 0:
            generator = torch.Generator(device=self.device).manual_seed(seed)
        stop_ids = torch.tensor(sorted(stop_token_ids), dtype=torch.long, device=self.device)
        matcher = self.stop_string_matcher(stop_strings)
        lengths = [len(prompt_ids) for prompt_ids in batch_prompt_ids]
        outputs: list[GenerationOutput | None] = [None] * len(batch_prompt_ids)
        for rows in length_sorted_chunks(lengths, max_new_tokens, self.max_batch_tokens):
            chunk_outputs = self._generate_chunk([batch_prompt_ids[row] for row in rows], max_new_tokens, stop_ids,
                                                 matcher, temperature, top_p, generator)
            for row, output in zip(rows, chunk_outputs):
                outputs[row] = output
        return outputs  # type: ignore[return-value]

    def _forward(self, input_ids_BL: torch.Tensor, attention_mask_BL: torch.Tensor, position_ids_BL: torch.Tensor,
                 cache: DynamicCache) -> torch.Tensor:
        output = self.model(input_ids=input_ids_BL, attention_mask=attention_mask_BL, position_ids=position_ids_BL,
                            use_cache=True, logits_to_keep=1, **{self.cache_argument: cache})
        return output.logits[:, -1, :]

    def _generate_chunk(self, batch_prompt_ids: list[list[int]], max_new_tokens: int, stop_ids: torch.Tensor,
                        matcher: StopStringMatcher | None, temperature: float, top_p: float,
                        generator: torch.Generator | None) -> list[GenerationOutput]:
        device = self.device
        input_ids_BL, attention_mask_BL = (tensor.to(device) for tensor in left_pad(batch_prompt_ids, self.pad_token_id))
        position_ids_BL = (attention_mask_BL.cumsum(dim=-1) - 1).clamp(min=0)
        cache = DynamicCache()
        logits_BV = self._forward(input_ids_BL, attention_mask_BL, position_ids_BL, cache)
        next_position_B = position_ids_BL[:, -1] + 1

        batch_size = len(batch_prompt_ids)
        generated_BT = torch.full((batch_size, max_new_tokens), self.pad_token_id, dtype=torch.long)
        logprobs_BT = torch.zeros((batch_size, max_new_tokens))
        string_stop_lengths_B = torch.zeros(batch_size, dtype=torch.long)  # 0: no stop string completed
        active_rows_A = torch.arange(batch_size, device=device)  # original row of each row still in the batch
        stopped_A = torch.zeros(batch_size, dtype=torch.bool, device=device)
        for step in range(max_new_tokens):
            tokens_A, token_logprobs_A = sample_next_tokens(logits_BV, temperature, top_p, generator)
            generated_BT[active_rows_A, step] = tokens_A.cpu()
            logprobs_BT[active_rows_A, step] = token_logprobs_A.cpu()
            stopped_A |= torch.isin(tokens_A, stop_ids)
            if matcher is not None:
                self._stop_on_strings(matcher, generated_BT, active_rows_A, stopped_A, string_stop_lengths_B, step)
            num_stopped = int(stopped_A.sum())
            if step == max_new_tokens - 1 or num_stopped == len(active_rows_A):
                break
            if num_stopped >= COMPACT_WHEN_STOPPED_FRACTION * len(active_rows_A):
                keep_A = (~stopped_A).nonzero().squeeze(-1)
                cache.batch_select_indices(keep_A)
                active_rows_A, tokens_A, stopped_A = active_rows_A[keep_A], tokens_A[keep_A], stopped_A[keep_A]
                attention_mask_BL, next_position_B = attention_mask_BL[keep_A], next_position_B[keep_A]
            attention_mask_BL = torch.cat([attention_mask_BL, attention_mask_BL.new_ones((len(active_rows_A), 1))], 1)
            logits_BV = self._forward(tokens_A[:, None], attention_mask_BL, next_position_B[:, None], cache)
            next_position_B = next_position_B + 1
        return self._collect(generated_BT, logprobs_BT, stop_ids.cpu(), string_stop_lengths_B)

    @staticmethod
    def _stop_on_strings(matcher: StopStringMatcher, generated_BT: torch.Tensor, active_rows_A: torch.Tensor,
                         stopped_A: torch.Tensor, string_stop_lengths_B: torch.Tensor, step: int) -> None:
        """Stop the running rows whose text a stop string now ends (in place: stopped_A, their kept lengths)."""
        running_A = (~stopped_A).cpu()
        running_rows_R = active_rows_A.cpu()[running_A]
        completes_R = matcher.rows_completing(generated_BT, running_rows_R, step)
        if completes_R.any():
            string_stop_lengths_B[running_rows_R[completes_R]] = step + 1
            stopped_A[running_A.nonzero().squeeze(-1)[completes_R].to(stopped_A.device)] = True

    @staticmethod
    def _collect(generated_BT: torch.Tensor, logprobs_BT: torch.Tensor, stop_ids: torch.Tensor,
                 string_stop_lengths_B: torch.Tensor) -> list[GenerationOutput]:
        lengths_B, stopped_B = kept_lengths(generated_BT, stop_ids, string_stop_lengths_B)
        token_rows, logprob_rows = generated_BT.tolist(), logprobs_BT.tolist()
        return [
            GenerationOutput(token_ids=tokens[:length], logprobs=logprobs[:length],
                             finish_reason="stop" if stopped else "length")
            for tokens, logprobs, length, stopped in zip(token_rows, logprob_rows, lengths_B.tolist(), stopped_B.tolist())
        ]

    def load_weights(self, state_dict_or_ref: Any, version: int) -> None:
        state_dict = resolve_state_dict(state_dict_or_ref)
        own_keys = set(self.model.state_dict())
        unknown = sorted(set(state_dict) - own_keys)
        if unknown:
            raise KeyError(f"load_weights: {len(unknown)} keys are not parameters of the rollout model, e.g. "
                           f"{unknown[:3]}; send a full (or LoRA-merged) state dict with the base model's names")
        with torch.no_grad():
            self.model.load_state_dict(state_dict, strict=False)
        self._version = int(version)


__all__ = ["HFEngine", "cache_argument_name", "left_pad", "nucleus_filter", "sample_next_tokens",
           "first_stop_lengths", "kept_lengths", "length_sorted_chunks"]
