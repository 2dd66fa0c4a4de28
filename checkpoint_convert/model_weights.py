"""Hugging Face weights into a live, model-parallel GPTModel.

:func:`load_hf_weights` fills each rank's parameters (its TP shard of its PP stage's layers)
straight from a HF directory, reading only that rank's rows.
"""

from __future__ import annotations

import os

import torch

from checkpoint_convert.arch import HFArch
from checkpoint_convert.checkpoint import unwrap_model
from checkpoint_convert.errors import ConversionError
from checkpoint_convert.mapping import Layout, to_megatron_shard
from checkpoint_convert.safetensors_io import HFWeights


def layout_here(arch: HFArch) -> Layout:
    """The layout of this process's model-parallel group (Megatron's parallel state)."""
    from megatron.core import parallel_state as ps

    return Layout(arch, ps.get_tensor_model_parallel_world_size(), ps.get_pipeline_model_parallel_world_size())


@torch.no_grad()
def load_hf_weights(model, arch: HFArch, hf_dir: os.PathLike) -> None:
    """Copy this rank's shard of the HF weights in ``hf_dir`` into ``model`` (cast to its dtype)."""
    from megatron.core import parallel_state as ps

    gpt = unwrap_model(model)
    layout = layout_here(arch)
    pp_rank, tp_rank = ps.get_pipeline_model_parallel_rank(), ps.get_tensor_model_parallel_rank()
    expected = set(layout.stage_params(pp_rank))
    with HFWeights(hf_dir) as weights:
        weights.validate(arch)
        seen = set()
        for name, tensor in gpt.named_parameters():
            param = layout.param_for(name, pp_rank)
            shard = to_megatron_shard(param, weights.read, layout, tp_rank)
            if shard.shape != tensor.shape:
                raise ConversionError(f"{name}: HF shard has shape {tuple(shard.shape)}, the model's parameter "
                                      f"{tuple(tensor.shape)}")
            tensor.copy_(shard)
            seen.add(layout.local_name(param))
    if seen != expected:
        raise ConversionError(f"pipeline stage {pp_rank} lacks parameters {sorted(expected - seen)[:3]}")
