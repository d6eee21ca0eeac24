"""Continuous batching for a rollout actor: the model turns of concurrent episodes share engine batches.

A rollout actor that runs several generate calls at once (`rollout.continuous_batching`) hands them one
`CoalescingEngine`. Each call's agent loop (rollouts.agent_loop.run_episodes_async) awaits
`generate(...)` for its model turns. Requests that arrive while the engine is busy wait, and the next
engine batch takes all of them at once (those with the same sampling settings: stop tokens and stop
strings, temperature, top-p), so the batch stays full while some episodes wait for their tools. The
engine runs in one worker thread, off the event loop, so the other episodes' tool calls (asyncio) go on
meanwhile. On a tiny model a decode step costs almost the same for 8 rows as for 64, so merged batches
raise an actor's throughput directly.

Weight updates go through the same thread: `load_weights` is queued behind the batch running now and
ahead of the next one, so new weights take effect between two model turns (AReaL's interruptible
generation, at turn granularity) and an update never waits for whole episodes to drain. An episode whose
turns straddle an update holds tokens of two versions: each turn reports the version that generated it,
the behaviour log-probs of every token are those of the weights that sampled it (so the trainer's
off-policy correction stays exact), and the trajectory is tagged with the oldest version (so the
staleness bound holds for every token).

What it simplifies on purpose: batches form at model-turn granularity (a request never joins a batch
that is already decoding); a merged batch is sampled with one seed, so a call's samples depend on which
other calls share its batches (runs are reproducible only with one call in flight per actor).

    shared = CoalescingEngine(engine)
    outputs, version, batch_rows = await shared.generate(prompts, 48, {eos_id}, temperature=1.0, seed=0,
                                                         stop_strings=("</search>", "</answer>"))
    await shared.load_weights(state_dict, version=3)
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Sequence

from rollouts.engine import GenerationOutput, InferenceEngine


def mix_seed(seed: int, salt: int) -> int:
    """A seed for stream `salt` of `seed` that does not collide with stream salt + 1 of seed - 1."""
    return (seed * 0x9E3779B1 + salt) % (2**63)


class GenerateResult(NamedTuple):
    """What one request gets back: its outputs, the weights' version and the merged batch's size."""

    outputs: list[GenerationOutput]
    policy_version: int | None  # None: not reported (DirectEngine; the caller's version stands)
    batch_rows: int  # rows (trajectories) of the engine batch this request ran in


class DirectEngine:
    """The `async generate` interface over a plain engine, one call per request (no merging, no thread).

    What `rollouts.agent_loop.run_episodes` plays on: the engine call blocks the event loop, which runs
    nothing else. It reports no policy version, so trajectories keep the one their caller gave.
    """

    def __init__(self, engine: InferenceEngine):
        self.engine = engine
        self.tokenizer = engine.tokenizer

    async def generate(self, batch_prompt_ids: list[list[int]], max_new_tokens: int, stop_token_ids: set[int],
                       temperature: float = 1.0, top_p: float = 1.0, seed: int | None = None,
                       stop_strings: Sequence[str] = ()) -> GenerateResult:
        outputs = self.engine.generate(batch_prompt_ids, max_new_tokens, stop_token_ids, temperature=temperature,
                                       top_p=top_p, seed=seed, stop_strings=tuple(stop_strings))
        return GenerateResult(outputs, None, len(batch_prompt_ids))


@dataclass
class GenerateRequest:
    """One episode call's model turn, waiting for an engine batch."""

    batch_prompt_ids: list[list[int]]
    max_new_tokens: int
    stop_token_ids: frozenset[int]
    stop_strings: tuple[str, ...]  # sorted, without duplicates: part of the sampling key
    temperature: float
    top_p: float
    seed: int | None
    future: asyncio.Future = field(repr=False)

    @property
    def sampling_key(self) -> tuple:
        """Requests merge into one engine batch only when everything that shapes their samples is equal."""
        return self.stop_token_ids, self.stop_strings, self.temperature, self.top_p


def cut_to_budget(output: GenerationOutput, max_new_tokens: int) -> GenerationOutput:
    """The output as a call with this smaller budget would have returned it."""
    if len(output.token_ids) <= max_new_tokens:
        return output
    return GenerationOutput(output.token_ids[:max_new_tokens], output.logprobs[:max_new_tokens], "length")


class CoalescingEngine:
    """Merges the concurrent `generate` requests of one event loop into shared batches of one engine.

    max_batch_rows: rows (trajectories) per engine batch; 0 means no limit (the engine still splits a
    batch into chunks by its own token budget). A single request larger than the limit runs alone.
    """

    def __init__(self, engine: InferenceEngine, max_batch_rows: int = 0):
        self.engine = engine
        self.tokenizer = engine.tokenizer
        self.max_batch_rows = max_batch_rows
        self._pending: list[GenerateRequest] = []
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rollout-engine")
        self._drainer: asyncio.Task | None = None
        self._version_changed: tuple[asyncio.AbstractEventLoop, asyncio.Condition] | None = None
        self.counters = {"engine_batches": 0, "requests": 0, "rows": 0, "weight_loads": 0}

    @property
    def version(self) -> int:
        return self.engine.version

    async def generate(self, batch_prompt_ids: list[list[int]], max_new_tokens: int, stop_token_ids: set[int],
                       temperature: float = 1.0, top_p: float = 1.0, seed: int | None = None,
                       stop_strings: Sequence[str] = ()) -> GenerateResult:
        """The outputs (like InferenceEngine.generate for these prompts) and the version that generated them."""
        if not batch_prompt_ids:
            return GenerateResult([], self.engine.version, 0)
        loop = asyncio.get_running_loop()
        request = GenerateRequest([list(ids) for ids in batch_prompt_ids], max_new_tokens, frozenset(stop_token_ids),
                                  tuple(sorted(set(stop_strings))), float(temperature), float(top_p), seed,
                                  loop.create_future())
        self._pending.append(request)
        if self._drainer is None or self._drainer.done():
            self._drainer = loop.create_task(self._drain())
        return await request.future

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        while self._pending:
            await asyncio.sleep(0)  # requests woken by the same event (e.g. one tool round) join this batch
            batch = self._take_batch()
            try:
                outputs, version, rows = await loop.run_in_executor(self._thread, self._generate_batch, batch)
            except Exception as error:  # the callers' episodes decide; the drain goes on with the next batch
                for request in batch:
                    if not request.future.done():
                        request.future.set_exception(error)
                continue
            for request, request_outputs in zip(batch, outputs):
                if not request.future.done():  # its caller may have been cancelled
                    request.future.set_result(GenerateResult(request_outputs, version, rows))

    def _take_batch(self) -> list[GenerateRequest]:
        """The oldest request and every other pending one with its sampling settings, within max_batch_rows."""
        key = self._pending[0].sampling_key
        batch: list[GenerateRequest] = []
        rows = 0
        remaining: list[GenerateRequest] = []
        for request in self._pending:
            fits = not self.max_batch_rows or rows + len(request.batch_prompt_ids) <= self.max_batch_rows
            if request.sampling_key == key and (fits or not batch):
                batch.append(request)
                rows += len(request.batch_prompt_ids)
            else:
                remaining.append(request)
        self._pending = remaining
        return batch

    def _generate_batch(self, batch: list[GenerateRequest]) -> tuple[list[list[GenerationOutput]], int, int]:
        """Runs in the engine thread: one engine call for every row of `batch`, split back per request."""
        first = batch[0]
        prompts = [prompt_ids for request in batch for prompt_ids in request.batch_prompt_ids]
        seed = None if first.seed is None else mix_seed(first.seed, self.counters["engine_batches"])
        version = self.engine.version
        outputs = self.engine.generate(prompts, max(request.max_new_tokens for request in batch),
                                       set(first.stop_token_ids), temperature=first.temperature, top_p=first.top_p,
                                       seed=seed, stop_strings=first.stop_strings)
        self.counters["engine_batches"] += 1
        self.counters["requests"] += len(batch)
        self.counters["rows"] += len(prompts)
        per_request, start = [], 0
        for request in batch:
            end = start + len(request.batch_prompt_ids)
            per_request.append([cut_to_budget(output, request.max_new_tokens) for output in outputs[start:end]])
            start = end
        return per_request, version, len(prompts)

    async def load_weights(self, state_dict: Any, version: int) -> float:
        """Load new weights between two engine batches; returns the seconds the load took."""
        def load() -> float:
            started = time.perf_counter()
            self.engine.load_weights(state_dict, version)
            self.counters["weight_loads"] += 1
            return time.perf_counter() - started

        seconds = await asyncio.get_running_loop().run_in_executor(self._thread, load)
        condition = self._condition()
        async with condition:
            condition.notify_all()
        return seconds

    async def wait_for_version(self, version: int, timeout_s: float) -> bool:
        """Wait until the engine holds `version` or newer; False after timeout_s without it."""
        condition = self._condition()
        async with condition:
            try:
                await asyncio.wait_for(condition.wait_for(lambda: self.engine.version >= version), timeout_s)
            except asyncio.TimeoutError:
                return False
        return True

    def _condition(self) -> asyncio.Condition:
        """The version condition of the running event loop (asyncio primitives belong to one loop)."""
        loop = asyncio.get_running_loop()
        if self._version_changed is None or self._version_changed[0] is not loop:
            self._version_changed = (loop, asyncio.Condition())
        return self._version_changed[1]

    def close(self) -> None:
        self._thread.shutdown(wait=False, cancel_futures=True)


__all__ = ["CoalescingEngine", "DirectEngine", "GenerateRequest", "GenerateResult", "cut_to_budget", "mix_seed"]
