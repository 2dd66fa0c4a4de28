"""A task domain a user adds with one call (tests/helpers/toy_plugin.py: register_domain) works
everywhere a built-in one does: in data rows, `prorl data prepare --source`, the reward pool's
workers, `prorl train` on the tiny model, and `prorl eval`'s report."""

from __future__ import annotations

import json
import os

import pytest

from helpers.runs import ROOT, records, run_ok, write_config
from megatron_prorl import domains
from megatron_prorl.config import DataSourceConfig, RewardsConfig
from megatron_prorl.data import load_source
from megatron_prorl.rewards import RewardPool

PLUGIN_ENV = {"PRORL_PLUGINS": "helpers.toy_plugin",
              "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "tests"), os.environ.get("PYTHONPATH")]))}


@pytest.fixture
def parity(monkeypatch):
    """The plugin registered in this process, and gone with the test."""
    monkeypatch.setattr(domains.DOMAINS, "_entries", dict(domains.DOMAINS._entries))
    monkeypatch.delitem(__import__("sys").modules, "helpers.toy_plugin", raising=False)
    import helpers.toy_plugin  # noqa: F401  (registers "parity")

    return domains.get("parity")


def parity_rows(path, n=16):
    rows = [{"prompt": f"What is {a}+{a + 7}?", "domain": "parity", "ground_truth": str(2 * a + 7), "id": str(a)}
            for a in range(10, 10 + n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_a_domain_registered_with_one_call_is_valid_in_rows_and_scored_by_the_pool(parity, tmp_path):
    source = load_source(DataSourceConfig(path=str(parity_rows(tmp_path / "p.jsonl", 2))))
    assert [(r.domain, r.ground_truth) for r in source.rows] == [("parity", "27"), ("parity", "29")]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "x", "domain": "parity", "ground_truth": "seven"}) + "\n")
    with pytest.warns(UserWarning, match="parity ground_truth must be an integer string"), \
            pytest.raises(ValueError, match="no usable rows"):
        load_source(DataSourceConfig(path=str(bad)))
    with RewardPool(RewardsConfig(), num_workers=1) as pool:  # the workers learn of "parity" from the pool
        results = pool.map([("parity", "\\boxed{3}", "27"), ("parity", "\\boxed{4}", "27"), ("parity", "no box", "1")])
    assert [r.reward for r in results] == [1.0, 0.0, 0.0]
    assert results[2].reason == "no integer in \\boxed{}"


def test_prepare_train_and_eval_take_the_domain_from_a_plugin(tmp_path):
    rows = parity_rows(tmp_path / "parity_src.jsonl")
    cfg = write_config(tmp_path, data__train=[{"path": str(tmp_path / "data" / "parity.jsonl")}],
                       trainer__stages=[{"name": "main", "steps": 2}], checkpoint__every=0, reset__every_n_steps=0)

    out = run_ok("data", "prepare", "--out", tmp_path / "data", "--source", f"parity={rows}", "--only", "parity",
                 "--config", cfg, "--logic-val-size", "2", env=PLUGIN_ENV)
    prepared = [json.loads(line) for line in (tmp_path / "data" / "parity.jsonl").read_text().splitlines()]
    # Sums that the config's validation additions also ask are held out of training.
    assert f"parity.jsonl: parity_src.jsonl[parity]: {len(prepared)} rows" in out and len(prepared) >= 12
    assert {r["domain"] for r in prepared} == {"parity"}

    run_ok("train", cfg, env=PLUGIN_ENV)
    steps = records(tmp_path / "run")
    assert [r["step"] for r in steps] == [1, 2]
    assert all("reward/parity" in r for r in steps), sorted(steps[0])

    run_ok("eval", "--model", "builtin:tiny", "--data", rows, "--samples", "2", "--k", "1,2",
           "--max-new-tokens", "12", "--out", tmp_path / "eval", env=PLUGIN_ENV)
    summary = (tmp_path / "eval" / "summary.md").read_text()
    assert "### Parity of sums (pass@1, %)" in summary
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    bench = next(iter(results["sources"].values()))
    assert bench["domain"] == "parity" and "majority@k" in bench


def test_without_the_plugin_the_domain_is_refused_in_one_line(tmp_path):
    rows = parity_rows(tmp_path / "parity_src.jsonl")
    from helpers.runs import prorl

    proc = prorl("train", write_config(tmp_path, data__train=[{"path": str(rows), "domain": "parity"}]))
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 2 and "data.train[0].domain='parity': expected one of" in out
    proc = prorl("train", "x.yaml", env={"PRORL_PLUGINS": "no_such_plugin_module"})
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 2
    assert out.strip() == ("prorl: error: plugin PRORL_PLUGINS: no_such_plugin_module: ModuleNotFoundError: "
                           "No module named 'no_such_plugin_module'")
