"""One name -> thing table type for every pluggable part: rollout engines, reward domains
(verifiers), data formats, problem generators, advantage estimators, policy losses and KL
estimators.

The config names an entry (``rollout.engine: transformers``, ``algo.advantage: grpo``) and
validation asks the registry whether it exists, so an entry a user registers before the config
is validated is accepted like a built-in one. An entry may be given as ``"module:attribute"``
and is then imported on first use (keeps GPU-only engines and heavy verifiers out of start-up).
Registering a taken name is an error unless ``replace=True`` is asked for: a typo or a second
import never silently replaces a built-in.
"""

from __future__ import annotations

import importlib
from typing import Generic, Iterator, Mapping, Optional, TypeVar, Union

T = TypeVar("T")


class UnknownNameError(KeyError, ValueError):
    """A name not in a registry. Both a KeyError (lookup) and a ValueError (bad config value)."""

    def __str__(self) -> str:  # KeyError would otherwise print the message in quotes
        return str(self.args[0])


class Registry(Generic[T]):
    def __init__(self, kind: str, entries: Optional[Mapping[str, Union[T, str]]] = None) -> None:
        self.kind = kind
        self._entries: dict[str, Union[T, str]] = {}
        self._builtin: frozenset[str] = frozenset()
        for name, entry in (entries or {}).items():
            self.register(name, entry)
        self._builtin = frozenset(self._entries)

    def register(self, name: str, entry: Union[T, str, None] = None, *, replace: bool = False):
        """Add ``entry`` (an object, or ``"module:attribute"`` imported on first use) under
        ``name``. Without ``entry``, a decorator: ``@ADVANTAGES.register("rloo")``."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"{self.kind} name must be a non-empty string, got {name!r}")
        if entry is None:
            return lambda obj: self.register(name, obj, replace=replace)
        if name in self._entries and not replace:
            raise ValueError(f"{self.kind} {name!r} is already registered ({_describe(self._entries[name])}); "
                             "pass replace=True to replace it")
        self._entries[name] = entry
        return entry

    def get(self, name: str) -> T:
        try:
            entry = self._entries[name]
        except KeyError:
            raise UnknownNameError(f"unknown {self.kind} {name!r}; known: {', '.join(self.names())}") from None
        if isinstance(entry, str):
            entry = self._entries[name] = resolve(entry)
        return entry

    def names(self) -> tuple[str, ...]:
        return tuple(sorted(self._entries))

    def added(self) -> dict[str, T]:
        """Entries registered after the built-ins (e.g. to hand to worker processes)."""
        return {name: self.get(name) for name in self._entries if name not in self._builtin}

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


def resolve(ref: str):
    """The object a ``"module:attribute"`` reference names (importing the module)."""
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


def _describe(entry) -> str:
    return entry if isinstance(entry, str) else getattr(entry, "__qualname__", type(entry).__name__)

