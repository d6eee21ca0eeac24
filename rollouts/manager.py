"""Asynchronous rollouts: N Ray actors kept busy inside the staleness window, feeding the trainer.

`RolloutManager` owns the rollout actors (rollouts/worker.py), a seeded resumable cursor over the
training split (rollouts/data_cursor.py) and the staleness buffer (rollouts/buffer.py). A background
"pump" thread keeps every actor busy with at most `rollout.max_inflight_calls_per_worker` generate
calls of `rollout.questions_per_worker_call` questions, collects finished groups with `ray.wait` and
streams them into the buffer. The trainer calls `get_batch(num_groups, version)` and, after each
optimizer step, `push_weights(state_dict, version + 1)`.

The staleness window (the AReaL rule). Let B = `rollout.questions_per_step` (groups per trainer step),
s = `async.max_staleness` and v the newest published policy version. A group generated with weights
v can train versions v..v+s, so the manager starts a new generate call only while

    groups issued so far - groups dropped  <=  (v - initial_version + s + 1) * B  (+ extra demand)

Nothing beyond what the window can consume is generated, and with s = 0 the run is exactly
synchronous: the B groups of version v are issued only after `push_weights(..., v)`, and all are
consumed at version v. Weight updates are sent to every actor under the same lock that issues calls,
and each call carries the version it was issued for, so every call issued after a push runs with the
pushed weights. An actor that runs one call at a time loads an update after the calls it already has;
a continuous-batching actor (`rollout.continuous_batching`, the default) loads it between two model
turns, so calls already running finish with the new weights and their groups keep the older version
as their tag (staleness is counted from a group's oldest token).
If the trainer asks for more groups in one version than the window holds (e.g. a filter that discards
groups and asks again), the window grows by the shortfall instead of deadlocking ("extra demand").

Fault tolerance: a call that fails with RayActorError (the actor died or was killed) makes the manager
kill the actor, re-queue the questions of all its in-flight calls at the front of the cursor, start a
replacement with a new worker id, load the current weights into it, and go on
(`rollout.actors_replaced`, `rollout.requeued_questions`). Groups a worker failed to return count as
`rollout.groups_lost` (0 in a healthy run). An exception raised inside a generate call (a bug, not a
dead process) stops the pump and is re-raised by the next `get_batch`.

Placement (rollouts/placement.py): one placement group of one bundle per actor, each of
`rollout.worker_num_cpus`, `rollout.worker_num_gpus` and the custom `rollout.worker_resources` (e.g.
{rollout_node: 1} keeps them on nodes started with that resource), laid out by
`rollout.placement_strategy`; a replacement takes its predecessor's bundle. `rollout/actor_nodes` and
`rollout/actors_on_driver_node` report where they ran.

What it simplifies on purpose: one manager per driver process; no actor restarts by Ray itself
(replacement is explicit, so questions are never silently dropped); metrics windows are "since the
previous stats() call", which the training loop calls once per step.

    init_ray()
    manager = RolloutManager(worker_config, train_questions, model_path=..., corpus_path=...,
                             max_staleness=1, max_buffered_groups=64, seed=0)
    batch = manager.get_batch(config.rollout.questions_per_step, current_version=0)
    manager.push_weights(model.state_dict(), version=1)
    print(manager.stats()); manager.shutdown()
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.exceptions import RayActorError

from data.plugins import plugin_runtime_env
from data.types import Question
from rollouts.buffer import DROP_REASONS, BufferTimeout, StalenessBuffer
from rollouts.data_cursor import DataCursor
from rollouts.placement import ActorPlacement
from data.trajectory import Group
from rollouts.weight_sync import PublishedWeights, publish_weights
from rollouts.worker import WorkerConfig, WorkerSetup, worker_actor_class

logger = logging.getLogger(__name__)

POLL_S = 0.05  # how often the pump thread looks at finished calls when none finished
GET_BATCH_POLL_S = 0.5  # how often a waiting get_batch checks that the pump thread is alive
DEFAULT_OBJECT_STORE_BYTES = 2 * 1024**3  # weights of a 0.5B model in bf16 fit twice
RAY_WORKER_NICENESS = "RAY_worker_niceness"  # Ray's setting: how many nice levels below the driver its workers run
LOCAL_WORKER_NICENESS = "0"  # a local Ray's rollout actors compete for the CPU as the trainer does


# Set for every rollout actor: the default path never reaches a hub, and tokenizers must not fork threads.
ACTOR_ENV_VARS = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
# Ray's job supervisor hands a submitted job's config (its runtime env included) to the entrypoint in this variable.
JOB_CONFIG_VARIABLE = "RAY_JOB_CONFIG_JSON_ENV_VAR"


def submitted_job_env_vars() -> dict[str, str]:
    """The env vars of the runtime env this process was submitted with (`ray job submit`); {} otherwise."""
    job_config = json.loads(os.environ.get(JOB_CONFIG_VARIABLE) or "{}")
    return dict((job_config.get("runtime_env") or {}).get("env_vars") or {})


def driver_runtime_env(plugins: list[str] | tuple[str, ...] = ()) -> dict | None:
    """ACTOR_ENV_VARS minus the names the submitted job's runtime env already sets, plus the plugins' hook.

    A job's runtime env applies to all its actors, and Ray refuses to merge a ray.init runtime env that sets
    one of its names again ("Failed to merge the Job's runtime env"): scripts/ray_cluster.sh sets the same flags.
    plugins: the config's `plugins`; every worker process imports them before it runs anything (Ray's
    worker_process_setup_hook, data/plugins.py).
    """
    provided_by_job = submitted_job_env_vars()
    plugin_env = plugin_runtime_env(plugins)
    env_vars = {**ACTOR_ENV_VARS, **plugin_env.get("env_vars", {})}
    env_vars = {name: value for name, value in env_vars.items() if name not in provided_by_job}
    runtime_env = {**plugin_env, "env_vars": env_vars} if env_vars else dict(plugin_env)
    return runtime_env or None


def init_ray(num_cpus: int | None = None, local: bool = True, object_store_memory_bytes: int | None = None,
             plugins: list[str] | tuple[str, ...] = ()) -> None:
    """Start (or join) Ray with settings that suit a laptop; a set RAY_ADDRESS (or local=False) joins a cluster.

    Locally: no dashboard, a modest object store (2 GiB or a quarter of RAM, whichever is smaller), offline HF
    settings for every worker, and workers at the driver's priority (RAY_worker_niceness=0 unless exported).
    On a cluster (`ray job submit`), the cluster decides resources and the job's runtime env comes first
    (driver_runtime_env). Either way actor output is streamed to this process's
    terminal (and so into the job's logs); what the actors emit is rollout.actor_logs (configure_actor_logging
    in rollouts/worker.py). plugins: the config's `plugins`, imported in every worker process.
    """
    if ray.is_initialized():
        return
    runtime_env = driver_runtime_env(plugins)
    address = os.environ.get("RAY_ADDRESS")
    if address or not local:
        ray.init(address=address or "auto", ignore_reinit_error=True, log_to_driver=True, runtime_env=runtime_env)
        return
    if object_store_memory_bytes is None:
        physical_bytes = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        object_store_memory_bytes = min(DEFAULT_OBJECT_STORE_BYTES, physical_bytes // 4)
    # Ray starts its workers RAY_worker_niceness (default 15) nice levels below the driver, as background tasks.
    # Here the rollout actors are the work: at nice 15 they lose the CPU to the trainer's own steps and to any
    # other job on the machine (runs beside a CPU-bound job went from ~14 s to ~270 s per GRPO step). A value the
    # user exported still wins.
    os.environ.setdefault(RAY_WORKER_NICENESS, LOCAL_WORKER_NICENESS)
    # "local": a Ray of its own even when `ray start` ran on this machine (a bare ray.init() would join the
    # cluster recorded in /tmp/ray/ray_current_cluster, and refuse num_cpus there)
    ray.init(address="local", num_cpus=num_cpus or os.cpu_count(), include_dashboard=False,
             ignore_reinit_error=True, object_store_memory=object_store_memory_bytes, log_to_driver=True,
             runtime_env=runtime_env)


def warn_if_no_node_has(resources: dict[str, float]) -> None:
    """rollout.worker_resources that no node of the cluster offers leave the actors pending: say so early."""
    if not resources or not ray.is_initialized():
        return
    available = ray.cluster_resources()
    missing = {name: amount for name, amount in resources.items() if available.get(name, 0) < amount}
    if missing:
        logger.warning("rollout.worker_resources %s: no node of the Ray cluster has %s yet, so the rollout actors "
                       "wait until one joins (start it with `ray start --resources '{\"%s\": N}'`)",
                       dict(resources), missing, next(iter(missing)))


@dataclass
class InFlightCall:
    """A call submitted to an actor whose result the pump has not collected yet."""

    kind: str  # "generate" or "update_weights"
    slot_index: int
    version: int  # policy version the call was issued for
    question_indices: list[int] = field(default_factory=list)  # generate calls only
    submitted_at: float = 0.0


@dataclass
class WorkerSlot:
    """One place for an actor; a dead actor is replaced in the same slot with a new worker id."""

    index: int
    worker_id: int
    actor: Any  # ray ActorHandle of RolloutWorkerActor
    node_id: str = ""  # the Ray node the actor runs on, known from its first groups
    generate_calls: int = 0  # generate calls in flight
    idle_since: float | None = None  # set while no generate call is in flight


class RolloutManager:
    """Keeps N rollout actors busy within the staleness window; serves batches of scored groups."""

    def __init__(self, config: WorkerConfig, questions: list[Question], model_path: str, corpus_path: str = "",
                 initial_version: int = 0, actor_class: Any = None, *, max_staleness: int, max_buffered_groups: int,
                 seed: int = 0, model_version: int | None = None):
        """`config`: the sections every actor gets; `max_staleness` / `max_buffered_groups`: async.*;
        `seed`: experiment.seed (data order and generation seeds); `initial_version`: the policy version
        training starts at; `model_version`: the version of the weights in `model_path` (default
        `initial_version`), the one a new actor holds and reports until it loads pushed weights.

        A resumed run starts at the checkpoint's version v while `model_path` holds the warm-start (version 0):
        pass `initial_version=v, model_version=0` and `push_weights(weights_v, v)` before the first get_batch.
        Every generate call is issued for version v, so no group is generated, or tagged v, before an actor
        has loaded the weights of v."""
        rollout = config.rollout
        if max_buffered_groups < rollout.questions_per_step:
            raise ValueError(
                f"async.max_buffered_groups ({max_buffered_groups}) is smaller than one training "
                f"batch (rollout.questions_per_step = {rollout.questions_per_step}); raise it"
            )
        self.config = config
        self.seed = seed
        self.questions = list(questions)
        self.groups_per_step = rollout.questions_per_step
        self.max_staleness = max_staleness
        self.buffer = StalenessBuffer(self.max_staleness, max_buffered_groups, initial_version)
        self._cursor = DataCursor(len(self.questions), seed=seed)
        self._question_index_by_id = {question.id: index for index, question in reversed(list(enumerate(questions)))}
        self._model_path, self._corpus_path = str(model_path), str(corpus_path)
        self._actor_class = actor_class or worker_actor_class(rollout.continuous_batching)
        self._initial_version = self._latest_version = initial_version
        self._model_version = initial_version if model_version is None else model_version
        self._published: PublishedWeights | None = None

        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._pump_thread: threading.Thread | None = None
        self._pump_error: BaseException | None = None
        self._inflight: dict[Any, InFlightCall] = {}
        self._counters: dict[str, float] = defaultdict(float)  # cumulative
        self._window: dict[str, float] = defaultdict(float)  # since the previous stats()
        self._window_started = time.monotonic()
        self._issued_groups = 0  # groups issued and not re-queued or lost (the window's left-hand side)
        self._extra_window = 0
        self._inflight_groups = 0
        self._next_worker_id = 0
        self._driver_node_id = ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""
        warn_if_no_node_has(rollout.worker_resources)
        self._placement = ActorPlacement(rollout)  # every actor's resources reserved at once, actor i in bundle i
        self._slots = [self._new_slot(index) for index in range(rollout.num_workers)]

    # ------------------------------------------------------------------ actors

    def _new_slot(self, index: int) -> WorkerSlot:
        worker_id, self._next_worker_id = self._next_worker_id, self._next_worker_id + 1
        # The actor reports the version of the weights it really holds; pushed weights follow (below).
        setup = WorkerSetup(worker_id=worker_id, model_path=self._model_path, corpus_path=self._corpus_path,
                            initial_version=self._model_version)
        actor = self._actor_class.options(**self._placement.options_for(index)).remote(self.config, setup)
        slot = WorkerSlot(index=index, worker_id=worker_id, actor=actor, idle_since=time.monotonic())
        if self._published is not None:
            self._submit_update(slot, self._published)
        return slot

    def worker_handles(self) -> list[Any]:
        """The current actor handles, one per slot (for health checks and fault-injection tests)."""
        with self._lock:
            return [slot.actor for slot in self._slots]

    def worker_ids(self) -> list[int]:
        with self._lock:
            return [slot.worker_id for slot in self._slots]

    def _replace_dead_worker(self, slot_index: int, error: BaseException) -> None:
        """Re-queue the dead actor's in-flight questions and start a replacement with the current weights."""
        slot = self._slots[slot_index]
        dead_calls = [(ref, call) for ref, call in self._inflight.items() if call.slot_index == slot_index]
        requeued: list[int] = []
        for ref, call in dead_calls:
            del self._inflight[ref]
            requeued.extend(call.question_indices)
        self._cursor.requeue(requeued)
        self._issued_groups -= len(requeued)
        self._inflight_groups -= len(requeued)
        self._counters["rollout/requeued_questions"] += len(requeued)
        try:
            ray.kill(slot.actor, no_restart=True)
        except Exception:  # already gone
            pass
        replaced = int(self._counters["rollout/actors_replaced"])
        if replaced >= self.config.rollout.max_actor_replacements:
            raise RuntimeError(
                f"rollout actor {slot.worker_id} died and {replaced} actors were already replaced "
                f"(rollout.max_actor_replacements); last error: {error}"
            ) from error
        logger.warning("rollout actor %d died (%s); re-queued %d questions, starting a replacement",
                       slot.worker_id, type(error).__name__, len(requeued))
        self._counters["rollout/actors_replaced"] += 1
        self._slots[slot_index] = self._new_slot(slot_index)

    # ------------------------------------------------------------------ the staleness window

    def _window_room(self) -> int:
        """Groups that may still be issued under the staleness window (may be negative)."""
        versions_open = self._latest_version - self._initial_version + self.max_staleness + 1
        window = versions_open * self.groups_per_step + self._extra_window
        dropped = self.buffer.counters()["dropped_total"]
        return window - (self._issued_groups - dropped)

    def _issue_room(self) -> int:
        capacity_room = self.buffer.capacity - len(self.buffer) - self._inflight_groups
        return min(self._window_room(), capacity_room)

    def _issue_generate_calls(self) -> None:
        room = self._issue_room()
        per_call = self.config.rollout.questions_per_worker_call
        max_calls = self.config.rollout.max_inflight_calls_per_worker
        while room > 0:
            free_slots = [slot for slot in self._slots if slot.generate_calls < max_calls]
            if not free_slots:
                return
            slot = min(free_slots, key=lambda candidate: candidate.generate_calls)
            count = min(per_call, room)
            self._submit_generate(slot, count)
            room -= count

    def _submit_generate(self, slot: WorkerSlot, count: int) -> None:
        indices = self._cursor.take(count)
        questions = [self.questions[index] for index in indices]
        seed = self.seed * 1_000_003 + int(self._counters["rollout/generate_calls"])
        ref = slot.actor.generate.remote(questions, self.config.rollout.group_size, self._latest_version, seed)
        now = time.monotonic()
        self._inflight[ref] = InFlightCall("generate", slot.index, self._latest_version, indices, now)
        if slot.idle_since is not None:
            self._window["async/worker_idle_s"] += now - slot.idle_since
            slot.idle_since = None
        slot.generate_calls += 1
        self._issued_groups += count
        self._inflight_groups += count
        self._counters["rollout/generate_calls"] += 1

    def _submit_update(self, slot: WorkerSlot, published: PublishedWeights) -> None:
        ref = slot.actor.update_weights.remote(published.ref, published.version)
        self._inflight[ref] = InFlightCall("update_weights", slot.index, published.version,
                                           submitted_at=time.monotonic())

    # ------------------------------------------------------------------ the pump thread

    def start(self) -> None:
        """Start issuing work (get_batch calls it; call it early to overlap generation with setup)."""
        with self._lock:
            if self._pump_thread is not None:
                return
            if self._published is None and self._model_version != self._latest_version:
                raise RuntimeError(
                    f"the rollout actors hold version {self._model_version} (the weights in {self._model_path}) "
                    f"and training starts at version {self._latest_version}: call push_weights(state_dict, "
                    f"{self._latest_version}) before the first get_batch"
                )
            self._pump_thread = threading.Thread(target=self._pump, name="rollout-pump", daemon=True)
            self._pump_thread.start()

    def _pump(self) -> None:
        try:
            while not self._stop.is_set():
                with self._lock:
                    self._issue_generate_calls()
                    pending = list(self._inflight)
                if not pending:
                    self._stop.wait(POLL_S)
                    continue
                ready, _ = ray.wait(pending, num_returns=1, timeout=POLL_S)
                if ready:
                    ready, _ = ray.wait(pending, num_returns=len(pending), timeout=0)
                for ref in ready:
                    self._collect(ref)
        except BaseException as error:  # surfaced by the next get_batch
            logger.error("rollout pump stopped: %r", error)
            self._pump_error = error

    def _collect(self, ref: Any) -> None:
        with self._lock:
            call = self._inflight.get(ref)
            if call is None:  # already handled (its actor died and was replaced)
                return
            try:
                result = ray.get(ref)
            except RayActorError as error:
                self._replace_dead_worker(call.slot_index, error)
                return
            del self._inflight[ref]
            if call.kind == "update_weights":
                self._window["perf/weight_load_s"] += float(result)
                self._window["weight_loads"] += 1
                return
            self._finish_generate_call(call, result)

    def _finish_generate_call(self, call: InFlightCall, groups: list[Group]) -> None:
        slot = self._slots[call.slot_index]
        slot.generate_calls -= 1
        if slot.generate_calls == 0:
            slot.idle_since = time.monotonic()
        requested = len(call.question_indices)
        self._inflight_groups -= requested
        lost = max(0, requested - len(groups))
        if lost:
            logger.warning("rollout actor %d returned %d groups for %d questions", slot.worker_id, len(groups), requested)
            self._issued_groups -= lost  # not produced: their window share is given back
            self._counters["rollout/groups_lost"] += lost
        for group in groups:
            self.buffer.put(group)
        if groups and groups[0].node_id and groups[0].node_id != slot.node_id:
            slot.node_id = groups[0].node_id
            logger.info("rollout actor %d runs on Ray node %s%s", slot.worker_id, slot.node_id,
                        " (the driver's)" if slot.node_id == self._driver_node_id else "")
        self._counters["rollout/groups_generated"] += len(groups)
        self._window["groups_generated"] += len(groups)

    # ------------------------------------------------------------------ trainer side

    def get_batch(self, num_groups: int, current_version: int, timeout: float | None = None) -> list[Group]:
        """`num_groups` scored groups admissible at `current_version`, oldest policy version first.

        Call `push_weights(state, v)` before `get_batch(n, v)`. Groups that expire after this step
        (version `current_version - max_staleness`) are served first, including those still being
        generated: the batch waits for them rather than letting them go stale, so a run inside the window
        drops nothing. Raises BufferTimeout after `timeout` seconds, or the pump's error if generation failed.
        """
        self.start()
        self._reserve_supply(num_groups, current_version)
        started = time.monotonic()
        deadline = None if timeout is None else started + timeout
        while True:
            self._raise_if_pump_failed()
            put_count_seen = self.buffer.put_count
            if self._batch_is_ready(num_groups, current_version):
                try:
                    batch = self.buffer.get_batch(num_groups, current_version, timeout=0)
                    break
                except BufferTimeout:  # an overflow eviction raced the check; wait for the next group
                    pass
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise BufferTimeout(f"no batch of {num_groups} groups at version {current_version} after "
                                    f"{timeout}s; rollout stats: {self.stats(reset_window=False)}")
            self.buffer.wait_for_put(put_count_seen,
                                     GET_BATCH_POLL_S if remaining is None else min(GET_BATCH_POLL_S, remaining))
        with self._lock:
            self._window["async/trainer_wait_s"] += time.monotonic() - started
            staleness_values = [current_version - group.policy_version for group in batch]
            self._window["staleness_sum"] += sum(staleness_values)
            self._window["staleness_count"] += len(staleness_values)
            self._window["async/staleness_max"] = max(self._window["async/staleness_max"], max(staleness_values))
        return batch

    def _batch_is_ready(self, num_groups: int, current_version: int) -> bool:
        """Enough admissible groups, and no group that expires after this step is still in flight
        (unless the expiring groups already buffered fill the batch)."""
        expiring_version = current_version - self.max_staleness
        with self._lock:
            self.buffer.advance_version(current_version)
            if len(self.buffer) < num_groups:
                return False
            # Older in-flight groups are already too stale (they will be dropped): not worth waiting for.
            expiring_inflight = sum(len(call.question_indices) for call in self._inflight.values()
                                    if call.kind == "generate" and call.version == expiring_version)
            return expiring_inflight == 0 or self.buffer.count_at_most_version(expiring_version) >= num_groups

    def _reserve_supply(self, num_groups: int, current_version: int) -> None:
        if num_groups > self.buffer.capacity:
            raise ValueError(f"get_batch asked for {num_groups} groups but the buffer holds at most "
                             f"{self.buffer.capacity} (async.max_buffered_groups); raise it")
        with self._lock:
            if current_version - self._latest_version > self.max_staleness:
                raise ValueError(
                    f"get_batch at version {current_version} but the newest weights the actors have are version "
                    f"{self._latest_version} (async.max_staleness={self.max_staleness}); call "
                    f"push_weights(state_dict, {current_version}) first"
                )
            self.buffer.advance_version(current_version)
            supply = len(self.buffer) + self._inflight_groups + max(0, self._window_room())
            if supply < num_groups:
                self._extra_window += num_groups - supply

    def _raise_if_pump_failed(self) -> None:
        if self._pump_error is not None:
            raise RuntimeError(f"rollout generation failed: {self._pump_error}") from self._pump_error

    def push_weights(self, state_dict: Any, version: int) -> float:
        """Publish policy `version` once to the object store and queue its loading on every actor.

        Does not wait for the actors: each loads the new weights after the calls it already has, and
        the calls issued from now on run with them. Returns the seconds the trainer was blocked (also
        reported as `perf/weight_sync_s` by stats(), the metric's one source).
        """
        started = time.perf_counter()
        published = publish_weights(state_dict, version)
        with self._lock:
            if version < self._latest_version or (version == self._latest_version and self._published is not None):
                raise ValueError(f"push_weights: version {version} is not newer than the published version "
                                 f"{self._latest_version}; versions must increase by optimizer step")
            self._published = published
            self._latest_version = version
            for slot in self._slots:
                self._submit_update(slot, published)
        elapsed = time.perf_counter() - started
        self._counters["perf/weight_sync_s"] = elapsed
        self._counters["perf/weight_bytes"] = published.num_bytes
        return elapsed

    @property
    def latest_version(self) -> int:
        return self._latest_version

    # ------------------------------------------------------------------ metrics, state, shutdown

    def stats(self, reset_window: bool = True) -> dict[str, float]:
        """Slash-namespaced metrics; rates and sums cover the time since the previous stats() call.

        The manager is the one owner of the staleness of trained groups (`async/staleness_*`, measured
        in get_batch, where it sees each group's version) and of `perf/weight_sync_s` (the last push).
        """
        with self._lock:
            now = time.monotonic()
            for slot in self._slots:
                if slot.idle_since is not None:
                    self._window["async/worker_idle_s"] += now - slot.idle_since
                    slot.idle_since = now
            elapsed = max(now - self._window_started, 1e-9)
            window, counters = self._window, self._counters
            buffer_counters = self.buffer.counters()
            metrics = {
                "async/staleness_mean": window["staleness_sum"] / max(window["staleness_count"], 1),
                "async/staleness_max": window["async/staleness_max"],
                "async/trainer_wait_s": window["async/trainer_wait_s"],
                "async/worker_idle_s": window["async/worker_idle_s"],
                "async/buffered_groups": float(buffer_counters["buffered"]),
                "async/inflight_groups": float(self._inflight_groups),
                "async/dropped_groups": float(buffer_counters["dropped_total"]),
                **{f"async/dropped_groups/{reason}": float(buffer_counters["dropped"][reason]) for reason in DROP_REASONS},
                "rollout/groups_per_s": window["groups_generated"] / elapsed,
                "rollout/groups_generated": counters["rollout/groups_generated"],
                "rollout/generate_calls": counters["rollout/generate_calls"],
                "rollout/actors_replaced": counters["rollout/actors_replaced"],
                "rollout/requeued_questions": counters["rollout/requeued_questions"],
                "rollout/groups_lost": counters["rollout/groups_lost"],
                **self._placement_metrics(),
                "perf/weight_sync_s": counters["perf/weight_sync_s"],
                "perf/weight_load_s": window["perf/weight_load_s"] / max(window["weight_loads"], 1),
                "perf/weight_bytes": counters["perf/weight_bytes"],
            }
            if reset_window:
                self._window = defaultdict(float)
                self._window_started = now
            return metrics

    def _placement_metrics(self) -> dict[str, float]:
        """Where the actors run (those that delivered groups): how many nodes, how many beside the driver."""
        placed = [slot.node_id for slot in self._slots if slot.node_id]
        if not placed:
            return {}
        return {"rollout/actor_nodes": float(len(set(placed))),
                "rollout/actors_on_driver_node": float(sum(node == self._driver_node_id for node in placed))}

    def state_dict(self) -> dict:
        """The data cursor, with every question handed out but not yet trained on re-queued (for resume)."""
        with self._lock:
            unconsumed = [index for call in self._inflight.values() for index in call.question_indices]
            unconsumed += [self._question_index_by_id[question_id] for question_id in self.buffer.buffered_question_ids()]
            return {"cursor": self._cursor.state_dict(extra_requeued=unconsumed), "latest_version": self._latest_version}

    def load_state_dict(self, state: dict) -> None:
        """Restore the data cursor; call before the first get_batch (before any work is issued)."""
        with self._lock:
            if self._pump_thread is not None:
                raise RuntimeError("load_state_dict must be called before the manager starts issuing work")
            self._cursor.load_state_dict(state["cursor"])

    def shutdown(self) -> None:
        """Stop the pump thread and kill the actors."""
        self._stop.set()
        if self._pump_thread is not None:
            self._pump_thread.join(timeout=30)
        with self._lock:
            for slot in self._slots:
                try:
                    ray.kill(slot.actor, no_restart=True)
                except Exception:
                    pass
            self._inflight.clear()
            self._published = None
            self._placement.remove()

    def __enter__(self) -> "RolloutManager":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.shutdown()


__all__ = ["RolloutManager", "init_ray", "InFlightCall", "WorkerSlot", "POLL_S"]
