"""The Megatron GPT model built from a HF architecture: rope frequencies equal transformers'."""

import pytest
import torch

from checkpoint_convert.arch import hf_arch
from helpers.hf_models import LLAMA3, QWEN2
from megatron_prorl.runtime.launch import spawn


def _rope_inv_freq(cfg):
    from megatron_prorl.config import ModelConfig, ParallelConfig
    from megatron_prorl.runtime.distributed import init_distributed, shutdown_distributed
    from megatron_prorl.models.builder import build_gpt_model

    init_distributed(ParallelConfig())
    model = build_gpt_model(hf_arch(cfg), ModelConfig(), ParallelConfig())
    shutdown_distributed()
    return model.rotary_pos_emb.inv_freq.clone()


@pytest.mark.parametrize("cfg", [LLAMA3, QWEN2], ids=["llama3-scaled", "qwen2"])
def test_rope_frequencies_match_transformers(cfg):
    from transformers import LlamaConfig, Qwen2Config
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    hf_cls = LlamaConfig if cfg["model_type"] == "llama" else Qwen2Config
    hf_cfg = hf_cls(**{k: v for k, v in cfg.items() if k != "model_type"})
    kind = (cfg.get("rope_scaling") or {}).get("rope_type", "default")
    if kind == "default":
        expected = 1.0 / cfg["rope_theta"] ** (torch.arange(0, 16, 2).float() / 16)
    else:
        expected, _ = ROPE_INIT_FUNCTIONS[kind](hf_cfg, "cpu")
    got = spawn(_rope_inv_freq, 1, cfg)[0]
    torch.testing.assert_close(got.float(), expected.float(), rtol=1e-6, atol=0)


def test_the_local_spec_fuses_softmax_on_a_gpu_only_with_apex(monkeypatch):
    """megatron-core's fused masked softmax (local spec, bf16/fp16 on a GPU) is an Apex kernel:
    on a GPU without Apex it stays off instead of failing at the first attention."""
    from helpers.devsim import simulated_cuda

    from megatron_prorl.runtime import accelerator
    from megatron_prorl.config import ModelConfig, ParallelConfig
    from megatron_prorl.models.builder import transformer_config

    def fused() -> bool:
        return transformer_config(hf_arch(QWEN2), ModelConfig(transformer_impl="local"),
                                  ParallelConfig()).masked_softmax_fusion

    with simulated_cuda(megatron=False):
        assert not fused()  # a GPU, no Apex
        monkeypatch.setattr(accelerator, "has_apex_softmax", lambda: True)
        assert fused()
    assert not fused()  # no GPU


def _gradients_with_and_without_recomputation(cfg, simulated: bool):
    import contextlib

    from helpers.devsim import simulated_cuda

    from megatron_prorl.runtime import device
    from megatron_prorl.config import ModelConfig, ParallelConfig
    from megatron_prorl.runtime.distributed import init_distributed, shutdown_distributed
    from megatron_prorl.models.builder import build_gpt_model

    grads, weights = [], None
    with simulated_cuda() if simulated else contextlib.nullcontext():
        init_distributed(ParallelConfig(), seed=7)
        for recompute in (False, True):
            model = build_gpt_model(hf_arch(cfg), ModelConfig(dtype="fp32", recompute_activations=recompute),
                                    ParallelConfig())
            if weights is None:
                weights = model.state_dict()
            model.load_state_dict(weights)
            ids = torch.arange(24, device=device.current()).remainder(cfg["vocab_size"]).view(2, 12)
            positions = torch.arange(12, device=device.current()).expand(2, 12)
            model(ids, positions, None).square().mean().backward()
            grads.append(torch.cat([p.grad.flatten().cpu() for p in model.parameters()]))
        shutdown_distributed()
    return grads


@pytest.mark.parametrize("simulated", [False, True], ids=["cpu", "simulated-gpu"])
def test_activation_recomputation_gives_the_same_gradients(simulated):
    """model.recompute_activations on CPU (Megatron's CheckpointFunction saves a CUDA RNG state and
    recomputes in a backward that runs outside the CPU backend's device modes)."""
    plain, recomputed = spawn(_gradients_with_and_without_recomputation, 1, QWEN2, simulated)[0]
    torch.testing.assert_close(recomputed, plain, rtol=1e-6, atol=1e-7)
