"""Shared test helpers live in tests/helpers/ (``from helpers.x import ...``): pytest puts this
conftest's directory, tests/, on sys.path."""

import pytest


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory):
    """An uninterrupted 3-step run of helpers.runs.write_config(): the yardstick for the resume,
    fault and layout tests."""
    from helpers.runs import run_ok, write_config

    tmp = tmp_path_factory.mktemp("ref")
    out = run_ok("train", write_config(tmp))
    return tmp / "run", out
