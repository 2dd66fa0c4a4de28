"""The regime rule on constructed pass@1 / pass@k curves over checkpoints."""

from __future__ import annotations

import pytest

from megatron_prorl.eval import classify
from megatron_prorl.eval.regimes import rule_text


@pytest.mark.parametrize("pass1,passk,expected", [
    # pass@1 up, pass@128 down: the boundary narrows (the paper's high-base tasks)
    ([0.60, 0.75, 0.80], [0.95, 0.93, 0.90], "diminishing"),
    # gains early, then flat
    ([0.20, 0.40, 0.41], [0.50, 0.70, 0.705], "plateau"),
    # pass@k keeps rising late (code, hard puzzles)
    ([0.10, 0.20, 0.30], [0.30, 0.45, 0.60], "sustained"),
    # two checkpoints (base vs trained): a rise of pass@k is sustained
    ([0.10, 0.30], [0.40, 0.55], "sustained"),
    ([0.50, 0.505, 0.51], [0.80, 0.80, 0.81], "no change"),
    ([0.50, 0.40, 0.30], [0.80, 0.80, 0.80], "unclassified"),
])
def test_constructed_curves(pass1, passk, expected):
    assert classify(pass1, passk).name == expected


def test_threshold_is_a_parameter():
    pass1, passk = [0.30, 0.33], [0.70, 0.685]
    assert classify(pass1, passk, min_change=0.02).name == "unclassified"  # pass@k drop too small
    assert classify(pass1, passk, min_change=0.01).name == "diminishing"
    assert "+0.030" in classify(pass1, passk).why


def test_bad_input_and_rule_text():
    with pytest.raises(ValueError, match="at least two checkpoints"):
        classify([0.5], [0.6])
    with pytest.raises(ValueError, match="2 pass@1 values but 3"):
        classify([0.5, 0.6], [0.6, 0.7, 0.8])
    text = rule_text(0.05)
    assert "diminishing: pass@1 first->last >= +0.05" in text and "plateau" in text
