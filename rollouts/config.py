"""The rollouts package's config sections: the agent loop and its engines (`rollout`), the tools (`tools`).

Typed dataclasses, each field documented once in the comment beside it (docs/CONFIG.md is generated
from these comments). `rl.config.ExperimentConfig` composes them with the other packages' sections.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class McpServerConfig:
    name: str = ""  # what errors and logs call this server (unique among tools.mcp_servers)
    command: str = ""  # executable that starts the server on stdio; "python": the interpreter fanout runs in
    args: list[str] = field(default_factory=list)  # its arguments, e.g. [-m, data.apps.server, --seed, "0"]
    # Extra environment variables of the server process, over a minimal environment (HOME, PATH, ...) and
    # fanout's own PYTHONPATH
    env: dict[str, str] = field(default_factory=dict)
    allowed_tools: list[str] = field(default_factory=list)  # the server's tools the model may call; []: all
    timeout_s: float = 10.0  # per-call timeout of this server's tools (instead of tools.timeout_s)
    startup_timeout_s: float = 60.0  # time for the server to start and answer tools/list


@dataclass
class ToolsConfig:
    enabled: list[str] = field(default_factory=lambda: ["search"])  # registered tool names
    timeout_s: float = 5.0  # per-call timeout; a timed-out call becomes an error observation
    latency_s: float = 0.0  # artificial latency per call (models a remote search API in benchmarks)
    max_calls_per_turn: int = 4  # extra calls in one turn are refused with an error observation
    fault_rate: float = 0.0  # fault injection (reliability tests): share of tool calls that raise an error
    fault_timeout_rate: float = 0.0  # fault injection: share of tool calls that hang until tools.timeout_s
    # MCP servers whose tools the agent may call, each started over stdio by fanout (docs/APPS.md):
    # a list of {name, command, args, env, allowed_tools, timeout_s, startup_timeout_s}
    mcp_servers: list[McpServerConfig] = field(default_factory=list)


@dataclass
class RolloutConfig:
    protocol: str = "tags"  # "tags" (<search>a ## b</search>) or "function_call" (<tool_call>{json})
    # "auto" ("full" for a model given in model.path, e.g. a stock chat model; "compact" for the tiny model
    # built from config), "minimal" (the question only: for a model SFT'd on the protocol, like the tiny
    # default), "compact" (a short instruction) or "full" (ParallelSearch-style instruction, for real chat models)
    prompt_style: str = "auto"
    engine: str = "hf"  # "hf" (transformers, CPU default) or "vllm" (GPU)
    num_workers: int = 1  # Ray rollout actors
    worker_num_cpus: float = 1.0  # CPUs reserved per actor
    worker_num_gpus: float = 0.0  # GPUs per actor (vLLM on clusters)
    # Custom Ray resources per actor, e.g. {rollout_node: 1}: actors then run only on nodes started with
    # `ray start --resources '{"rollout_node": N}'` (N actors per node). {}: wherever Ray finds room.
    worker_resources: dict[str, float] = field(default_factory=dict)
    # What rollout actors' output reaches the driver's terminal (and the job logs on a cluster): "errors"
    # (their warnings, errors and tracebacks) or "all" (also their info logs and everything they print)
    actor_logs: str = "errors"
    torch_threads_per_worker: int = 1  # intra-op threads inside each actor
    questions_per_worker_call: int = 2  # questions (= groups) in one generate call to a rollout actor
    # Generate calls in flight per actor. With continuous batching they run at once (more calls: larger
    # engine batches, more tool waits hidden), within the staleness window; without, they queue.
    max_inflight_calls_per_worker: int = 4
    # Run an actor's in-flight calls concurrently: their model turns share engine batches and one call's
    # tool waits overlap the others' generation; new weights load between model turns (rollouts/batcher.py).
    # false: one call at a time, each group entirely from one policy version.
    continuous_batching: bool = True
    max_actor_replacements: int = 8  # dead rollout actors replaced (with the current weights) before failing
    group_size: int = 8  # G: trajectories sampled per question (the GRPO group)
    questions_per_step: int = 16  # questions per training step (batch = questions_per_step * G)
    max_turns: int = 4  # tool-calling rounds before the final forced-answer turn
    max_new_tokens_per_turn: int = 48  # generation budget of one model call
    max_context_tokens: int = 1024  # prompt + response; longer trajectories are truncated and marked
    max_observation_tokens: int = 160  # tokens of one <information> block
    temperature: float = 1.0  # sampling temperature for training rollouts
    top_p: float = 1.0  # nucleus sampling
    eval_temperature: float = 0.0  # sampling temperature of `fanout eval` and in-training evaluations; 0: greedy
    # vLLM engine only: share of each GPU's memory vLLM takes for weights, activations and KV cache (the
    # rest is the trainer's when they share GPUs)
    gpu_memory_utilization: float = 0.5
    # vLLM engine only: GPUs (tensor-parallel ranks) per rollout actor, one node; with GPUs,
    # rollout.worker_num_gpus must equal it (the actor reserves them, vLLM's workers run on them)
    tensor_parallel_size: int = 1
    # Ray placement-group strategy for the actors' bundles (one bundle per actor, in one group): "PACK"
    # (fill a node first), "SPREAD", "STRICT_PACK" (all on one node) or "STRICT_SPREAD" (one actor per node)
    placement_strategy: str = "PACK"
    # How LoRA weights reach the engines: "auto" ("adapter" for vLLM, "merged" for hf), "merged" (full
    # weights with the adapter merged in) or "adapter" (the LoRA matrices only; vLLM's LoRA support)
    lora_sync: str = "auto"
    # vLLM engine with lora_sync=adapter: the largest adapter rank it serves (0: model.lora.r, set automatically)
    max_lora_rank: int = 0
    weight_bucket_mb: int = 256  # vLLM engine only: weights broadcast to its workers in flat buckets of this size
