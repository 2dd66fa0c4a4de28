"""A trainer checkpoint written at TP2 x PP2 loads at every other layout of the same four ranks
(TP1 x PP1 x DP4, TP2 x PP1 x DP2, TP1 x PP2 x DP2, and TP2 x PP2 again), and one written at
TP1 x PP1 x DP4 loads at TP2 x PP2, for both optimizers
the project uses: the plain Megatron-Core optimizer (CPU default) and its DistributedOptimizer
(GPU default; here on gloo). After loading, every parameter, the reference, the Adam moments and
the fp32 master weights, gathered whole, are bit-identical to what was saved, and each
parameter's Adam step count is the saved one and its own (a shared count is the silent
divergence of megatron-core's load path on torch Adam: see train/checkpoint.py).
"""

from __future__ import annotations

import pytest
import torch

from helpers.hf_models import QWEN2
from megatron_prorl.runtime.launch import spawn

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

TINY = dict(QWEN2, hidden_size=32, intermediate_size=64, vocab_size=50, max_position_embeddings=64,
            rope_theta=10000.0)
LAYOUTS_AFTER = [(1, 1), (2, 1), (1, 2), (2, 2)]  # (TP, PP) on 4 ranks: DP 4, 2, 2, 1


def _cfg(tp, pp, distributed, dtype):
    from megatron_prorl.config import ProRLConfig

    cfg = ProRLConfig()
    cfg.parallel.tensor_model_parallel_size, cfg.parallel.pipeline_model_parallel_size = tp, pp
    cfg.parallel.use_distributed_optimizer = distributed
    cfg.model.dtype = dtype
    cfg.batch.prompts_per_step, cfg.batch.prompts_per_mini_batch, cfg.batch.micro_batch_size = 4, 2, 4
    cfg.optim.lr, cfg.optim.weight_decay = 1e-2, 0.1
    return cfg


def _actor_at(tp, pp, distributed, dtype):
    """A PolicyActor at TP x PP on the running ranks (Megatron's parallel state rebuilt)."""
    from checkpoint_convert.arch import hf_arch
    from megatron.core import parallel_state
    from megatron_prorl.runtime import device
    from megatron_prorl.runtime.distributed import init_distributed
    from megatron_prorl.train.actor import PolicyActor

    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
        device.destroy_host_group()
    cfg = _cfg(tp, pp, distributed, dtype)
    init_distributed(cfg.parallel)
    return PolicyActor(cfg, hf_arch(TINY))


def _train(actor):
    from megatron_prorl.train.batch import from_sequences

    g = torch.Generator().manual_seed(3)
    batch = from_sequences([torch.randint(0, 50, (5,), generator=g).tolist() for _ in range(8)],
                           [torch.randint(0, 50, (6,), generator=g).tolist() for _ in range(8)],
                           [1.0, -1.0, 0.5, -0.5, 1.0, -1.0, 0.5, -0.5])
    batch.old_logprobs, _ = actor.forward_logprobs(batch, 1.2)
    batch.ref_logprobs = batch.old_logprobs
    actor.update(batch, 1.2, 0.01)  # two optimizer steps


def _whole_state(actor) -> dict:
    """Policy, reference and optimizer state, each tensor whole (rank 0), and the step counts."""
    import torch.distributed as dist
    from helpers.sharded import gather_whole
    from megatron_prorl.train.checkpoint import optimizer_sharded_state_dict

    whole = {f"policy/{k}": v for k, v in gather_whole(actor.policy_module.sharded_state_dict()).items()}
    whole.update({f"reference/{k}": v for k, v in gather_whole(actor.reference.sharded_state_dict()).items()})
    whole.update({f"optimizer/{k}": v for k, v in gather_whole(optimizer_sharded_state_dict(actor)).items()})
    states = [s for opt in actor.optimizer.chained_optimizers for s in opt.optimizer.state.values()]
    steps = sorted({float(s["step"]) for s in states})
    shared = len(states) - len({id(s["step"]) for s in states})
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, (steps, shared))
    return {"tensors": whole, "steps": sorted({x for s, _ in gathered for x in s}),
            "shared_steps": sum(n for _, n in gathered)}


def _save_then_load_everywhere(ckpt_dir: str, distributed: bool, dtype: str):
    from helpers.sharded import differences
    from megatron_prorl.runtime.distributed import shutdown_distributed
    from megatron_prorl.train.checkpoint import load_actor, save_actor
    from pathlib import Path

    actor = _actor_at(2, 2, distributed, dtype)
    _train(actor)
    saved = _whole_state(actor)
    save_actor(actor, Path(ckpt_dir))
    out = {"saved_steps": saved["steps"], "saved_keys": sorted(saved["tensors"])}
    for tp, pp in LAYOUTS_AFTER:
        actor = _actor_at(tp, pp, distributed, dtype)
        load_actor(actor, Path(ckpt_dir))
        loaded = _whole_state(actor)
        _train(actor)  # two more steps: each parameter's count goes on from the saved one
        after = _whole_state(actor)
        out[(tp, pp)] = {"differences": differences(saved["tensors"], loaded["tensors"]),
                         "steps": loaded["steps"], "shared_steps": loaded["shared_steps"],
                         "steps_after": after["steps"], "type": type(actor.optimizer.chained_optimizers[0]).__name__}
        if (tp, pp) == (1, 1):  # saved at DP4 too (the distributed optimizer gathers over DP first)
            save_actor(actor, Path(ckpt_dir + "-dp4"))
            saved_dp4 = after
    actor = _actor_at(2, 2, distributed, dtype)
    load_actor(actor, Path(ckpt_dir + "-dp4"))
    loaded = _whole_state(actor)
    out["dp4 -> (2, 2)"] = {"differences": differences(saved_dp4["tensors"], loaded["tensors"]),
                            "steps": loaded["steps"], "shared_steps": loaded["shared_steps"]}
    shutdown_distributed()
    return out


# The plain optimizer on CPU (fp32, the CPU default), the distributed one in fp32 and in bf16 (the
# GPU default: fp32 master weights beside bf16 parameters). Not here: the plain optimizer with
# bf16, whose sharded state megatron-core 0.16.1 does not build for this model
# (Float16OptimizerWithFloat16Params.sharded_state_dict: "Param id 6 does not match any model
# sharded param"), before any layout change; no default uses that combination.
@pytest.mark.parametrize("distributed, dtype", [(False, "fp32"), (True, "fp32"), (True, "bf16")],
                         ids=["plain-fp32", "distributed-fp32", "distributed-bf16"])
def test_optimizer_and_models_reshard_bit_exactly(tmp_path, distributed, dtype):
    out = spawn(_save_then_load_everywhere, 4, str(tmp_path / "ckpt"), distributed, dtype, timeout=900)[0]
    keys = out["saved_keys"]
    assert any(k.startswith("optimizer/") and "exp_avg_sq." in k for k in keys), keys
    if distributed:  # the fp32 master copy of each parameter is part of the state
        assert any(k.startswith("optimizer/optimizer.state.param.") for k in keys), keys
    assert out["saved_steps"] == [2.0]
    for layout in LAYOUTS_AFTER:
        got = out[layout]
        assert got["type"] == ("DistributedOptimizer" if distributed else "FP32Optimizer")
        assert got["differences"] == [], (layout, got["differences"][:5])
        assert got["steps"] == [2.0] and got["shared_steps"] == 0, (layout, got)
        assert got["steps_after"] == [4.0], (layout, got)
    back = out["dp4 -> (2, 2)"]  # a checkpoint written at TP1 x PP1 x DP4, loaded at TP2 x PP2
    assert back["differences"] == [] and back["steps"] == [4.0] and back["shared_steps"] == 0, back
