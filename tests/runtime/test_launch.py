"""megatron_prorl.runtime.launch.spawn: what comes back from N local ranks when they succeed, when one
makes a user error, when one fails, and when one dies without a word."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from megatron_prorl.errors import UserError
from megatron_prorl.runtime.launch import RankFailed, RankUserError, spawn


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


def test_a_rank_that_dies_without_a_word_is_reported_with_its_exit_code():
    with pytest.raises(RankFailed, match=f"rank 0 exited with code {-signal.SIGKILL} before returning a result"):
        spawn(_killed, 1)
