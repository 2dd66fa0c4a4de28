"""Evaluation stands apart from training: no module of megatron_prorl/eval/ reaches
megatron_prorl.train, directly or through the modules it imports (function-level imports
included), nor names one in a lazy "module:attr" registry entry. What both need (generating and
decoding groups, the chart style) lives below both: rollout/generate.py, plotting.py."""

from __future__ import annotations

import ast
from pathlib import Path

from test_architecture import ROOT, import_graph, modules

TRAIN = "megatron_prorl.train"


def is_train(module: str) -> bool:
    return module == TRAIN or module.startswith(TRAIN + ".")


def eval_modules(root: Path) -> dict[str, Path]:
    return {m: p for m, p in modules(root, ("megatron_prorl",)).items()
            if m == "megatron_prorl.eval" or m.startswith("megatron_prorl.eval.")}


def train_reached(root: Path) -> dict[str, list[str]]:
    """Each train module reachable from eval, with the import chain that gets there."""
    graph = import_graph(root, ("megatron_prorl",))
    chains = {m: [m] for m in eval_modules(root)}
    todo = list(chains)
    while todo:
        module = todo.pop()
        for target in sorted(graph.get(module, ())):
            if target not in chains:
                chains[target] = chains[module] + [target]
                todo.append(target)
    return {m: chain for m, chain in chains.items() if is_train(m)}


def lazy_train_entries(root: Path) -> list[str]:
    """"megatron_prorl.train...[:attr]" strings in eval's source (lazy registry entries)."""
    return sorted(f"{m}: {node.value}" for m, path in eval_modules(root).items()
                  for node in ast.walk(ast.parse(path.read_text()))
                  if isinstance(node, ast.Constant) and isinstance(node.value, str)
                  and is_train(node.value.split(":")[0]))


def test_eval_reaches_no_training_module():
    assert len(eval_modules(ROOT)) >= 9  # the scan sees the package (cli, run, report, compare, ...)
    assert train_reached(ROOT) == {}
    assert lazy_train_entries(ROOT) == []


def test_the_scan_finds_direct_indirect_and_lazy_uses_of_train(tmp_path):
    """Negative control: eval -> a helper -> train (inside a function), eval importing train
    directly, and a registry string naming a train module are all reported."""
    pkg = tmp_path / "megatron_prorl"
    for folder in ("eval", "train"):
        (pkg / folder).mkdir(parents=True)
        (pkg / folder / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "train" / "experience.py").write_text("")
    (pkg / "train" / "plot.py").write_text("STYLE = {}\n")
    (pkg / "helper.py").write_text("def f():\n    import megatron_prorl.train.experience\n")
    (pkg / "eval" / "run.py").write_text("from megatron_prorl.helper import f\n")
    (pkg / "eval" / "report.py").write_text("def draw():\n    from megatron_prorl.train.plot import STYLE\n")
    (pkg / "eval" / "engines.py").write_text("ENTRIES = {'x': 'megatron_prorl.train.trainer:Trainer'}\n")
    reached = train_reached(tmp_path)
    assert reached["megatron_prorl.train.experience"][-3:] == [
        "megatron_prorl.eval.run", "megatron_prorl.helper", "megatron_prorl.train.experience"]
    assert reached["megatron_prorl.train.plot"] == ["megatron_prorl.eval.report", "megatron_prorl.train.plot"]
    assert lazy_train_entries(tmp_path) == ["megatron_prorl.eval.engines: megatron_prorl.train.trainer:Trainer"]
