"""Process lifetime and stop signals for every process of a run.

Slurm delivers SIGTERM and its time-limit warning (SIGUSR1) to every process of a job step, and
``scancel --signal`` or ``kill -- -PGID`` reach a whole process group: the trainer's ranks handle
them (checkpoint, then exit), so every helper process must survive them instead (they would
die, by default, in the middle of the work the ranks then need), and must die with its parent
instead of outliving a killed run.
"""

from __future__ import annotations

import contextlib
import os
import signal
from typing import Iterator

from megatron_prorl.sandbox.confine import set_parent_death_signal

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


def die_with_parent(parent_pid: int) -> None:
    """SIGKILL this process when its parent dies (Linux parent-death signal), and exit now if
    the parent is already gone (it may have died before the signal was armed)."""
    set_parent_death_signal(signal.SIGKILL)
    if os.getppid() != parent_pid:
        os._exit(1)


def ignore_stop_signals() -> None:
    """For helper processes: the run's stop signals are the ranks' to handle."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


@contextlib.contextmanager
def children_ignore_stop_signals() -> Iterator[None]:
    """Processes started in this block ignore the stop signals from their first instruction
    (an ignored disposition survives fork and exec); a stop signal that arrives meanwhile is
    held back and delivered to this process afterwards, not lost."""
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    handlers = {sig: signal.signal(sig, signal.SIG_IGN) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


def start_resource_tracker() -> None:
    """Start multiprocessing's resource tracker (shared by every process this one spawns)
    ignoring the stop signals: CPython's tracker ignores SIGINT and SIGTERM but not SIGUSR1,
    and once it is killed the semaphores it tracks leak and each child warns."""
    from multiprocessing import resource_tracker

    with children_ignore_stop_signals():
        resource_tracker.ensure_running()
