"""One run per output directory: an advisory lock on ``OUTPUT_DIR/.prorl.lock``, held for the
whole run by the process that started it.

Two runs on one directory would crash on each other's temporary checkpoints, interleave their
metrics and replace each other's config. The lock is ``flock``: the kernel releases it when its
holder dies, however it died, so a lock found free but naming another process was left by a run
that is gone (killed), and is taken over with a warning. The file names the holder (pid, host,
start time, command) for the refusal message.

A clean exit (finished, stopped by a signal, an error) removes the file, and the directories the
lock created if nothing else was written into them: a run that never started leaves nothing.
The file is unlinked while still locked, so a process that opened it just before locks a file no
longer in the directory: :meth:`RunLock.acquire` sees that and locks the path's new file instead.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import socket
import sys
import time
from pathlib import Path
from typing import Optional

from megatron_prorl.errors import UserError

LOCK_FILE = ".prorl.lock"

log = logging.getLogger(__name__)


class RunDirectoryInUse(UserError):
    """Another live run holds the output directory."""


def check_output_dir(path: os.PathLike, setting: str) -> None:
    """Raise :class:`UserError` if ``path`` cannot become a directory because it, or a folder
    above it, is a file; creates nothing (``setting`` names where the path came from)."""
    for part in (Path(path), *Path(path).parents):
        if part.exists():
            if not part.is_dir():
                raise UserError(f"{setting}={path}: {part} is a file, not a directory")
            return


def make_output_dir(path: os.PathLike, setting: str) -> Path:
    """Create the output directory ``path`` (and its parents); a file in the way or a folder
    that cannot be written is a :class:`UserError` naming ``setting``."""
    check_output_dir(path, setting)
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{setting}={path}: cannot create the directory ({exc.strerror or exc})") from None
    return Path(path)


class RunLock:
    """``setting``: the option that chose the directory (for the messages)."""

    def __init__(self, run_dir: os.PathLike, setting: str = "trainer.output_dir"):
        self.path = Path(run_dir) / LOCK_FILE
        self.setting = setting
        self._fd: Optional[int] = None
        self._created: list[Path] = []  # directories made for the lock, outermost first

    def acquire(self) -> None:
        """Take the lock or raise :class:`RunDirectoryInUse` naming its holder."""
        self._created = []
        while True:
            self._created += [d for d in reversed(self.path.parents) if not d.exists() and d not in self._created]
            make_output_dir(self.path.parent, self.setting)  # again: a releasing run may have removed it
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except FileNotFoundError:
                continue
            self._lock(fd)
            if _still_at(fd, self.path):
                break
            os.close(fd)  # locked a file its holder removed on release: lock the path's new one
        previous = _read(fd)
        if previous and previous.get("pid") != os.getpid():
            log.warning("%s: taking over the lock of %s, which is gone", self.path.parent, _describe(previous))
        record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                  "command": " ".join(sys.argv)}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        self._fd = fd

    def _lock(self, fd: int) -> None:
        """flock ``fd``, or raise :class:`RunDirectoryInUse` (a file system without locks: warned)."""
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _describe(_read(fd))
            os.close(fd)
            self._remove_created()
            raise RunDirectoryInUse(f"{self.path.parent} is in use by {holder} ({self.path}); stop that run or "
                                    f"set another {self.setting}") from None
        except OSError as exc:
            if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
                os.close(fd)
                raise
            log.warning("%s: this file system has no file locks; nothing prevents a second run on this "
                        "directory", self.path.parent)

    def release(self) -> None:
        """Remove the file (still locked, see the module doc), unlock, and remove the directories
        the lock created if they are empty."""
        if self._fd is not None:
            with contextlib.suppress(FileNotFoundError):
                if _still_at(self._fd, self.path):
                    self.path.unlink()
            os.close(self._fd)  # the lock goes with the descriptor
            self._fd = None
            self._remove_created()

    def _remove_created(self) -> None:
        for directory in reversed(self._created):
            try:
                directory.rmdir()
            except OSError:  # the run wrote into it (or someone else did): keep it
                break
        self._created = []

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _still_at(fd: int, path: Path) -> bool:
    """Whether ``path`` still names the file open as ``fd``."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)


def _read(fd: int) -> dict:
    try:
        return json.loads(os.pread(fd, 4096, 0) or b"{}")
    except ValueError:
        return {}


def _describe(record: dict) -> str:
    if not record:
        return "another process"
    return (f"pid {record.get('pid')} on host {record.get('host')} (started {record.get('started')}: "
            f"{record.get('command')})")
