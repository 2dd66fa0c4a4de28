"""Fixtures for the rollout tests."""

from __future__ import annotations

import pytest
import torch
from rollout_models import qwen2_config, reference_model, state_dict_buckets

from helpers.hf_models import EOS, PAD
from megatron_prorl.rollout.hf_engine import TransformersEngine


@pytest.fixture(scope="module")
def tied_setup():
    """(hf_config, reference model, engine synced from it)."""
    torch.set_num_threads(1)
    cfg = qwen2_config(tie=True)
    ref = reference_model(cfg)
    engine = TransformersEngine(cfg, eos_token_ids=EOS, pad_token_id=PAD)
    engine.update_weights(state_dict_buckets(ref, skip=("lm_head.weight",)))
    return cfg, ref, engine
