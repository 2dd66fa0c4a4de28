"""Run a function on N local processes, as torchrun would (CPU runs, tests, benchmarks).

Each process gets torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT), so
the function initialises distributed state exactly as under torchrun or Slurm. The ranks die
with the process that started them, whatever killed it, and report back through pipes (no
semaphore or temporary file that a killed run would leave behind).

A rank that dies (killed, out of memory) or stops showing signs of life is :class:`RankLost`, one
line naming it; the other ranks are ended with it (they would wait for it in their next
collective). Signs of life: each rank's heartbeat thread writes to a pipe every fraction of
``heartbeat_timeout``; a process that is stopped (SIGSTOP, a frozen node, a debugger) or frozen
whole stops beating. A rank alive but stuck in a collective keeps beating; its collective's
timeout (``parallel.collective_timeout_minutes``) ends it. A rank is timed from its first beat,
so the start of an interpreter (importing torch can take long on a loaded machine) is not
mistaken for a stop; a rank that never starts leaves its peers in the start-up rendezvous,
which has the collective timeout too.
"""

from __future__ import annotations

import os
import pickle
import signal
import threading
import time
import traceback
from multiprocessing.connection import wait

import torch.multiprocessing as mp

from megatron_prorl.errors import USER_ERRORS, RunFailure, UserError
from megatron_prorl.runtime import process
from megatron_prorl.runtime.distributed import free_port


class RankFailed(RuntimeError):
    """A rank raised (its traceback is in the message) or died."""


class RankUserError(UserError):
    """A rank stopped on a user error; the message is that rank's one line."""


class RankLost(RankFailed, RunFailure):
    """A rank died without a word or stopped showing signs of life: one line naming it."""


def _beat(conn, interval: float) -> None:
    """A rank's heartbeat: a message to the launcher every ``interval`` seconds while this
    process runs (a thread: it stops with the whole process, not with a busy main thread)."""
    try:
        while True:
            conn.send_bytes(b"")
            time.sleep(interval)
    except OSError:  # the launcher is gone; die_with_parent ends this process
        return


def _entry(rank, world_size, port, fn, args, conn, parent_pid, catch_stop_signals, beat_conn, beat_interval):
    process.die_with_parent(parent_pid)
    if catch_stop_signals:  # fn reads them (process.stop_signal); the launcher owns a second Ctrl-C
        process.catch_stop_signals(second_interrupt_kills=False)
    else:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, process.STOP_SIGNALS)
    if beat_conn is not None:
        threading.Thread(target=_beat, args=(beat_conn, beat_interval), name="heartbeat", daemon=True).start()
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    import torch

    torch.set_num_threads(1)
    try:
        # Plain pickle: torch's pickler shares tensors through file descriptors that vanish
        # when this process exits before the parent reads them.
        conn.send((rank, "ok", pickle.dumps(fn(*args))))
    except USER_ERRORS as exc:
        conn.send((rank, "user", str(exc)))
        raise SystemExit(2)
    except BaseException:
        # The traceback goes to the parent, which shows it if this failure is the cause (not
        # when another rank's error came first and this one only lost its peer).
        conn.send((rank, "error", traceback.format_exc()))
        raise SystemExit(1)


def spawn(fn, world_size: int, *args, timeout: float | None = 300.0, catch_stop_signals: bool = False,
          heartbeat_timeout: float | None = None) -> list:
    """Run ``fn(*args)`` on ``world_size`` spawned ranks; return each rank's result, by rank.

    ``fn`` must be a module-level function; it reads its rank from the environment (as under
    torchrun). A user error on a rank raises :class:`RankUserError` with its message; a rank
    that dies without a result, or (with ``heartbeat_timeout``, seconds) shows no sign of life
    for that long, :class:`RankLost` naming it; any other failure :class:`RankFailed` with that
    rank's traceback. SIGTERM, SIGUSR1 and SIGINT sent to this process are forwarded to the
    ranks, so a scheduler's warning reaches them. ``catch_stop_signals``: the ranks record those
    signals from their first instruction (:func:`process.catch_stop_signals`) rather than die of
    them; after a first SIGINT, a second one ends this process at once, and the ranks with it.
    """
    process.start_resource_tracker()
    ctx = mp.get_context("spawn")
    port = free_port()
    pipes = [ctx.Pipe(duplex=False) for _ in range(world_size)]
    beats = [ctx.Pipe(duplex=False) if heartbeat_timeout else (None, None) for _ in range(world_size)]
    interval = min(1.0, heartbeat_timeout / 5) if heartbeat_timeout else None
    procs = [ctx.Process(target=_entry, args=(r, world_size, port, fn, args, pipes[r][1], os.getpid(),
                                              catch_stop_signals, beats[r][1], interval), daemon=False)
             for r in range(world_size)]
    with process.children_block_stop_signals():  # a signal during a rank's start-up waits for it
        for p, (_, writer), (_, beat_writer) in zip(procs, pipes, beats):
            p.start()
            writer.close()
            if beat_writer is not None:
                beat_writer.close()

    def forward(signum, frame):
        for p in procs:
            if p.is_alive():
                os.kill(p.pid, signum)
        if catch_stop_signals and signum == signal.SIGINT:
            process.second_interrupt_kills_now()

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)}
    if catch_stop_signals:
        process.one_shot(signal.SIGINT)
    deadline = None if timeout is None else time.monotonic() + timeout
    results: dict[int, object] = {}
    readers = {pipes[r][0]: r for r in range(world_size)}
    beat_readers = {beats[r][0]: r for r in range(world_size) if beats[r][0] is not None}
    last_beat: dict[int, float] = {}  # rank -> when its latest heartbeat was read
    grace = 2.0  # after a failure the other ranks may wait on it in a collective forever
    try:
        while len(results) < world_size:
            ready = wait(list(readers) + list(beat_readers), timeout=1.0)
            failures = []
            for reader in ready:
                if reader in beat_readers:
                    _drain_beats(reader, beat_readers, last_beat)
                    continue
                rank = readers.pop(reader)
                try:
                    _, status, value = reader.recv()
                except EOFError:  # the rank is gone without a word: killed, out of memory
                    procs[rank].join(timeout=5)
                    failures.append(RankLost(f"rank {rank} (pid {procs[rank].pid}) {_death(procs[rank].exitcode)} "
                                             "before returning a result" + _why(procs[rank].exitcode)))
                    continue
                if status == "user":
                    failures.append(RankUserError(value))
                elif status == "error":
                    failures.append(RankFailed(f"rank {rank} failed:\n{value}"))
                else:
                    results[rank] = pickle.loads(value)
            now = time.monotonic()
            failures += [RankLost(f"rank {rank} (pid {procs[rank].pid}) has shown no sign of life for "
                                  f"{heartbeat_timeout:g} s (no heartbeat: the process is stopped, frozen or starved "
                                  "of CPU); every rank was ended")
                         for rank, when in sorted(last_beat.items())
                         if rank not in results and now - when > heartbeat_timeout]
            if failures:  # the cause first: a user error, then a lost rank; the ranks that lost their peer follow
                raise min(failures, key=lambda f: 0 if isinstance(f, UserError) else 1 if isinstance(f, RankLost) else 2)
            if not ready and deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"ranks did not finish within {timeout} s")
        grace = 30.0
    finally:
        for sig, handler in previous.items():
            if signal.getsignal(sig) is not signal.SIG_DFL:  # SIGINT after a Ctrl-C: the next one ends it
                signal.signal(sig, handler)
        end = time.monotonic() + grace
        for p in procs:
            p.join(timeout=max(0.0, end - time.monotonic()))
            if p.is_alive():
                p.kill()
                p.join()
    return [results[r] for r in range(world_size)]


def _drain_beats(reader, beat_readers: dict, last_beat: dict) -> None:
    rank = beat_readers[reader]
    try:
        while reader.poll():
            reader.recv_bytes()
        last_beat[rank] = time.monotonic()
    except EOFError:  # the rank has exited: its result pipe says how
        del beat_readers[reader]
        last_beat.pop(rank, None)


def _death(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        return f"was killed by {signal.Signals(-exitcode).name}"
    return f"exited with code {exitcode}"


def _why(exitcode: int | None) -> str:
    return " (out of memory, or kill -9?)" if exitcode == -signal.SIGKILL else ""
