"""Shared test helpers live in tests/helpers/ (``from helpers.x import ...``): pytest puts this
conftest's directory, tests/, on sys.path."""
