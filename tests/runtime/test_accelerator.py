"""What the machine offers: FP8 needs what Transformer Engine says it needs.

No machine here has Transformer Engine; its answer is stood in for with the contract of
``FP8GlobalStateManager.is_fp8_available()`` -> (ok, reason), the same in TE 1.x
(transformer_engine/pytorch/fp8.py) and 2.x (quantization.py), whose reason for a pre-Ada GPU
is quoted below.
"""

from __future__ import annotations

import sys
import types

import pytest
import torch

from megatron_prorl.runtime import accelerator

PRE_ADA = "Device compute capability 8.9 or higher required for FP8 execution."


def _transformer_engine_answering(monkeypatch, ok: bool, reason: str) -> None:
    fp8 = types.ModuleType("transformer_engine.pytorch.fp8")
    fp8.FP8GlobalStateManager = type("FP8GlobalStateManager", (), {
        "is_fp8_available": classmethod(lambda cls: (ok, reason))})
    for name, module in (("transformer_engine", types.ModuleType("transformer_engine")),
                         ("transformer_engine.pytorch", types.ModuleType("transformer_engine.pytorch")),
                         ("transformer_engine.pytorch.fp8", fp8)):
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setattr(accelerator, "missing_for_transformer_engine", lambda: "")
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *args: "NVIDIA A100-SXM4-80GB")


def test_fp8_names_the_gpu_and_transformer_engines_reason(monkeypatch):
    _transformer_engine_answering(monkeypatch, False, PRE_ADA)
    assert accelerator.missing_for_fp8() == f"FP8 support on NVIDIA A100-SXM4-80GB ({PRE_ADA})"
    _transformer_engine_answering(monkeypatch, True, "")
    assert accelerator.missing_for_fp8() == ""


def test_fp8_without_transformer_engine_says_what_is_missing_first():
    if not accelerator.missing_for_transformer_engine():
        pytest.skip("Transformer Engine is usable here; this checks the message when it is not")
    assert accelerator.missing_for_fp8() == accelerator.missing_for_transformer_engine()
