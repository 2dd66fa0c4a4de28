"""Device discipline on a (simulated) GPU machine: the trainer's step, from experience to the
weight sync, at TP1 and TP2, with every tensor's device tracked and every collective checked
for the device its backend takes (tests/helpers/devsim.py). Real Megatron-Core, the transformers engine
and the reward code run on spawned ranks; only the device is simulated.
"""

from __future__ import annotations

import pytest

from megatron_prorl.runtime.launch import spawn

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def test_moves_take_every_tensor_of_a_batch_or_sample_list():
    import torch
    from helpers.devsim import simulated_cuda

    from megatron_prorl.runtime import device
    from megatron_prorl.train.batch import from_sequences
    from megatron_prorl.rollout.base import Sample

    host = from_sequences([[1, 2], [3]], [[4], [5, 6]], [1.0, -1.0], engine_logprobs=[[-0.5], [-0.1, -0.2]])
    with simulated_cuda(megatron=False) as sim:
        batch = device.to_current(host)
        assert device.current() == torch.device("cuda", 0)
        assert {sim.device_of(t) for t in (batch.input_ids, batch.loss_mask, batch.advantages,
                                            batch.engine_logprobs)} == {"cuda:0"}
        assert batch.old_logprobs is None and sim.device_of(host.input_ids) == "cpu"
        samples = [Sample(0, 0, [4], torch.zeros(1, device="cuda"), "eos"), "not a tensor"]
        back = device.to_host(samples)
        assert sim.device_of(back[0].logprobs) == "cpu" and back[1] == "not a tensor"


def _config(tp: int, out_dir: str):
    from megatron_prorl.train.validate import load_run_config

    return load_run_config(None, [
        "model.hf_dir=builtin:tiny", "model.dtype=fp32", f"parallel.tensor_model_parallel_size={tp}",
        "batch.prompts_per_step=2", "batch.prompts_per_mini_batch=1", "batch.micro_batch_size=4",
        "rollout.n=4", "rollout.max_prompt_length=128", "rollout.max_response_length=6",
        "algo.dynamic_sampling=false", "algo.tis_cap=2.0", "algo.entropy_coef=0.01", "rewards.num_workers=0",
        "data.train=[{path: 'arithmetic:add', size: 16}]", "data.val=[]",
        f"trainer.output_dir={out_dir}", "trainer.stages=[{name: s, steps: 2}]",
        "checkpoint.every=0", "logging.tensorboard=false", "logging.progress=false"])


def _failure(fn) -> str:
    from helpers.devsim import DeviceMismatch

    try:
        fn()
    except DeviceMismatch as e:
        return str(e)
    return ""


def _step(tp: int, out_dir: str, negative_controls: bool) -> dict:
    import torch
    from helpers.devsim import simulated_cuda

    from megatron_prorl.runtime.distributed import shutdown_distributed
    from megatron_prorl.train.stages import stage_of
    from megatron_prorl.train.trainer import Trainer

    import megatron_prorl.train.trainer as trainer_module
    from megatron_prorl.weight_sync import WeightSync

    out = {}
    with simulated_cuda() as sim:
        # Marks in the simulation's log of collectives: the engine built, the first weight sync.
        build, sync = trainer_module.build_engine_from_config, WeightSync.__call__
        trainer_module.build_engine_from_config = lambda *a, **k: sim.log.append(("engine built",)) or build(*a, **k)
        WeightSync.__call__ = lambda self: sim.log.append(("weight sync",)) or sync(self)
        trainer = Trainer(_config(tp, out_dir))  # builds the model and engine, syncs weights once
        trainer_module.build_engine_from_config, WeightSync.__call__ = build, sync
        out["start_log"] = list(sim.log)
        calls = []  # the update/generation switch, in order
        for owner, name in ((trainer.actor, "update"), (trainer.engine, "sleep"), (trainer.engine, "wake"),
                            (torch.cuda, "empty_cache")):
            if owner is not None:  # the engine lives on the engine rank only
                real = getattr(owner, name)
                setattr(owner, name, lambda *a, _real=real, _name=name, **k: calls.append(_name) or _real(*a, **k))
        out["metrics"] = trainer.train_step(1, stage_of(trainer.stages, 1))
        out["switch"] = list(calls)
        out["params"] = {sim.device_of(p) for p in trainer.actor.policy_module.parameters()}
        out["collectives"] = set(sim.collectives)
        if negative_controls:  # each removes one move the rule prescribes: the step must fail
            from megatron_prorl.runtime import device

            move, group = device.to_current, device.host_group
            device.to_current = lambda obj: obj
            out["batch_left_on_host"] = _failure(lambda: trainer.train_step(2, stage_of(trainer.stages, 2)))
            device.to_current = move
            device.host_group = lambda: None
            out["host_values_on_nccl"] = _failure(trainer_module.agreed_stop_signal)
            device.host_group = group
        trainer.close()
        shutdown_distributed()
    return out


@pytest.mark.parametrize("tp", [1, 2])
def test_train_step_keeps_device_discipline(tp, tmp_path):
    for rank, out in enumerate(spawn(_step, tp, tp, str(tmp_path), tp == 1)):
        assert out["params"] == {f"cuda:{rank}"}
        metrics = out["metrics"]
        assert metrics["update_skipped"] == 0 and metrics["grad_norm"] > 0 and metrics["sync/gb_per_s"] > 0
        # The checks ran: model-side collectives on NCCL with this rank's GPU, bookkeeping on gloo.
        collectives = out["collectives"]
        assert {("allreduce_", "nccl", f"cuda:{rank}"), ("broadcast_", "nccl", f"cuda:{rank}"),
                ("allreduce_", "gloo", "cpu")} <= collectives, collectives
        # Start-up: the engine rank builds its engine, then every rank meets the others on the
        # gloo group; only then does the first weight sync enter its NCCL collectives.
        log = out["start_log"]
        first_sync = log.index(("weight sync",))
        if rank == 0:
            built = log.index(("engine built",))
            assert log[built + 1:first_sync] == [("barrier", "gloo")], log[built:first_sync + 3]
        else:
            assert ("engine built",) not in log and log[first_sync - 1] == ("barrier", "gloo"), log[-10:]
        if tp == 2:
            assert log[first_sync + 1][1] == "nccl", log[first_sync:first_sync + 3]
        # Between the update and the engine's wake the trainer gives its allocator's cache back
        # (the engine's own sleep empties it too), and says how much that freed and what is free.
        assert out["switch"] == (["sleep", "empty_cache", "update", "empty_cache", "wake"] if rank == 0
                                 else ["update", "empty_cache"]), out["switch"]
        assert metrics["mem/freed_gib"] > 0 and metrics["time/release"] >= 0
        assert 0 < metrics["mem/free_after_wake_gib"] < metrics["mem/free_before_wake_gib"] < 80
        if tp == 2:  # the weight export gathers TP shards to the engine rank
            assert ("gather_", "nccl", f"cuda:{rank}") in collectives, collectives
        else:
            assert "aten.embedding.default mixes devices: cuda:0 tensors" in out["batch_left_on_host"]
            assert "cpu tensors (4, " in out["batch_left_on_host"]  # the micro-batch's token ids
            assert "c10d.allreduce_ on a NCCL group (ranks [0]) got tensors on cpu" in out["host_values_on_nccl"]
