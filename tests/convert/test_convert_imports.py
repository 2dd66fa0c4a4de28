"""checkpoint_convert is the lower layer: it imports nothing from megatron_prorl."""

from __future__ import annotations

import ast
from pathlib import Path

import checkpoint_convert

PACKAGE = Path(checkpoint_convert.__file__).parent


def imports_of(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def upward_imports(package: Path = PACKAGE) -> list[str]:
    return sorted(f"{path.relative_to(package.parent)}: {name}" for path in package.rglob("*.py")
                  for name in imports_of(path) if name.split(".")[0] == "megatron_prorl")


def test_checkpoint_convert_imports_nothing_from_megatron_prorl():
    assert upward_imports() == []


def test_the_scan_sees_an_upward_import(tmp_path):
    """Negative control: a late (function-level) import is found too."""
    pkg = tmp_path / "checkpoint_convert"
    pkg.mkdir()
    (pkg / "bad.py").write_text("def f():\n    from megatron_prorl.config import ConfigError\n")
    assert upward_imports(pkg) == ["checkpoint_convert/bad.py: megatron_prorl.config"]
