"""A user's own parts (task domains, engines, estimators, data formats), registered in every
process of a command: ``prorl train``'s ranks, ``prorl eval``, ``prorl data prepare``.

A plugin is a module whose import registers things (``register_domain(...)``,
``register_engine(...)``, ``@register_advantage``...). The commands import, before they read
their input:

- the modules named in ``PRORL_PLUGINS`` (comma-separated, importable from ``sys.path``; the
  variable reaches ranks started by the command itself, torchrun and srun alike);
- the entry points of installed packages in the ``megatron_prorl.plugins`` group.

Reward workers need nothing more: the pool hands them the registered domains.
"""

from __future__ import annotations

import importlib
import os
from importlib.metadata import entry_points

from megatron_prorl.errors import UserError

ENV = "PRORL_PLUGINS"
GROUP = "megatron_prorl.plugins"
_loaded: set[str] = set()


def load_plugins() -> list[str]:
    """Import every plugin not imported yet; the names imported. A module that fails to import
    is a one-line error naming it."""
    names = [n.strip() for n in os.environ.get(ENV, "").split(",") if n.strip()]
    found = [(f"{ENV}: {n}", n, lambda n=n: importlib.import_module(n)) for n in names]
    found += [(f"entry point {ep.name} ({ep.value}) of group {GROUP}", ep.value, ep.load)
              for ep in entry_points(group=GROUP)]
    done = []
    for what, key, load in found:
        if key in _loaded:
            continue
        try:
            load()
        except Exception as exc:
            raise UserError(f"plugin {what}: {type(exc).__name__}: {exc}") from exc
        _loaded.add(key)
        done.append(key)
    return done
