"""RewardPool: batched, asynchronous scoring across the machine's cores.

``submit(items)`` returns at once with a :class:`concurrent.futures.Future` whose result is the
list of :class:`RewardResult` in item order, so the trainer keeps working while responses are
verified. A dispatcher thread hands chunks of items to worker processes (spawned: safe next to
CUDA and threads; one per core by default) and watches a deadline per item: a verifier that
hangs past it gives that item reward 0 with reason "timeout", its worker is killed (with any
sandbox it was running) and replaced, and the rest of its chunk is re-queued. A worker that
dies gives its current item an "error: worker died" result the same way. Verifiers run in a
worker's main thread, which Math-Verify's signal-based timeouts require.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
import traceback
import warnings
from collections import deque
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from multiprocessing.connection import Connection, wait
from typing import Any, Iterable, Mapping, Optional, Sequence, Union

from megatron_prorl import domains
from megatron_prorl.config import RewardsConfig
from megatron_prorl.domains import Domain, Verifier
from megatron_prorl.domains.result import CodeExecutionDisabled, RewardItem, RewardResult
from megatron_prorl.rewards import score
from megatron_prorl.runtime import process as runtime_process
from megatron_prorl.sandbox import sandbox

log = logging.getLogger(__name__)

MAX_CHUNK = 32
FLUSH_S = 0.02  # a worker sends the results it has at least this often (one message per item
# would cost ~50 us of pickling and GIL time in the trainer each, more than some verifiers)
CODE_TIMEOUT_MARGIN_S = 5.0  # the sandbox's own start-up grace plus scheduling slack


@dataclass
class _Batch:
    future: Future
    results: list
    remaining: int


@dataclass
class _Slot:
    batch: _Batch
    index: int
    item: RewardItem


@dataclass
class _Worker:
    process: Any
    conn: Connection
    # [position in the chunk of the item being verified, monotonic time it started], written by
    # the worker before each item, so timeouts are exact without a message per item.
    progress: Any
    ready: bool = False
    chunk: list = field(default_factory=list)
    delivered: int = 0  # results of the chunk received so far

    @property
    def busy(self) -> bool:
        return self.delivered < len(self.chunk)


def _warm(domain: str, cfg: RewardsConfig) -> Optional[dict]:
    """Run a domain's warm-up (imports, caches) so its first item is not slow; the code domain
    returns its sandbox's description."""
    warm = domains.get(domain).warm
    return warm(cfg) if warm else None


def _worker_main(conn: Connection, progress: Any, cfg_dict: dict, extra: dict, preload: Sequence[str],
                 parent_pid: int) -> None:
    # The run's stop signals (Ctrl-C included) are the trainer's to handle; never outlive it.
    runtime_process.ignore_stop_signals()
    runtime_process.die_with_parent(parent_pid)
    sandbox.become_subreaper()
    # The pool reports the sandbox mode once; N workers repeating the fallback warning is noise.
    logging.getLogger(sandbox.__name__).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=RuntimeWarning, message="code sandbox")
    cfg = RewardsConfig(**cfg_dict)
    for domain in extra.values():
        domains.register_domain(domain, replace=True)
    info = None
    try:
        for domain in preload:
            info = _warm(domain, cfg) or info
    except Exception as exc:  # e.g. SandboxUnavailable: the pool cannot do its job
        conn.send(("failed", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("ready", info))
    while True:
        try:
            chunk = conn.recv()
        except EOFError:  # the pool is gone
            return
        done: list[RewardResult] = []
        last_send = time.monotonic()
        for position, item in enumerate(chunk):
            progress[1] = time.monotonic()  # time first: a reader never pairs an index with an earlier start
            progress[0] = position
            try:
                result = score.score_detailed(item.domain, item.response, item.ground_truth,
                                                 finished=item.finished, cfg=cfg)
            except Exception as exc:  # a data or verifier bug: reported per item, the batch goes on
                result = RewardResult(0.0, f"error: {type(exc).__name__}: {exc}"[:500],
                                      details={"traceback": traceback.format_exc()[-2000:]})
            done.append(result)
            if position == len(chunk) - 1 or time.monotonic() - last_send >= FLUSH_S:
                conn.send(done)
                done, last_send = [], time.monotonic()


ItemLike = Union[RewardItem, tuple, Mapping]


class RewardPool:
    """Process pool for verifiers. Use as a context manager or call :meth:`close`.

    Args:
        cfg: the rewards section of the config.
        num_workers: overrides ``cfg.num_workers`` (0/None there: one per usable core).
        verifiers: domains for this pool only, name -> verifier (picklable functions, e.g.
            module-level), beside the registered ones (which reach the workers too, those
            registered at run time included).
        preload: domains each worker warms up before taking work (default: all of them).
    """

    def __init__(self, cfg: Optional[RewardsConfig] = None, *, num_workers: Optional[int] = None,
                 verifiers: Optional[Mapping[str, Verifier]] = None,
                 preload: Optional[Sequence[str]] = None):
        self.cfg = cfg or RewardsConfig()
        self.num_workers = num_workers or self.cfg.num_workers or len(os.sched_getaffinity(0))
        self._extra = {**domains.DOMAINS.added(),
                       **{name: Domain(name, verify=fn) for name, fn in (verifiers or {}).items()}}
        self._domains = set(domains.names()) | set(self._extra)
        self._preload = tuple(d for d in (sorted(self._domains) if preload is None else preload) if d in self._domains)
        # The sandbox is probed in the workers (a probe here would fork a possibly multi-threaded
        # trainer with a preexec_fn); the first worker's description lands here.
        self.sandbox_info: Optional[dict] = None
        self._ctx = get_context("spawn")
        self._lock = threading.RLock()  # _assign (locked) may call _replace (locks)
        self._queue: deque[_Slot] = deque()
        self._closed = False  # close() was called
        self._stopping = False  # the dispatcher exits once idle (closed, or broken)
        self._broken: Optional[BaseException] = None
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._workers = [self._start_worker() for _ in range(self.num_workers)]
        self._thread = threading.Thread(target=self._run, name="reward-pool", daemon=True)
        self._thread.start()
        # Workers ignore SIGTERM (the run's stop signal), so multiprocessing's own exit handler,
        # which terminates then joins daemonic children, would wait for them forever: a pool
        # left open (an error on the way out) is closed, and its workers killed, first.
        atexit.register(self.close)

    # -- public -------------------------------------------------------------------------------

    def submit(self, items: Iterable[ItemLike]) -> "Future[list[RewardResult]]":
        """Queue a batch; the future's result is the list of results in item order."""
        items = [self._coerce(item) for item in items]
        future: Future = Future()
        if not items:
            future.set_result([])
            return future
        batch = _Batch(future, [None] * len(items), len(items))
        with self._lock:
            if self._closed:
                raise RuntimeError("RewardPool is closed")
            if self._broken is not None:
                raise RuntimeError(f"RewardPool is broken: {self._broken}") from self._broken
            self._queue.extend(_Slot(batch, i, item) for i, item in enumerate(items))
        self._wake()
        return future

    def map(self, items: Iterable[ItemLike]) -> list[RewardResult]:
        return self.submit(items).result()

    @property
    def worker_pids(self) -> list[int]:
        return [w.process.pid for w in self._workers]

    def close(self) -> None:
        """Finish the queued work, then stop the workers."""
        with self._lock:
            if self._closed:
                return
            self._closed = self._stopping = True
        self._wake()
        self._thread.join()
        for worker in self._workers:  # idle now: nothing is lost by killing them
            self._kill(worker)
        os.close(self._wake_r)
        os.close(self._wake_w)
        atexit.unregister(self.close)

    def __enter__(self) -> "RewardPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- dispatcher -----------------------------------------------------------------------------

    def _coerce(self, item: ItemLike) -> RewardItem:
        if isinstance(item, Mapping):
            item = RewardItem(**item)
        elif isinstance(item, tuple):
            item = RewardItem(*item)
        if not isinstance(item, RewardItem):
            raise TypeError(f"reward items are RewardItem, (domain, response, ground_truth[, finished]) or dicts; "
                            f"got {type(item).__name__}")
        if item.domain not in self._domains:
            raise ValueError(f"unknown reward domain {item.domain!r}; known: {sorted(self._domains)}")
        if item.domain == "code" and not self.cfg.allow_code_execution and item.finished:
            raise CodeExecutionDisabled("rewards.allow_code_execution=false: refusing to run model-written code")
        return item

    def _start_worker(self) -> _Worker:
        parent, child = self._ctx.Pipe()
        progress = self._ctx.RawArray("d", 2)
        process = self._ctx.Process(target=_worker_main, name="reward-worker", daemon=True,
                                    args=(child, progress, asdict(self.cfg), self._extra, self._preload, os.getpid()))
        with runtime_process.children_block_stop_signals():  # until the worker ignores them
            process.start()
        child.close()
        return _Worker(process, parent, progress)

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except BlockingIOError:
            pass  # already awake

    def _timeout(self, item: RewardItem) -> float:
        if item.domain == "code":
            return max(self.cfg.timeout_s, self.cfg.code_timeout_s + CODE_TIMEOUT_MARGIN_S)
        return self.cfg.timeout_s

    def _run(self) -> None:
        try:
            self._dispatch()
        except BaseException as exc:  # a bug here must not leave futures pending forever
            self._break(exc)
            raise

    def _running(self, worker: _Worker) -> tuple[int, float]:
        """Position in its chunk of the item ``worker`` is verifying, and that item's deadline."""
        position = min(max(int(worker.progress[0]), worker.delivered), len(worker.chunk) - 1)
        return position, worker.progress[1] + self._timeout(worker.chunk[position].item)

    def _dispatch(self) -> None:
        while True:
            with self._lock:
                busy = [w for w in self._workers if w.busy]
                if self._stopping and not self._queue and not busy:
                    return
                self._assign()
                busy = [w for w in self._workers if w.busy]
            # Wake at the earliest deadline; a worker that moved on since just gets a later one.
            deadlines = [self._running(w)[1] for w in busy]
            timeout = max(0.0, min(deadlines) - time.monotonic()) if deadlines else None
            ready = wait([w.conn for w in self._workers] + [self._wake_r], timeout)
            if self._wake_r in ready:
                os.read(self._wake_r, 4096)
            for worker in list(self._workers):
                if worker.conn in ready:
                    self._receive(worker)
            now = time.monotonic()
            for worker in list(self._workers):
                if worker.busy and now >= self._running(worker)[1]:
                    self._replace(worker, "timeout")

    def _assign(self) -> None:
        for worker in [w for w in self._workers if w.ready and not w.busy]:
            if not self._queue:
                return
            size = min(MAX_CHUNK, max(1, len(self._queue) // (4 * len(self._workers))))
            worker.chunk = [self._queue.popleft() for _ in range(min(size, len(self._queue)))]
            worker.delivered = 0
            worker.progress[1] = time.monotonic()
            worker.progress[0] = 0
            try:
                worker.conn.send([slot.item for slot in worker.chunk])
            except OSError:
                self._replace(worker, "error: worker died")

    def _receive(self, worker: _Worker) -> None:
        while True:
            try:
                if not worker.conn.poll():
                    return
                message = worker.conn.recv()
            except (EOFError, OSError):
                worker.process.join(timeout=1.0)  # closed pipe: it is exiting; get its code
                if not worker.ready:  # it cannot start: replacing it would loop forever
                    self._break(RuntimeError(f"a reward worker died while starting (exit code "
                                             f"{worker.process.exitcode}); see its traceback above"))
                else:
                    self._replace(worker, f"error: worker died (exit code {worker.process.exitcode})")
                return
            if isinstance(message, tuple):  # ("ready", sandbox info) or ("failed", why); else results
                kind, payload = message
                if kind == "failed":
                    self._break(RuntimeError(f"a reward worker failed to start: {payload}"))
                    return
                worker.ready = True
                if payload and self.sandbox_info is None:
                    self.sandbox_info = payload
                    if payload["mode"] != "bwrap":
                        log.warning("code sandbox: %s mode (no bubblewrap); %s", payload["mode"],
                                    "; ".join(payload["notes"]) or "seccomp, Landlock and cgroups available")
                continue
            for result in message:
                self._deliver(worker.chunk[worker.delivered], result)
                worker.delivered += 1

    def _deliver(self, slot: _Slot, result: RewardResult) -> None:
        if result.reason.startswith("error:"):
            log.warning("reward item %d (%s): %s", slot.index, slot.item.domain, result.reason)
        batch = slot.batch
        batch.results[slot.index] = result
        batch.remaining -= 1
        if batch.remaining == 0:
            batch.future.set_result(batch.results)

    def _break(self, exc: BaseException) -> None:
        """Fail every queued and in-flight batch with ``exc`` and refuse new work."""
        with self._lock:
            self._broken = self._broken or exc
            slots = list(self._queue) + [s for w in self._workers for s in w.chunk[w.delivered:]]
            self._queue.clear()
            for worker in self._workers:
                worker.chunk, worker.delivered = [], 0
            self._stopping = True
        for batch in {id(s.batch): s.batch for s in slots}.values():
            if not batch.future.done():
                batch.future.set_exception(exc)

    def _replace(self, worker: _Worker, reason: str) -> None:
        """Kill ``worker``; the item it was on fails with ``reason``, the rest of its chunk (results
        it had not sent included) goes back to the front of the queue, and a fresh worker takes
        its place."""
        self._kill(worker)
        if worker.busy:
            position, _ = self._running(worker)
            self._deliver(worker.chunk[position], RewardResult(0.0, reason))
            again = worker.chunk[worker.delivered:position] + worker.chunk[position + 1:]
            with self._lock:
                self._queue.extendleft(reversed(again))
        self._workers[self._workers.index(worker)] = self._start_worker()

    @staticmethod
    def _kill(worker: _Worker) -> None:
        if worker.process.is_alive():
            worker.process.kill()
        worker.process.join()
        worker.conn.close()
        sandbox.cleanup_worker_cgroups(worker.process.pid)
