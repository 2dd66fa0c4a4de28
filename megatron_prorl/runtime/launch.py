"""Run a function on N local processes, as torchrun would (CPU runs, tests, benchmarks).

Each process gets torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT), so
the function initialises distributed state exactly as under torchrun or Slurm. The ranks die
with the process that started them, whatever killed it, and report back through pipes (no
semaphore or temporary file that a killed run would leave behind).
"""

from __future__ import annotations

import os
import pickle
import signal
import time
import traceback
from multiprocessing.connection import wait

import torch.multiprocessing as mp

from megatron_prorl.errors import USER_ERRORS, UserError
from megatron_prorl.runtime import process
from megatron_prorl.runtime.distributed import free_port


class RankFailed(RuntimeError):
    """A rank raised (its traceback is in the message) or died."""


class RankUserError(UserError):
    """A rank stopped on a user error; the message is that rank's one line."""


def _entry(rank, world_size, port, fn, args, conn, parent_pid, catch_stop_signals):
    process.die_with_parent(parent_pid)
    if catch_stop_signals:  # fn reads them (process.stop_signal); the launcher owns a second Ctrl-C
        process.catch_stop_signals(second_interrupt_kills=False)
    else:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, process.STOP_SIGNALS)
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


def spawn(fn, world_size: int, *args, timeout: float | None = 300.0, catch_stop_signals: bool = False) -> list:
    """Run ``fn(*args)`` on ``world_size`` spawned ranks; return each rank's result, by rank.

    ``fn`` must be a module-level function; it reads its rank from the environment (as under
    torchrun). A user error on a rank raises :class:`RankUserError` with its message; any other
    failure :class:`RankFailed` with that rank's traceback, or its exit code when it died without
    one. SIGTERM, SIGUSR1 and SIGINT sent to this process are forwarded to the ranks, so a
    scheduler's warning reaches them. ``catch_stop_signals``: the ranks record those signals
    from their first instruction (:func:`process.catch_stop_signals`) rather than die of them;
    after a first SIGINT, a second one ends this process at once, and the ranks with it.
    """
    process.start_resource_tracker()
    ctx = mp.get_context("spawn")
    port = free_port()
    pipes = [ctx.Pipe(duplex=False) for _ in range(world_size)]
    procs = [ctx.Process(target=_entry, args=(r, world_size, port, fn, args, pipes[r][1], os.getpid(),
                                              catch_stop_signals), daemon=False)
             for r in range(world_size)]
    with process.children_block_stop_signals():  # a signal during a rank's start-up waits for it
        for p, (_, writer) in zip(procs, pipes):
            p.start()
            writer.close()

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
    grace = 2.0  # after a failure the other ranks may wait on it in a collective forever
    try:
        while len(results) < world_size:
            ready = wait(list(readers), timeout=1.0)
            failures = []
            for reader in ready:
                rank = readers.pop(reader)
                try:
                    _, status, value = reader.recv()
                except EOFError:  # the rank is gone without a word: killed, out of memory
                    procs[rank].join(timeout=5)
                    failures.append(RankFailed(f"rank {rank} exited with code {procs[rank].exitcode} before "
                                               "returning a result"))
                    continue
                if status == "user":
                    failures.append(RankUserError(value))
                elif status == "error":
                    failures.append(RankFailed(f"rank {rank} failed:\n{value}"))
                else:
                    results[rank] = pickle.loads(value)
            if failures:  # a user error is the cause; the ranks that lost their peer to it follow
                raise next((f for f in failures if isinstance(f, UserError)), failures[0])
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
