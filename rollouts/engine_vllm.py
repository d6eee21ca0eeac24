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

Weight updates go through a collective group of the actor and vLLM's workers (rollouts/weight_group.py):
at start the actor (rank 0) and every worker (`FanoutWorkerExtension`, vLLM's `worker_extension_cls`;
ranks 1..N, one per tensor-parallel rank) join a private gloo group. An update sends only the tensors'
names, dtypes and shapes through `collective_rpc`, and the bytes by broadcast in flat per-dtype buckets
of `rollout.weight_bucket_mb`; each worker reloads them in place with its `reload_weights` (HF parameter
names: the full or LoRA-merged state dict of the trainer's model loads as is, each tensor-parallel rank
taking its shard, and weights the CPU kernels repacked at load time are processed again). The prefix
cache is then reset so no KV computed with old weights is reused.

LoRA (`rollout.lora_sync=adapter`): the engine is built with vLLM's LoRA support, and an update is a
`LoraAdapter` (the adapter matrices and their peft config, a few MB instead of the model), written to a
folder local to the actor and served as a new `LoRARequest` from then on; the base weights never move.

`rollout.tensor_parallel_size` > 1 runs vLLM's workers as processes of this actor on its node (vLLM's
multiprocessing executor), on the GPUs Ray gave the actor. What is simplified on purpose: one node per
engine (no pipeline parallelism or multi-node tensor parallelism, which would need vLLM's Ray executor),
and the weight group is gloo on CPU tensors (each worker copies to its GPU while loading), not NCCL from
the trainer's GPUs straight into the engines' (verl, OpenRLHF).

On a CPU-only machine vLLM runs from the `vllm-cpu` package in its own venv (scripts/vllm_cpu_env.sh).

    engine = VLLMEngine.from_pretrained(model_path, RolloutConfig(gpu_memory_utilization=0.5, tensor_parallel_size=2))
    engine.load_weights(state_dict, version=3)                    # full weights, through the weight group
    engine.load_weights(LoraAdapter(tensors, peft_config), 4)     # rollout.lora_sync=adapter
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Sequence

import torch

from rollouts.config import RolloutConfig
from rollouts.engine import GenerationOutput, InferenceEngine, LoraAdapter, register_engine, resolve_state_dict
from rollouts.weight_group import (DEFAULT_TIMEOUT_S, TensorSpec, WeightGroup, free_port, plan_buckets, tensor_specs,
                                   wait_all)

WORKER_EXTENSION = "rollouts.engine_vllm.FanoutWorkerExtension"
WEIGHT_GROUP_HOST = "127.0.0.1"  # the actor and its engine's workers share a node
# vLLM's LoRA kernels take these maximum ranks; an adapter of rank r needs the next one up
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


class FanoutWorkerExtension:
    """Methods mixed into each vLLM worker (called through LLM.collective_rpc)."""

    def join_weight_group(self, host: str, port: int, world_size: int, timeout_s: float) -> int:
        """Join the actor's weight group as rank 1 + this worker's rank; returns that rank."""
        self.fanout_weight_group = WeightGroup.create(host, port, 1 + int(self.rank), world_size, "gloo", timeout_s)
        return self.fanout_weight_group.rank

    def receive_weights(self, spec_lists: list, buckets: list) -> int:
        """Take part in one update's broadcasts and load what arrived; returns how many tensors."""
        specs = [TensorSpec.from_list(values) for values in spec_lists]
        weights = self.fanout_weight_group.receive_buckets(specs, buckets)
        if hasattr(self, "reload_weights"):  # vLLM >= 0.2x: re-processes weights the kernels repacked at load
            self.reload_weights(weights_iterator=weights, is_checkpoint_format=True)
        else:
            self.get_model().load_weights(weights=weights)  # type: ignore[attr-defined]
        return len(weights)


def lora_rank_limit(rank: int) -> int:
    """The smallest maximum rank vLLM's LoRA kernels accept that holds an adapter of `rank`."""
    for limit in VLLM_LORA_RANKS:
        if limit >= rank:
            return limit
    raise ValueError(f"LoRA rank {rank} is above vLLM's largest ({VLLM_LORA_RANKS[-1]}); lower model.lora.r")


def write_adapter_folder(adapter: LoraAdapter, folder: Path) -> Path:
    """peft's on-disk adapter (adapter_model.safetensors + adapter_config.json), which vLLM loads."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    save_file({name: tensor.detach().to("cpu").contiguous() for name, tensor in adapter.tensors.items()},
              str(folder / "adapter_model.safetensors"))
    (folder / "adapter_config.json").write_text(json.dumps(adapter.config, default=sorted))  # sets -> lists
    return folder


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


def cpu_thread_binding(tensor_parallel_size: int) -> str:
    """VLLM_CPU_OMP_THREADS_BIND value giving each CPU tensor-parallel rank its share of this process's cores
    ("0|1" for 2 ranks on 2 cores): vLLM's CPU workers bind one NUMA node each by default, and a one-node
    machine has too few."""
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < tensor_parallel_size:
        raise ValueError(f"rollout.tensor_parallel_size={tensor_parallel_size} on CPU needs a core per rank; this "
                         f"process may use {len(cores)}")
    shares = [cores[rank::tensor_parallel_size] for rank in range(tensor_parallel_size)]
    return "|".join(",".join(str(core) for core in share) for share in shares)


@register_engine("vllm")
class VLLMEngine(InferenceEngine):
    """vllm.LLM behind the InferenceEngine interface."""

    def __init__(self, llm: Any, tokenizer: Any, version: int = 0, bucket_bytes: int = 256 << 20,
                 serves_adapters: bool = False):
        super().__init__(tokenizer, version)
        self.llm = llm
        self.bucket_bytes = bucket_bytes
        self.serves_adapters = serves_adapters
        self.lora_request: Any = None  # the adapter generation runs with (None: the base weights)
        self._adapter_root = Path(tempfile.mkdtemp(prefix="fanout-lora-")) if serves_adapters else None
        self.weight_group = self._connect_weight_group()

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
        tensor_parallel_size = rollout_config.tensor_parallel_size
        if device == "cpu" and tensor_parallel_size > 1:
            os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", cpu_thread_binding(tensor_parallel_size))
        serves_adapters = rollout_config.lora_sync == "adapter"
        lora_options = dict(enable_lora=True, max_loras=1, max_lora_rank=lora_rank_limit(rollout_config.max_lora_rank)) \
            if serves_adapters else {}
        llm = LLM(
            model=str(model_path),
            dtype=dtype,
            seed=0,
            tensor_parallel_size=tensor_parallel_size,
            gpu_memory_utilization=rollout_config.gpu_memory_utilization,
            max_model_len=rollout_config.max_context_tokens,
            logprobs_mode="processed_logprobs",
            enable_prefix_caching=True,
            enforce_eager=device == "cpu",  # no compilation warm-up: vLLM on CPU serves tests and small runs
            worker_extension_cls=WORKER_EXTENSION,
            **lora_options,
        )
        return cls(llm, tokenizer, bucket_bytes=rollout_config.weight_bucket_mb << 20, serves_adapters=serves_adapters)

    def _connect_weight_group(self) -> WeightGroup:
        """The actor as rank 0, every vLLM worker as 1 + its rank: joined together (creation blocks until all are in)."""
        port = free_port(WEIGHT_GROUP_HOST)
        world_size = 1 + self.llm.llm_engine.vllm_config.parallel_config.world_size
        with ThreadPoolExecutor(max_workers=1) as pool:
            own_side = pool.submit(WeightGroup.create, WEIGHT_GROUP_HOST, port, 0, world_size, "gloo", DEFAULT_TIMEOUT_S)
            self.llm.collective_rpc("join_weight_group", args=(WEIGHT_GROUP_HOST, port, world_size, DEFAULT_TIMEOUT_S))
            return own_side.result()

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
        request_outputs = self.llm.generate(prompts, params, use_tqdm=False, lora_request=self.lora_request)
        outputs = []
        for request_output in request_outputs:
            completion = request_output.outputs[0]
            token_ids = list(completion.token_ids)
            finish_reason = "stop" if completion.finish_reason == "stop" else "length"
            outputs.append(GenerationOutput(token_ids, sampled_logprobs(token_ids, completion.logprobs), finish_reason))
        return outputs

    def load_weights(self, state_dict_or_ref: Any, version: int) -> None:
        if isinstance(state_dict_or_ref, LoraAdapter):
            self._load_adapter(state_dict_or_ref)
        else:
            self._load_state_dict(resolve_state_dict(state_dict_or_ref))
        self._version = int(version)

    def _load_state_dict(self, state_dict) -> None:
        """Broadcast the tensors to every worker over the weight group; the workers load them in place."""
        if not state_dict:
            return  # an empty update only sets the version
        specs = tensor_specs(state_dict)
        buckets = plan_buckets(specs, self.bucket_bytes)
        pending = self.weight_group.send_buckets(state_dict, specs, buckets)  # returns at once; the workers receive
        loaded = self.llm.collective_rpc("receive_weights", args=([spec.as_list() for spec in specs], buckets))
        wait_all(pending)
        if any(count != len(specs) for count in loaded):
            raise RuntimeError(f"vLLM workers loaded {loaded} tensors of the {len(specs)} sent")
        self.llm.reset_prefix_cache()  # cached KV was computed with the old weights

    def _load_adapter(self, adapter: LoraAdapter) -> None:
        """Serve `adapter` from now on: written to a folder of its own, added to vLLM, the previous one removed."""
        if not self.serves_adapters:
            raise TypeError("this vLLM engine was built without LoRA support; set rollout.lora_sync=adapter (with "
                            "model.lora.enabled) to sync adapters, or send merged full weights")
        from vllm.lora.request import LoRARequest

        previous = self.lora_request
        adapter_id = 1 if previous is None else previous.lora_int_id + 1
        folder = write_adapter_folder(adapter, self._adapter_root / f"adapter-{adapter_id}")
        request = LoRARequest(f"policy-{adapter_id}", adapter_id, str(folder))
        if not self.llm.llm_engine.add_lora(request):
            raise RuntimeError(f"vLLM refused the LoRA adapter in {folder}")
        self.lora_request = request
        if previous is not None:
            self.llm.llm_engine.remove_lora(previous.lora_int_id)
            shutil.rmtree(previous.lora_path, ignore_errors=True)
        self.llm.reset_prefix_cache()


__all__ = ["VLLMEngine", "FanoutWorkerExtension", "cpu_thread_binding", "lora_rank_limit", "row_seeds",
           "sampled_logprobs", "write_adapter_folder"]
