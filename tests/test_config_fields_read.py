"""Every config field is read by the code: a knob that nothing reads misleads its users.

A static scan (the GPU-only paths never run here, so a run cannot tell): for each module of
the package other than config.py (validating a field is not using it), find the names bound to
a config section (``r = cfg.rollout``, a parameter annotated ``RolloutConfig``, ``self.cfg``,
a loop over ``cfg.data.train``...) and collect the fields read through them or through a
section attribute (``cfg.rollout.n``, ``self.cfg.algo.kl_beta``).
"""

from __future__ import annotations

import ast
import dataclasses
import typing
from pathlib import Path


from megatron_prorl import config as C

PACKAGE = Path(C.__file__).parent


def config_classes() -> dict[str, type]:
    """Class name -> dataclass for every config dataclass reachable from ProRLConfig."""
    found: dict[str, type] = {}

    def visit(cls):
        found[cls.__name__] = cls
        for hint in typing.get_type_hints(cls).values():
            for arg in (hint, *typing.get_args(hint)):
                if dataclasses.is_dataclass(arg) and arg.__name__ not in found:
                    visit(arg)

    visit(C.ProRLConfig)
    return found


CLASSES = config_classes()
# attribute name of a section -> its class (cfg.rollout -> RolloutConfig); list fields give their items.
SECTIONS = {f.name: f.type for f in dataclasses.fields(C.ProRLConfig)}
ITEMS = {"train": "DataSourceConfig", "val": "DataSourceConfig", "stages": "StageConfig"}


def _annotation_class(node) -> str | None:
    if node is None:
        return None
    text = node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else ast.unparse(node)
    for name in CLASSES:
        if name in text.replace("'", "").replace('"', "").replace("[", " ").replace("]", " ").split():
            return name
    return None


def _key(node) -> str | None:
    """A hashable name for a Name or a self.attribute."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
        return f"{node.value.id}.{node.attr}"
    return None


def reads_in(tree: ast.AST) -> set[tuple[str, str]]:
    bound: dict[str, str] = {}  # name or self.attr -> config class name

    def class_of(node) -> str | None:
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) in CLASSES:
            return node.func.id
        if isinstance(node, ast.BoolOp):
            return next(filter(None, map(class_of, node.values)), None)
        if isinstance(node, ast.IfExp):
            return class_of(node.body) or class_of(node.orelse)
        if isinstance(node, ast.Attribute):
            if node.attr in SECTIONS:
                return SECTIONS[node.attr]
            if node.attr == "cfg" or node.attr == "config":
                return bound.get(_key(node) or "", None)
        key = _key(node)
        return bound.get(key) if key else None

    def bind(target, value):
        if isinstance(target, ast.Tuple) and isinstance(value, ast.Tuple):
            for t, v in zip(target.elts, value.elts):
                bind(t, v)
            return
        key, cls = _key(target), class_of(value)
        if key and isinstance(value, ast.Attribute) and value.attr in ITEMS:
            cls = f"list:{ITEMS[value.attr]}"  # cfg.trainer.stages: a list of StageConfig
        if key and cls:
            bound[key] = cls

    # Bindings first (two passes: a binding may come from another binding).
    for _ in range(2):
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for arg in node.args.args + node.args.kwonlyargs + node.args.posonlyargs:
                    cls = _annotation_class(arg.annotation)
                    if cls:
                        bound[arg.arg] = cls
            elif isinstance(node, ast.Assign):
                for target in node.targets:
                    bind(target, node.value)
            elif isinstance(node, ast.AnnAssign):
                cls = _annotation_class(node.annotation)
                if cls and _key(node.target):
                    bound[_key(node.target)] = cls
                    bound[f"self.{_key(node.target)}"] = cls  # a dataclass field
            elif isinstance(node, (ast.For, ast.comprehension)):
                it = node.iter
                if isinstance(it, ast.Call) and getattr(it.func, "id", "") == "enumerate" and it.args:
                    it, target = it.args[0], node.target.elts[1] if isinstance(node.target, ast.Tuple) else None
                else:
                    target = node.target
                item = (ITEMS.get(it.attr) if isinstance(it, ast.Attribute)
                        else bound.get(_key(it) or "", "").removeprefix("list:") or None)
                if item in CLASSES and target is not None and _key(target):
                    bound[_key(target)] = item
    reads = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            cls = class_of(node.value)
            if cls:
                reads.add((cls, node.attr))
        elif isinstance(node, ast.Call) and getattr(node.func, "id", "") == "getattr" and len(node.args) >= 2:
            cls, name = class_of(node.args[0]), node.args[1]
            if cls and isinstance(name, ast.Constant):
                reads.add((cls, name.value))
    return reads


# Checking a value is not using it: config.py's field checks and every part's check_config (the
# functions train/validate.py composes) do not count as reads.
VALIDATION = {"check_fields", "check_config", "check_world_size", "choice", "at_least", "load_config"}


def _without_validation(tree: ast.Module) -> ast.Module:
    tree.body = [n for n in tree.body if not (isinstance(n, ast.FunctionDef) and n.name in VALIDATION)]
    return tree


def unread_fields() -> list[str]:
    reads: set[tuple[str, str]] = set()
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text(), str(path))
        reads |= reads_in(_without_validation(tree))
    read_sections = {SECTIONS[s] for s in SECTIONS} | set(ITEMS.values())
    unread = []
    for name, cls in CLASSES.items():
        if name == "ProRLConfig":
            continue
        for f in dataclasses.fields(cls):
            if dataclasses.is_dataclass(f.type) or (name, f.name) in reads:
                continue
            if f.name in ("train", "val", "stages"):  # containers, read item by item
                continue
            unread.append(f"{name}.{f.name}")
    assert read_sections  # every section is reachable
    return sorted(unread)


def test_every_config_field_is_read():
    assert unread_fields() == []


def test_scan_sees_an_unread_field(tmp_path, monkeypatch):
    """Negative control: a field the code never reads is reported."""

    @dataclasses.dataclass
    class Probe(C.RolloutConfig):
        never_read_anywhere: int = 0

    monkeypatch.setitem(CLASSES, "RolloutConfig", Probe)
    assert "RolloutConfig.never_read_anywhere" in unread_fields()


if __name__ == "__main__":  # pragma: no cover
    print("\n".join(unread_fields()))
