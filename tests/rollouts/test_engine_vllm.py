"""The "vllm" engine agrees with the "hf" engine: same greedy tokens, close log-probs, weight updates, stops.

The comparison and the stop strings run on a stock tokenizer, one vLLM engine for both: the random Qwen2
with the real Qwen2 vocabulary (tests/conftest.py `qwen2_checkpoint`), made to write multi-token tags by
hand for the stop strings (stock_model_helpers.py).

Needs the vllm package (skipped otherwise). On a CPU machine: `bash scripts/vllm_cpu_env.sh`, then
`.venv-vllm/bin/python -m pytest tests/rollouts/test_engine_vllm.py -m vllm -q`. vLLM starts engine
processes, so each engine run is a subprocess executing this file as a script (`__main__` below).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.vllm

PROMPTS = ["Who was born first?", "Which film was released in 1954, and who directed it?", "Bemo Hall"]
MAX_NEW_TOKENS = 16


def sharpened_state_dict(model) -> dict:
    """The model's weights with embeddings scaled up, so logits are far apart and greedy choices unambiguous."""
    state = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        if name in state:
            state[name] = state[name] * 8.0
    return state


def engines_on_a_stock_checkpoint(model_path: str) -> dict:
    """One vLLM engine (starting one costs about a minute on CPU) for both runs on the stock-shaped checkpoint:
    the comparison with the HF engine, then the stop strings."""
    from rollouts.config import RolloutConfig
    from rollouts.engine_hf import HFEngine
    from rollouts.engine_vllm import VLLMEngine

    rollout_config = RolloutConfig(max_context_tokens=512, gpu_memory_utilization=0.2)
    vllm_engine = VLLMEngine.from_pretrained(model_path, rollout_config, device="cpu")
    comparison = compare_engines(HFEngine.from_pretrained(model_path, rollout_config), vllm_engine)
    return {"compare": comparison,
            "stop_strings": stop_strings_on_a_stock_tokenizer(model_path, vllm_engine, version=comparison["version"] + 1)}


def compare_engines(hf_engine, vllm_engine) -> dict:
    """Run both engines on the same prompts, before and after a weight update; returns plain lists."""
    prompts = [hf_engine.tokenizer.encode(text, add_special_tokens=False) for text in PROMPTS]

    result = {"vllm_before": as_lists(vllm_engine.generate(prompts, MAX_NEW_TOKENS, set(), temperature=0.0))}
    # sampling from the untrained (flat) model: diverse samples, whose log-probs the HF model recomputes
    def sample(seed: int) -> list:
        return as_lists(vllm_engine.generate(prompts * 2, MAX_NEW_TOKENS, set(), temperature=1.0, seed=seed))

    result["vllm_sampled"] = [sample(5), sample(5), sample(6)]
    result["hf_logprobs_of_vllm_samples"] = hf_logprobs(hf_engine, prompts * 2, result["vllm_sampled"][0])

    state = sharpened_state_dict(hf_engine.model)
    hf_engine.load_weights(state, version=1)
    vllm_engine.load_weights(state, version=1)
    result["version"] = vllm_engine.version
    result["hf_greedy"] = as_lists(hf_engine.generate(prompts, MAX_NEW_TOKENS, set(), temperature=0.0))
    result["vllm_greedy"] = as_lists(vllm_engine.generate(prompts, MAX_NEW_TOKENS, set(), temperature=0.0))
    stop_token = result["hf_greedy"][0][0][3]
    result["stop_token"] = stop_token
    result["vllm_stopped"] = as_lists(vllm_engine.generate(prompts, MAX_NEW_TOKENS, {stop_token}, temperature=0.0))
    result["vllm_coalesced"] = coalesced_greedy(vllm_engine, prompts)
    return result


def lora_model_and_adapter(model_path: str, base_state: dict, seed: int):
    """An HF copy of the model with `base_state`, wrapped by the trainer's LoRA code with random non-zero B
    matrices: (the adapter as the trainer exports it for vLLM, the merged full weights for the HF engine)."""
    import torch
    from transformers import AutoModelForCausalLM

    from rl.config import LoraConfig
    from rl.grpo.lora import adapter_config_dict, adapter_state_dict, apply_lora, merged_state_dict
    from rollouts.engine import LoraAdapter

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    model.load_state_dict(base_state)
    peft_model = apply_lora(model, LoraConfig(enabled=True, r=8, alpha=16, target_modules=["q_proj", "v_proj"]))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
    return LoraAdapter(adapter_state_dict(peft_model), adapter_config_dict(peft_model)), merged_state_dict(peft_model)


def tensor_parallel_with_adapters(model_path: str) -> dict:
    """A vLLM engine on 2 tensor-parallel CPU ranks that serves LoRA adapters, against the HF engine on one:
    the base weights, a full update through the weight group, then two adapters (rollout.lora_sync=adapter)."""
    from rollouts.config import RolloutConfig
    from rollouts.engine_hf import HFEngine
    from rollouts.engine_vllm import VLLMEngine

    hf_engine = HFEngine.from_pretrained(model_path, RolloutConfig(max_context_tokens=512))
    vllm_engine = VLLMEngine.from_pretrained(
        model_path, RolloutConfig(max_context_tokens=512, gpu_memory_utilization=0.2, tensor_parallel_size=2,
                                  lora_sync="adapter", max_lora_rank=8, weight_bucket_mb=1), device="cpu")
    prompts = [hf_engine.tokenizer.encode(text, add_special_tokens=False) for text in PROMPTS]

    def greedy(engine) -> list:
        return as_lists(engine.generate(prompts, MAX_NEW_TOKENS, set(), temperature=0.0))

    result = {"weight_group_size": vllm_engine.weight_group.world_size,
              "hf_base": greedy(hf_engine), "vllm_base": greedy(vllm_engine)}
    state = sharpened_state_dict(hf_engine.model)
    hf_engine.load_weights(state, version=1)
    vllm_engine.load_weights(state, version=1)
    result.update(hf_full=greedy(hf_engine), vllm_full=greedy(vllm_engine))
    for version, seed in ((2, 11), (3, 12)):
        adapter, merged = lora_model_and_adapter(model_path, state, seed)
        hf_engine.load_weights(merged, version=version)
        vllm_engine.load_weights(adapter, version=version)
        result[f"hf_adapter_{version}"], result[f"vllm_adapter_{version}"] = greedy(hf_engine), greedy(vllm_engine)
        result[f"adapter_bytes_{version}"] = sum(tensor.numel() * tensor.element_size()
                                                 for tensor in adapter.tensors.values())
    result["full_bytes"] = sum(tensor.numel() * tensor.element_size() for tensor in state.values())
    result["version"] = vllm_engine.version
    return result


def vllm_rollout_actor(model_path: str) -> dict:
    """The vLLM engine inside a real Ray rollout actor placed by the manager's placement group: groups from
    the warm start (version 0), then weights pushed through the object store and the actor's weight group
    (version 1), as a training run does."""
    import tempfile

    import ray

    from data.config import RetrieverConfig, WorldConfig
    from data.world import load_split, write_world
    from rewards.config import RewardConfig
    from rollouts.config import RolloutConfig, ToolsConfig
    from rollouts.engine_hf import HFEngine
    from rollouts.manager import RolloutManager, init_ray
    from rollouts.worker import WorkerConfig

    world_dir = write_world(Path(tempfile.mkdtemp(prefix="fanout-vllm-world-")),
                            WorldConfig(seed=0, num_train=8, num_validation=2, num_test=2, num_entities_per_kind=10))
    questions = load_split(world_dir / "train.jsonl")
    rollout = RolloutConfig(engine="vllm", num_workers=1, worker_num_cpus=1, group_size=2, questions_per_step=2,
                            questions_per_worker_call=2, max_turns=1, max_new_tokens_per_turn=8,
                            max_context_tokens=512, gpu_memory_utilization=0.2, prompt_style="minimal")
    config = WorkerConfig(rollout=rollout, tools=ToolsConfig(), retriever=RetrieverConfig(), reward=RewardConfig())
    init_ray(num_cpus=2)
    result = {}
    with RolloutManager(config, questions, model_path=model_path, corpus_path=str(world_dir / "corpus.jsonl"),
                        max_staleness=0, max_buffered_groups=4, seed=0) as manager:
        first = manager.get_batch(2, current_version=0, timeout=600)
        state = sharpened_state_dict(HFEngine.from_pretrained(model_path, RolloutConfig()).model)
        manager.push_weights(state, version=1)
        second = manager.get_batch(2, current_version=1, timeout=600)
        result["versions"] = [[group.policy_version for group in first], [group.policy_version for group in second]]
        result["trajectories"] = [len(group.trajectories) for group in first + second]
        result["response_lengths"] = [len(trajectory.response_ids) for group in second
                                      for trajectory in group.trajectories]
        result["bundle_nodes"] = manager._placement.bundle_nodes(timeout_s=10)
        result["actor_node"] = second[0].node_id
        result["weight_bytes"] = manager.stats()["perf/weight_bytes"]
        result["state_bytes"] = sum(tensor.numel() * tensor.element_size() for tensor in state.values())
    ray.shutdown()
    return result


def stop_strings_on_a_stock_tokenizer(model_path: str, vllm_engine, version: int) -> dict:
    """The scripted rows of stock_model_helpers (multi-token tags, fused or not) in the vLLM and HF engines."""
    from stock_model_helpers import STOP_STRINGS, scripted_bigram_model, scripted_stop_rows

    from rollouts.config import RolloutConfig
    from rollouts.engine_hf import HFEngine

    hf_engine = HFEngine.from_pretrained(model_path, RolloutConfig(max_context_tokens=512))  # the saved weights
    rows = scripted_stop_rows(hf_engine.tokenizer)
    scripted_bigram_model(hf_engine.model, rows.successors)
    vllm_engine.load_weights(hf_engine.model.state_dict(), version=version)  # the script reaches vLLM as new weights

    def run(engine, temperature: float) -> list:
        return as_lists(engine.generate(rows.prompts, MAX_NEW_TOKENS, rows.stop_token_ids, temperature=temperature,
                                        seed=0, stop_strings=STOP_STRINGS))

    result = {"vllm_greedy": run(vllm_engine, 0.0), "vllm_sampled": run(vllm_engine, 1.0),
              "hf_greedy": run(hf_engine, 0.0), "expected_token_ids": rows.expected_token_ids,
              "expected_texts": rows.expected_texts}
    result["vllm_texts"] = [hf_engine.tokenizer.decode(token_ids, skip_special_tokens=False) for token_ids, _, _ in
                            result["vllm_greedy"]]
    return result


def coalesced_greedy(engine, prompts: list[list[int]]) -> dict:
    """Two concurrent greedy requests through CoalescingEngine (the engine driven from its worker thread)."""
    import asyncio

    from rollouts.batcher import CoalescingEngine

    shared = CoalescingEngine(engine)

    async def two_requests():
        return await asyncio.gather(shared.generate(prompts[:1], MAX_NEW_TOKENS, set(), temperature=0.0),
                                    shared.generate(prompts[1:], MAX_NEW_TOKENS, set(), temperature=0.0))

    (first, first_version, _), (rest, rest_version, _) = asyncio.run(two_requests())
    shared.close()
    return {"outputs": as_lists(first) + as_lists(rest), "versions": [first_version, rest_version],
            "engine_batches": shared.counters["engine_batches"]}


def as_lists(outputs) -> list:
    return [[o.token_ids, o.logprobs, o.finish_reason] for o in outputs]


def hf_logprobs(hf_engine, prompts: list[list[int]], completions: list) -> list[list[float]]:
    import torch

    rows = []
    for prompt, (token_ids, _, _) in zip(prompts, completions):
        with torch.no_grad():
            logits = hf_engine.model(input_ids=torch.tensor([prompt + token_ids])).logits[0].float()
        logprobs = torch.log_softmax(logits, dim=-1)
        rows.append([logprobs[len(prompt) - 1 + i, token].item() for i, token in enumerate(token_ids)])
    return rows


@pytest.fixture(scope="module")
def vllm_checkpoint(tmp_path_factory) -> Path:
    """A tiny model with head_dim 32: vLLM's CPU attention kernels do not support the shared fixture's 16."""
    from rl.config import TinyModelConfig
    from rl.app.modeling import create_tiny_checkpoint

    texts = ["Varlo Tenmis was born in 1873 in Quenbridge.", "Which was founded earlier, Aldrin Works or Bemo Hall?",
             "The film Ostrava Nights was directed by Keli Marno and released in 1954."] * 20
    tiny = TinyModelConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                           intermediate_size=128, max_position_embeddings=1024, vocab_size=1024)
    return create_tiny_checkpoint(tmp_path_factory.mktemp("vllm_model"), texts, tiny, seed=0)


def run_script(mode: str, model_path: Path, out_folder: Path) -> dict:
    """This file as a script in a subprocess (`mode` of `__main__`); returns what it wrote."""
    out_path = out_folder / f"{mode}.json"
    environment = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"),
                   "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    completed = subprocess.run([sys.executable, __file__, mode, str(model_path), str(out_path)], env=environment,
                               capture_output=True, text=True, timeout=900)
    assert completed.returncode == 0, completed.stderr[-4000:]
    return json.loads(out_path.read_text())


@pytest.fixture(scope="module")
def stock_engines(request, tmp_path_factory) -> dict:
    pytest.importorskip("vllm")
    return run_script("stock", request.getfixturevalue("qwen2_checkpoint"), tmp_path_factory.mktemp("vllm"))


@pytest.fixture(scope="module")
def comparison(stock_engines) -> dict:
    return stock_engines["compare"]


@pytest.fixture(scope="module")
def stock_stop_strings(stock_engines) -> dict:
    return stock_engines["stop_strings"]


@pytest.fixture(scope="module")
def tensor_parallel(vllm_checkpoint, tmp_path_factory) -> dict:
    pytest.importorskip("vllm")
    pytest.importorskip("peft")
    return run_script("tensor-parallel", vllm_checkpoint, tmp_path_factory.mktemp("vllm"))


@pytest.fixture(scope="module")
def rollout_actor(vllm_checkpoint, tmp_path_factory) -> dict:
    pytest.importorskip("vllm")
    pytest.importorskip("ray")
    return run_script("rollout-actor", vllm_checkpoint, tmp_path_factory.mktemp("vllm"))


def test_greedy_tokens_and_logprobs_match_the_hf_engine(comparison):
    for (hf_tokens, hf_logprobs_row, _), (vllm_tokens, vllm_logprobs_row, reason) in zip(
            comparison["hf_greedy"], comparison["vllm_greedy"]):
        assert vllm_tokens == hf_tokens
        assert vllm_logprobs_row == pytest.approx(hf_logprobs_row, abs=2e-3)
        assert reason == "length" and len(vllm_tokens) == MAX_NEW_TOKENS


def test_weight_update_changes_outputs_and_version(comparison):
    assert comparison["version"] == 1
    assert [row[1] for row in comparison["vllm_before"]] != [row[1] for row in comparison["vllm_greedy"]]


def test_stop_token_ends_the_row(comparison):
    stop_token = comparison["stop_token"]
    for (full_tokens, _, _), (tokens, _, reason) in zip(comparison["vllm_greedy"], comparison["vllm_stopped"]):
        expected = full_tokens[: full_tokens.index(stop_token) + 1] if stop_token in full_tokens else full_tokens
        assert tokens == expected
        assert reason == ("stop" if stop_token in full_tokens else "length")


def test_seeded_sampling_is_reproducible_and_logprobs_match_the_model(comparison):
    first, again, other_seed = comparison["vllm_sampled"]
    assert [row[0] for row in first] == [row[0] for row in again]
    assert [row[0] for row in first] != [row[0] for row in other_seed]
    assert first[0][0] != first[3][0]  # the same prompt twice in a batch: rows draw different samples
    for (_, vllm_logprobs_row, _), hf_row in zip(first, comparison["hf_logprobs_of_vllm_samples"]):
        assert vllm_logprobs_row == pytest.approx(hf_row, abs=2e-3)


def test_concurrent_requests_through_the_coalescing_engine_match_one_direct_call(comparison):
    coalesced = comparison["vllm_coalesced"]
    assert coalesced["engine_batches"] == 1 and coalesced["versions"] == [1, 1]
    for (tokens, logprobs_row, _), (direct_tokens, direct_logprobs, _) in zip(coalesced["outputs"],
                                                                             comparison["vllm_greedy"]):
        assert tokens == direct_tokens
        assert logprobs_row == pytest.approx(direct_logprobs, abs=1e-4)


def test_multi_token_stop_strings_end_rows_at_the_completing_token_with_a_stock_tokenizer(stock_stop_strings):
    run = stock_stop_strings
    for rows in (run["vllm_greedy"], run["vllm_sampled"], run["hf_greedy"]):
        for (tokens, logprobs_row, reason), expected in zip(rows, run["expected_token_ids"]):
            assert len(logprobs_row) == len(tokens)
            if expected is None:  # the prompt holds "</search>": it ends nothing
                assert reason == "length" and len(tokens) == MAX_NEW_TOKENS
            else:  # tokens as sampled, through the one completing the stop string (or the stop token)
                assert (tokens, reason) == (expected, "stop")
    assert run["vllm_texts"][:4] == run["expected_texts"][:4]  # " Hall.</answer>\n": the newline is kept


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    script = {"stock": engines_on_a_stock_checkpoint,
              "tensor-parallel": tensor_parallel_with_adapters, "rollout-actor": vllm_rollout_actor}[sys.argv[1]]
    Path(sys.argv[3]).write_text(json.dumps(script(sys.argv[2])))


def assert_same_greedy_rows(vllm_rows: list, hf_rows: list) -> None:
    for (vllm_tokens, vllm_logprobs_row, _), (hf_tokens, hf_logprobs_row, _) in zip(vllm_rows, hf_rows):
        assert vllm_tokens == hf_tokens
        assert vllm_logprobs_row == pytest.approx(hf_logprobs_row, abs=2e-3)


def test_two_tensor_parallel_ranks_generate_what_one_hf_model_does_before_and_after_a_weight_group_update(
        tensor_parallel):
    run = tensor_parallel
    assert run["weight_group_size"] == 3  # the actor and both tensor-parallel workers
    assert_same_greedy_rows(run["vllm_base"], run["hf_base"])
    assert_same_greedy_rows(run["vllm_full"], run["hf_full"])  # 1 MB buckets: several broadcasts
    assert run["vllm_full"][0][1] != pytest.approx(run["vllm_base"][0][1], abs=1e-2)  # sharper log-probs: loaded


def test_adapter_sync_serves_each_new_lora_adapter_like_the_merged_weights(tensor_parallel):
    run = tensor_parallel
    for version in (2, 3):
        assert_same_greedy_rows(run[f"vllm_adapter_{version}"], run[f"hf_adapter_{version}"])
    # each adapter changes the policy (log-probs of the same tokens move), and the second replaces the first
    assert run["vllm_adapter_2"][0][1] != pytest.approx(run["vllm_full"][0][1], abs=1e-2)
    assert run["vllm_adapter_3"][0][1] != pytest.approx(run["vllm_adapter_2"][0][1], abs=1e-2)
    assert run["version"] == 3
    assert run["adapter_bytes_2"] < run["full_bytes"] / 10  # only the LoRA matrices travel


def test_a_ray_rollout_actor_generates_with_vllm_and_takes_pushed_weights(rollout_actor):
    run = rollout_actor
    assert run["versions"] == [[0, 0], [1, 1]]  # groups tagged with the weights they came from
    assert run["trajectories"] == [2, 2, 2, 2]
    assert all(length > 0 for length in run["response_lengths"])
    assert run["bundle_nodes"] == [run["actor_node"]]  # the actor ran in its placement-group bundle
    assert run["weight_bytes"] == run["state_bytes"]
