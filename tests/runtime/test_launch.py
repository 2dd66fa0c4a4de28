"""megatron_prorl.runtime.launch.spawn: what comes back from N local ranks when they succeed, when one
makes a user error, when one fails, and when one dies without a word."""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import psutil
import pytest

from megatron_prorl.errors import UserError
from megatron_prorl.runtime.launch import RankFailed, RankLost, RankUserError, spawn


def _rank_and_world() -> tuple[int, int]:
    return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])


def _user_error_then_a_lost_peer(marker: str) -> None:
    """Rank 0 stops on a user error; rank 1 fails after it, as a rank whose peer is gone does."""
    if os.environ["RANK"] == "0":
        Path(marker).touch()
        raise UserError("data.train[0].path: no such file")
    while not Path(marker).exists():
        time.sleep(0.01)
    time.sleep(0.5)
    raise RuntimeError("Connection closed by peer")


def _internal_error_on_rank_1() -> None:
    if os.environ["RANK"] == "1":
        raise ValueError("a bug in rank 1")


def _killed() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def test_each_rank_returns_its_result_in_rank_order():
    assert spawn(_rank_and_world, 3) == [(0, 3), (1, 3), (2, 3)]


def test_a_user_error_is_the_cause_not_the_ranks_that_lost_their_peer_to_it(tmp_path, capfd):
    with pytest.raises(RankUserError, match=r"^data.train\[0\].path: no such file$"):
        spawn(_user_error_then_a_lost_peer, 2, str(tmp_path / "marker"))
    assert "Traceback" not in capfd.readouterr().err  # the rank that lost its peer prints nothing


def test_an_internal_error_names_the_rank_and_carries_its_traceback_once(capfd):
    with pytest.raises(RankFailed, match="rank 1 failed") as info:
        spawn(_internal_error_on_rank_1, 2)
    assert "Traceback" in str(info.value) and "ValueError: a bug in rank 1" in str(info.value)
    assert "Traceback" not in capfd.readouterr().err  # shown by whoever reports it, not twice


def _stopped_on_rank_1() -> None:
    """Rank 1 freezes (as SIGSTOP, a hung node or a debugger does) after its first heartbeats;
    rank 0 goes on working, as a rank waiting on a collective would."""
    if os.environ["RANK"] == "1":
        time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGSTOP)
    time.sleep(300)


def test_a_rank_that_dies_without_a_word_is_one_line_naming_it_and_the_signal():
    with pytest.raises(RankLost, match=r"^rank 0 \(pid \d+\) was killed by SIGKILL before returning a result "
                                       r"\(out of memory, or kill -9\?\)$"):
        spawn(_killed, 1)


def test_a_rank_that_stops_is_named_within_the_heartbeat_timeout():
    started = time.monotonic()
    with pytest.raises(RankLost, match=r"^rank 1 \(pid (\d+)\) has shown no sign of life for 3 s") as info:
        spawn(_stopped_on_rank_1, 2, heartbeat_timeout=3)
    assert time.monotonic() - started < 60, "the launcher must not wait for the other rank"
    pid = int(re.search(r"pid (\d+)", str(info.value)).group(1))
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_a_rank_is_timed_from_its_first_heartbeat_not_from_its_start():
    """Starting a rank (a Python interpreter importing torch) takes longer than this timeout:
    a rank that has not run our code yet is not taken for a stopped one."""
    assert spawn(_rank_and_world, 2, heartbeat_timeout=2) == [(0, 2), (1, 2)]
