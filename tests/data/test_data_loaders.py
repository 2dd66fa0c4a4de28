"""Loaders: every file kind (JSON Lines, JSON array, Parquet, saved datasets directories),
exact round trips of the prorl format, and load_data's seeding, held-out val and length limit."""

from __future__ import annotations

import json
import warnings

import datasets
import pyarrow.parquet as pq
import pytest

from megatron_prorl.config import ConfigError, DataConfig, DataSourceConfig
from megatron_prorl.train.validate import load_run_config
from megatron_prorl.data import load_data, load_source, save_rows
from megatron_prorl.data.prompts import prompt_lengths
from megatron_prorl.data.schema import Row


def rows_of(path, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_source(DataSourceConfig(path=str(path), **kw)).rows


@pytest.fixture(scope="module")
def prorl_rows(fixtures):
    return rows_of(fixtures / "prorl.jsonl")


@pytest.mark.parametrize("name", ["out.jsonl", "out.parquet", "saved_dir"])
def test_prorl_round_trip_is_exact(prorl_rows, tmp_path, name):
    save_rows(prorl_rows, tmp_path / name)
    assert rows_of(tmp_path / name) == prorl_rows  # every domain, logic entries with their tuples


def test_rearc_entry_survives_a_file_and_still_scores(tmp_path):
    # rearc's scorer compares tuple grids: a plain JSON round trip would score a correct answer 0.05.
    import reasoning_gym

    rows = rows_of("reasoning_gym:rearc", size=2)
    save_rows(rows, tmp_path / "rearc.parquet")
    score = reasoning_gym.get_score_answer_fn("rearc")
    for row in rows_of(tmp_path / "rearc.parquet"):
        entry = row.ground_truth["entry"]
        assert score(entry["answer"], entry) == 1.0


@pytest.mark.parametrize("name", ["out.jsonl", "out.parquet"])
def test_fractions_in_an_entry_survive_a_file(tmp_path, name):
    # gsm_symbolic keeps fractions.Fraction values in its metadata, which plain JSON cannot store.
    from fractions import Fraction

    entry = {"question": "q", "answer": "3", "metadata": {"variables": {"initial_fraction": Fraction(2, 3)}}}
    rows = [Row("q", "logic", {"task": "gsm_symbolic", "entry": entry})]
    save_rows(rows, tmp_path / name)
    loaded = rows_of(tmp_path / name)[0].ground_truth["entry"]["metadata"]["variables"]["initial_fraction"]
    assert loaded == Fraction(2, 3) and isinstance(loaded, Fraction)


def test_public_format_from_saved_dataset_dict(fixtures, tmp_path):
    # The rows through pyarrow: the fixture's datasets metadata is datasets 5's, which datasets 3.x
    # (the image lane's) cannot read (see megatron_prorl/data/readers.py).
    eurus = datasets.Dataset.from_list(pq.read_table(fixtures / "eurus2.parquet").to_pylist())
    datasets.DatasetDict({"train": eurus, "validation": eurus.select([0, 1])}).save_to_disk(str(tmp_path / "eurus"))
    assert rows_of(tmp_path / "eurus", format="eurus2", split="train") == rows_of(fixtures / "eurus2.parquet",
                                                                                  format="eurus2")
    assert len(rows_of(tmp_path / "eurus", format="eurus2", split="validation")) == 2
    with pytest.raises(ValueError, match=r"splits \['train', 'validation'\]; set the source's 'split'"):
        rows_of(tmp_path / "eurus", format="eurus2")
    with pytest.raises(ValueError, match="no split 'test'"):
        rows_of(tmp_path / "eurus", format="eurus2", split="test")


def test_json_array_and_json_lines_agree(fixtures, tmp_path):
    records = json.loads((fixtures / "deepscaler.json").read_text())
    (tmp_path / "deepscaler.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n\n")
    from_lines = rows_of(tmp_path / "deepscaler.jsonl", format="deepscaler")
    from_array = rows_of(fixtures / "deepscaler.json", format="deepscaler")
    assert [(r.prompt, r.ground_truth) for r in from_lines] == [(r.prompt, r.ground_truth) for r in from_array]


def test_load_data_seeds_and_holds_out_val():
    cfg = DataConfig(train=[DataSourceConfig(path="arithmetic:add", size=3000)],
                     val=[DataSourceConfig(path="arithmetic:add", size=300)], seed=5)
    data = load_data(cfg)
    train, val = data.train[0], data.val[0]
    assert len(val.rows) == 300 and not {r.prompt for r in train.rows} & {r.prompt for r in val.rows}
    # 8100 possible sums: train draws some val problems; they are dropped from train, and counted.
    assert train.dropped["also in val"] > 0 and len(train.rows) + train.dropped["also in val"] == 3000
    again = load_data(cfg)
    assert again.train[0].rows == train.rows and again.val[0].rows == val.rows
    assert load_data(DataConfig(train=cfg.train, seed=6)).train[0].rows != train.rows
    assert data.pools() == {"arithmetic:add": train.rows} and data.weights() == {"arithmetic:add": 1.0}


def test_load_data_names_sources_uniquely(fixtures):
    cfg = DataConfig(train=[DataSourceConfig(path=str(fixtures / "eurus2.parquet"), format="eurus2", domain="math"),
                            DataSourceConfig(path=str(fixtures / "eurus2.parquet"), format="eurus2", domain="code"),
                            DataSourceConfig(path=str(fixtures / "deepscaler.json"), format="deepscaler"),
                            DataSourceConfig(path=str(fixtures / "deepscaler.json"), format="deepscaler")])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        names = [s.name for s in load_data(cfg).train]
    assert names == ["eurus2.parquet[math]", "eurus2.parquet[code]", "deepscaler.json", "deepscaler.json#2"]


@pytest.mark.parametrize("policy", ["drop", "truncate"])
def test_overlong_prompts(fixtures, tokenizer, policy):
    cfg = DataConfig(train=[DataSourceConfig(path=str(fixtures / "taco.jsonl"), format="taco")],
                     overlong_prompts=policy)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rows = load_data(cfg).train[0].rows
        lengths = prompt_lengths(tokenizer, rows)
        limit = sorted(lengths)[1]  # exactly one of the three prompts is longer
        source = load_data(cfg, tokenizer=tokenizer, max_prompt_length=limit).train[0]
    if policy == "drop":
        assert len(source.rows) == 2 and source.dropped == {f"prompt over {limit} tokens": 1}
    else:
        assert len(source.rows) == 3 and source.truncated == 1 and not source.dropped
    assert "taco.jsonl: " in source.summary()


def test_config_rejects_bad_sources(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("data:\n  train:\n    - {path: x.jsonl, format: eurus3}\n")
    with pytest.raises(ConfigError, match=r"data.train\[0\].format='eurus3'"):
        load_run_config(config)
    config.write_text("data:\n  train:\n    - {path: x.jsonl, domain: chemistry}\n")
    with pytest.raises(ConfigError, match=r"data.train\[0\].domain='chemistry'"):
        load_run_config(config)
    config.write_text("data:\n  overlong_prompts: cut\n  train:\n    - {path: arithmetic:add}\n")
    with pytest.raises(ConfigError, match="data.overlong_prompts='cut'"):
        load_run_config(config)
    config.write_text("data:\n  train:\n    - {path: 'reasoning_gym:graph_color', size: 10, split: null}\n")
    assert load_run_config(config).data.train[0].size == 10
