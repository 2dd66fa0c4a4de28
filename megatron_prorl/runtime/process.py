"""Process lifetime and stop signals for every process of a run.

Slurm delivers SIGTERM and its time-limit warning (SIGUSR1) to every process of a job step,
``scancel --signal`` or ``kill -- -PGID`` reach a whole process group, and so does Ctrl-C at a
terminal (SIGINT, to the foreground process group): the trainer's ranks handle them (finish the
step, checkpoint, then exit), so every helper process must survive them instead (they would
die, by default, in the middle of the work the ranks then need), and must die with its parent
instead of outliving a killed run.

A second Ctrl-C means "now": the process that owns the terminal's interrupt (the one command
process: ``prorl train`` itself, or the launcher of its local ranks) then dies of SIGINT at once,
without a traceback; its ranks and helpers die with it (parent-death signal). A half-written
checkpoint is under a hidden name and removed at the next start, as after kill -9.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from typing import Iterator

from megatron_prorl.sandbox.confine import set_parent_death_signal

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)

log = logging.getLogger(__name__)
_received = 0  # the first stop signal this process got (0: none yet)


def catch_stop_signals(second_interrupt_kills: bool) -> None:
    """Record the stop signals from now on (:func:`stop_signal`), delivering one that arrived
    while they were blocked (:func:`children_block_stop_signals`). ``second_interrupt_kills``:
    after the first stop signal, SIGINT gets its default action, so a second Ctrl-C ends this
    process at once (false in a rank of a local launcher, which gets every Ctrl-C twice, from
    the terminal and forwarded, and whose launcher owns the second one)."""

    def handle(signum, frame):
        global _received
        if second_interrupt_kills and signum == signal.SIGINT:
            second_interrupt_kills_now()
        if not _received:
            _received = signum
            log.warning("received %s: will checkpoint after this step and exit%s", signal.Signals(signum).name,
                        " (Ctrl-C again: stop at once)" if second_interrupt_kills else "")

    for sig in STOP_SIGNALS:
        signal.signal(sig, handle)
    if second_interrupt_kills:
        one_shot(signal.SIGINT)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


def stop_signal() -> int:
    """The first stop signal received since :func:`catch_stop_signals` (0: none)."""
    return _received


@contextlib.contextmanager
def interrupt_once() -> Iterator[None]:
    """In this block Ctrl-C raises KeyboardInterrupt (for a command to unwind and say one line);
    a second one, during the unwinding or after it, ends the process at once. The handler before
    it is back afterwards unless Ctrl-C was pressed."""

    def handle(signum, frame):
        second_interrupt_kills_now()
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, handle)
    one_shot(signal.SIGINT)
    try:
        yield
    finally:
        if signal.getsignal(signal.SIGINT) is handle:
            signal.signal(signal.SIGINT, previous)


def second_interrupt_kills_now() -> None:
    """From now on Ctrl-C ends this process at once (its default action)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def one_shot(signum: int) -> None:
    """Make the handler installed for ``signum`` one-shot in the kernel (sigaction's
    SA_RESETHAND): the signal's default action is back the moment the first one is delivered,
    not when Python gets round to running its handler, which waits while the main thread is in
    a long C call (a checkpoint write, a collective) and meanwhile swallows a second Ctrl-C.
    Where libc's sigaction cannot be reached, the Python handler does it, later."""
    import ctypes

    class Sigaction(ctypes.Structure):  # glibc's and musl's struct sigaction (Linux, 64-bit)
        _fields_ = [("handler", ctypes.c_void_p), ("mask", ctypes.c_ulong * 16), ("flags", ctypes.c_uint),
                    ("restorer", ctypes.c_void_p)]

    sa_resethand = 0x80000000
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        action = Sigaction()
        if libc.sigaction(signum, None, ctypes.byref(action)) == 0:
            action.flags |= sa_resethand
            libc.sigaction(signum, ctypes.byref(action), None)
    except (OSError, AttributeError):
        pass


def die_with_parent(parent_pid: int) -> None:
    """SIGKILL this process when its parent dies (Linux parent-death signal), and exit now if
    the parent is already gone (it may have died before the signal was armed)."""
    set_parent_death_signal(signal.SIGKILL)
    if os.getppid() != parent_pid:
        os._exit(1)


def ignore_stop_signals() -> None:
    """For helper processes: the run's stop signals are the ranks' to handle. One held back
    while they were blocked (:func:`children_block_stop_signals`) is discarded."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


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


@contextlib.contextmanager
def children_block_stop_signals() -> Iterator[None]:
    """Processes started in this block start with the stop signals blocked (the mask survives
    fork and exec): one that arrives before the child can handle it stays pending until the
    child's :func:`catch_stop_signals` (or an explicit unblock) delivers it. This process's own
    mask is restored afterwards, delivering what it held back."""
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


def start_resource_tracker() -> None:
    """Start multiprocessing's resource tracker (shared by every process this one spawns)
    ignoring the stop signals: CPython's tracker ignores SIGINT and SIGTERM but not SIGUSR1,
    and once it is killed the semaphores it tracks leak and each child warns."""
    from multiprocessing import resource_tracker

    with children_ignore_stop_signals():
        resource_tracker.ensure_running()
