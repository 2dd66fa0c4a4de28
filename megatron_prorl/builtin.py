"""Files shipped inside the package, named ``builtin:RELATIVE/PATH`` in configs (e.g. the tiny
default model ``builtin:tiny`` and its held-out set ``builtin:tiny/heldout.jsonl``)."""

from __future__ import annotations

from pathlib import Path

ASSETS = Path(__file__).resolve().parent / "assets"
PREFIX = "builtin:"


class BuiltinNotFound(FileNotFoundError):
    """``builtin:NAME`` names nothing shipped; the message lists what is (not the package's paths)."""


def resolve(path: str) -> Path:
    """The file or directory ``builtin:RELATIVE/PATH`` names (checked), or ``path`` itself."""
    if not path.startswith(PREFIX):
        return Path(path)
    name = path[len(PREFIX):]
    resolved = ASSETS / name
    if not resolved.exists() or not name:
        model, _, rest = name.partition("/")
        models = sorted(p.name for p in ASSETS.iterdir() if p.is_dir())
        if model not in models:
            raise BuiltinNotFound(f"no built-in model {model!r} (known: {', '.join(models)})")
        files = sorted(p.name for p in (ASSETS / model).iterdir())
        raise BuiltinNotFound(f"no built-in file {name!r} ({model} has: {', '.join(files)})")
    return resolved
