"""Converted checkpoints in a live Megatron model, under every TP x PP, on gloo.

One spawned job of 8 ranks (conftest ``distributed``) walks all six layouts (the remaining
ranks are data-parallel replicas) and, for every variant, checks: dist_layout against the
model's own sharded_state_dict(); logits against transformers' (fp32, 1e-5) after loading the
checkpoint written at that layout, the HF weights directly, (two variants) a checkpoint written
at TP4 x PP2 (or TP1 x PP1), and (llama) a checkpoint the live model saved at TP2 x PP2;
the weight sync's export against the files; and a wrong qkv interleave.
"""

from __future__ import annotations

import json

import pytest
from convert_jobs import LAYOUTS, RESHARDED, SAVED_AT, SAVED_VARIANT
from convert_models import VARIANTS

TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def rows(distributed):
    return distributed[0]


def by_case(rows, key):
    """{(variant, tp, pp): [value of every rank that computed it]}."""
    out = {}
    for row in rows:
        if key in row and row[key] is not None:
            out.setdefault((row["variant"], row["tp"], row["pp"]), []).append(row[key])
    return out


def test_every_layout_and_variant_ran(rows):
    assert {(r["variant"], r["tp"], r["pp"]) for r in rows} == {(v, tp, pp) for v in VARIANTS for tp, pp in LAYOUTS}


def test_dist_layout_matches_the_models_sharded_state_dict(rows):
    assert [(r["variant"], r["tp"], r["pp"], r["layout"][:2]) for r in rows if r["layout"]] == []


@pytest.mark.parametrize("source", ["ckpt", "resharded", "hf"])
def test_logits_match_transformers(rows, source):
    diffs = by_case(rows, source)
    variants = RESHARDED if source == "resharded" else VARIANTS
    assert set(diffs) == {(v, tp, pp) for v in variants for tp, pp in LAYOUTS}  # the last stage reported
    worst = {case: max(values) for case, values in diffs.items()}
    assert max(worst.values()) < TOLERANCE, worst


def test_sync_export_reproduces_the_hf_tensors_on_the_first_rank_only(rows):
    bad = [(r["variant"], r["tp"], r["pp"], r["export"]) for r in rows if any(r["export"].values())]
    assert bad == []
    firsts = [r for r in rows if "names" in r["export"]]
    assert firsts and len(firsts) < len(rows)  # the first ranks checked the tensors, the others got none


def test_negative_control_a_wrong_qkv_interleave_is_caught_by_the_logits(rows):
    [diffs] = by_case(rows, "wrong_interleave").values()
    assert min(diffs) > 1e-2


def test_a_checkpoint_saved_by_the_live_model_loads_at_other_layouts(distributed, hf_dirs):
    rows, saved = distributed
    diffs = by_case(rows, "saved")
    later = [lp for lp in LAYOUTS if lp > SAVED_AT]
    assert set(diffs) == {(SAVED_VARIANT, tp, pp) for tp, pp in later}
    assert max(max(v) for v in diffs.values()) < TOLERANCE
    assert json.loads((saved / "meta.json").read_text()) == {
        "format": "megatron-prorl", "version": 1, "tp": SAVED_AT[0], "pp": SAVED_AT[1], "dtype": "fp32",
        "family": "llama"}
    assert (saved / "hf" / "config.json").read_bytes() == (hf_dirs[SAVED_VARIANT] / "config.json").read_bytes()
