"""The package's shape, read from its source: no import circle between modules (function-level
and TYPE_CHECKING imports included), packages in layers that import only downwards, config.py a
leaf. docs/architecture.md draws the same layers."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("megatron_prorl", "checkpoint_convert")

# Each part of megatron_prorl (a subpackage, or a module at its root) and its layer: a part may
# import only from lower layers (and checkpoint_convert, a package of its own below them all).
LAYERS = {
    "config": 0, "registry": 0, "builtin": 0, "tokenizer": 0, "plotting": 0,
    "errors": 1, "sandbox": 1,
    "plugins": 2, "runtime": 2, "algo": 2,
    "domains": 3, "models": 3,
    "data": 4, "rewards": 4, "rollout": 4, "weight_sync": 4,
    "train": 5, "eval": 5,
    "plan": 6,
    "cli": 7, "convert_cli": 7,
}


def modules(root: Path, packages=PACKAGES) -> dict[str, Path]:
    found = {}
    for package in packages:
        for path in (root / package).rglob("*.py"):
            name = ".".join(path.relative_to(root).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = path
    return found


def import_graph(root: Path = ROOT, packages=PACKAGES) -> dict[str, set[str]]:
    """Module -> the package modules it imports, anywhere in its source."""
    mods = modules(root, packages)
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in mods.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    here = name.split(".") if is_package else name.split(".")[:-1]
                    base = ".".join(here[:len(here) - node.level + 1] + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            else:
                continue
            for target in targets:
                while target and target not in mods:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in list(graph):
        if v not in index:
            visit(v)
    return out


def part(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "megatron_prorl" and len(parts) > 1 else None


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    wrong = []
    for a, targets in graph.items():
        for b in targets:
            pa, pb = part(a), part(b)
            if pa and pb and pa != pb and LAYERS[pa] <= LAYERS[pb]:
                wrong.append(f"{a} (layer {LAYERS[pa]}) imports {b} (layer {LAYERS[pb]})")
    return sorted(wrong)


def test_no_import_circle():
    assert cycles(import_graph()) == []


def test_parts_import_only_lower_layers():
    graph = import_graph()
    assert {part(m) for m in modules(ROOT) if part(m)} == set(LAYERS), "a new part: give it a layer here and in docs"
    assert upward_imports(graph) == []


def test_config_is_a_leaf_and_checkpoint_convert_stands_alone():
    graph = import_graph()
    assert graph["megatron_prorl.config"] == set()
    assert not [(a, b) for a, bs in graph.items() if a.startswith("checkpoint_convert")
                for b in bs if b.startswith("megatron_prorl")]


def test_the_scan_finds_circles_and_upward_imports(tmp_path):
    """Negative control: a function-level import that closes a circle, a TYPE_CHECKING one, and
    a part importing a higher layer are all reported."""
    pkg = tmp_path / "megatron_prorl"
    (pkg / "data").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "data" / "__init__.py").write_text("")
    (pkg / "config.py").write_text("def f():\n    from megatron_prorl.data import loader\n")
    (pkg / "data" / "loader.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from megatron_prorl.data import heldout\n"
        "from megatron_prorl import config\n")
    (pkg / "data" / "heldout.py").write_text("from .loader import Source\n")
    graph = import_graph(tmp_path, ("megatron_prorl",))
    assert sorted(map(tuple, cycles(graph))) == [
        ("megatron_prorl.config", "megatron_prorl.data.heldout", "megatron_prorl.data.loader")]
    assert upward_imports(graph) == ["megatron_prorl.config (layer 0) imports megatron_prorl.data.loader (layer 4)"]


@pytest.mark.parametrize("name", ["docs/architecture.md"])
def test_the_architecture_doc_lists_every_part(name):
    text = (ROOT / name).read_text()
    missing = [p for p in LAYERS if f"{p}" not in text]
    assert missing == []
