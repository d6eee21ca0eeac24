"""CoalescingEngine: concurrent model turns share engine batches; weights load between batches."""

from __future__ import annotations

import asyncio
import threading
import time

from rollouts.batcher import CoalescingEngine, mix_seed
from rollouts.engine import GenerationOutput

STOP = 99


class RecordingEngine:
    """Row i of a batch writes [first prompt token, version, ...] up to max_new_tokens; records every call.

    hold: while set to an unset threading.Event, generate blocks until it is set (to queue work behind it).
    """

    def __init__(self, stop_after: dict[int, int] | None = None):
        self.tokenizer = object()
        self.version = 0
        self.calls: list[dict] = []
        self.stop_after = stop_after or {}  # first prompt token -> emit STOP after this many tokens
        self.hold: threading.Event | None = None
        self.fail_next = False

    def generate(self, batch_prompt_ids, max_new_tokens, stop_token_ids, temperature=1.0, top_p=1.0, seed=None,
                 stop_strings=()):
        self.calls.append({"rows": len(batch_prompt_ids), "max_new_tokens": max_new_tokens, "seed": seed,
                           "temperature": temperature, "version": self.version, "stop_strings": stop_strings})
        if self.hold is not None:
            self.hold.wait(5)
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("engine out of memory")
        outputs = []
        for prompt_ids in batch_prompt_ids:
            tokens = [prompt_ids[0], self.version] + [7] * max_new_tokens
            stop_at = self.stop_after.get(prompt_ids[0])
            if stop_at is not None and stop_at < max_new_tokens:
                tokens = tokens[:stop_at] + [STOP]
                outputs.append(GenerationOutput(tokens, [-0.5] * len(tokens), "stop"))
            else:
                tokens = tokens[:max_new_tokens]
                outputs.append(GenerationOutput(tokens, [-0.5] * len(tokens), "length"))
        return outputs

    def load_weights(self, state_dict, version):
        self.version = version


def test_concurrent_requests_share_one_engine_batch_and_get_their_own_rows_back():
    engine = RecordingEngine()
    shared = CoalescingEngine(engine)

    async def main():
        return await asyncio.gather(
            shared.generate([[1], [2]], 4, {STOP}, seed=3),
            shared.generate([[3]], 4, {STOP}, seed=4),
            shared.generate([[4], [5], [6]], 4, {STOP}, seed=5),
        )

    (first, v1, rows1), (second, v2, rows2), (third, v3, rows3) = asyncio.run(main())
    assert [call["rows"] for call in engine.calls] == [6]
    assert [output.token_ids[0] for output in first] == [1, 2]
    assert [output.token_ids[0] for output in second] == [3]
    assert [output.token_ids[0] for output in third] == [4, 5, 6]
    assert v1 == v2 == v3 == 0
    assert rows1 == rows2 == rows3 == 6  # each request learns the size of the batch it shared
    assert engine.calls[0]["seed"] == 7963307283  # the first request's seed 3, mixed for engine batch 0: 3 * 0x9E3779B1
    assert shared.counters == {"engine_batches": 1, "requests": 3, "rows": 6, "weight_loads": 0}


def test_a_smaller_budget_is_cut_and_reported_as_length():
    engine = RecordingEngine(stop_after={2: 3})
    shared = CoalescingEngine(engine)

    async def main():
        return await asyncio.gather(shared.generate([[1], [2]], 2, {STOP}), shared.generate([[3]], 6, {STOP}))

    (short, _, _), (long, _, _) = asyncio.run(main())
    assert engine.calls[0]["max_new_tokens"] == 6
    assert [len(output.token_ids) for output in short] == [2, 2]
    assert [output.finish_reason for output in short] == ["length", "length"]  # row 2 stopped at 4 > 2 tokens
    assert len(short[0].logprobs) == 2
    assert len(long[0].token_ids) == 6 and long[0].finish_reason == "length"


def test_requests_with_other_sampling_settings_or_beyond_the_row_limit_wait_for_the_next_batch():
    engine = RecordingEngine()
    shared = CoalescingEngine(engine, max_batch_rows=3)

    async def main():
        return await asyncio.gather(
            shared.generate([[1], [2]], 4, {STOP}, temperature=1.0),
            shared.generate([[3]], 4, {STOP}, temperature=0.0),  # greedy: its own batch
            shared.generate([[4], [5]], 4, {STOP}, temperature=1.0),  # 2 + 2 rows > 3: next batch
            shared.generate([[6]], 4, {STOP}, temperature=1.0),
        )

    results = asyncio.run(main())
    assert [(call["rows"], call["temperature"]) for call in engine.calls] == [(3, 1.0), (1, 0.0), (2, 1.0)]
    assert [[output.token_ids[0] for output in result.outputs] for result in results] == [[1, 2], [3], [4, 5], [6]]
    assert [result.batch_rows for result in results] == [3, 1, 2, 3]


def test_stop_strings_are_part_of_the_sampling_key_and_reach_the_engine():
    engine = RecordingEngine()
    shared = CoalescingEngine(engine)

    async def main():
        return await asyncio.gather(
            shared.generate([[1]], 4, {STOP}, stop_strings=["</search>", "</answer>"]),
            shared.generate([[2]], 4, {STOP}, stop_strings=("</answer>", "</search>")),  # the same set: merged
            shared.generate([[3]], 4, {STOP}, stop_strings=["</answer>"]),  # other stop strings: its own batch
            shared.generate([[4]], 4, {STOP}),
        )

    asyncio.run(main())
    assert [(call["rows"], call["stop_strings"]) for call in engine.calls] == [
        (2, ("</answer>", "</search>")), (1, ("</answer>",)), (1, ())]


def test_new_weights_load_between_batches_and_later_turns_report_the_new_version():
    engine = RecordingEngine()
    engine.hold = threading.Event()
    shared = CoalescingEngine(engine)

    async def main():
        running = asyncio.create_task(shared.generate([[1]], 2, {STOP}))
        while not engine.calls:  # the first batch is inside the engine, blocked
            await asyncio.sleep(0.01)
        load = asyncio.create_task(shared.load_weights({}, version=1))
        await asyncio.sleep(0.05)
        queued = asyncio.create_task(shared.generate([[2]], 2, {STOP}))
        await asyncio.sleep(0.05)
        assert engine.version == 0 and not load.done()  # the load waits for the running batch
        engine.hold.set()
        return await running, await load, await queued

    (first, first_version, _), load_s, (second, second_version, _) = asyncio.run(main())
    assert (first_version, first[0].token_ids[1]) == (0, 0)
    assert (second_version, second[0].token_ids[1]) == (1, 1)
    assert [call["version"] for call in engine.calls] == [0, 1]
    # the load's own seconds, not the ~0.1 s it queued behind the running batch
    assert 0 <= load_s < 0.05 and shared.counters["weight_loads"] == 1


def test_wait_for_version_times_out_without_the_weights_and_returns_once_they_are_loaded():
    shared = CoalescingEngine(RecordingEngine())

    async def main():
        assert not await shared.wait_for_version(1, timeout_s=0.05)
        waiter = asyncio.create_task(shared.wait_for_version(1, timeout_s=5))
        await asyncio.sleep(0.02)
        assert not waiter.done()
        await shared.load_weights({}, version=2)
        started = time.perf_counter()
        assert await waiter
        return time.perf_counter() - started

    assert asyncio.run(main()) < 1.0


def test_an_engine_error_fails_only_the_requests_of_its_batch():
    engine = RecordingEngine()
    engine.fail_next = True
    shared = CoalescingEngine(engine)

    async def main():
        failed = await asyncio.gather(shared.generate([[1]], 2, {STOP}), shared.generate([[2]], 2, {STOP}),
                                      return_exceptions=True)
        later = (await shared.generate([[3]], 2, {STOP})).outputs
        return failed, later

    failed, later = asyncio.run(main())
    assert all(isinstance(result, RuntimeError) and "out of memory" in str(result) for result in failed)
    assert later[0].token_ids[0] == 3


def test_mix_seed_separates_neighbouring_streams():
    # seed * 0x9E3779B1 + salt, modulo 2**63: (10, 1) and (11, 0) land 0x9E3779B1 - 1 apart instead of colliding
    assert (mix_seed(10, 1), mix_seed(11, 0)) == (26544357611, 29198793371)
    assert mix_seed(0, 7) == 7
    assert mix_seed(2**62, 5) == 2**62 + 5  # 2**62 times an odd multiplier wraps to 2**62 modulo 2**63


def test_an_empty_request_needs_no_engine_call():
    engine = RecordingEngine()
    assert asyncio.run(CoalescingEngine(engine).generate([], 4, {STOP})) == ([], 0, 0)
    assert engine.calls == []
