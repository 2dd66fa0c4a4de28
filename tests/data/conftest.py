"""Shared fixtures for the data tests: the fixture-file directory and a small real tokenizer."""

from __future__ import annotations

from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent.parent / "fixtures" / "data"


@pytest.fixture(scope="session")
def fixtures() -> Path:
    return FIXTURES


@pytest.fixture(scope="session")
def tokenizer():
    """The project's byte tokenizer (the shipped tiny model's): one token per ASCII character,
    so prompt lengths in the tests are easy to reason about, and a chat template."""
    from megatron_prorl.tokenizer import build_byte_tokenizer

    return build_byte_tokenizer()
