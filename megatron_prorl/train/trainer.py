"""The ProRL loop.

    prompts -> rollouts (engine) -> rewards (process pool) -> dynamic sampling -> GRPO advantages
    -> old / reference log-probs -> mini-batch updates -> weight sync -> metrics -> validation
    -> reference reset -> checkpoint

Roles of the ranks: each data-parallel replica (a TP x PP group of ranks) has one *engine rank*,
its model-parallel rank 0, which owns the rollout engine and the reward pool and generates that
replica's share of the prompts. Every rank holds the same prompt sampler (same seed), so all
ranks agree on the prompts without communication; the engine rank broadcasts its finished groups
to the rest of its replica, and the weight sync gathers each replica's shards back to its engine.

The config is read, never changed: what a training stage sets (n, temperature, lengths, KL
coefficient, data mix) is computed from the step (:mod:`megatron_prorl.train.stages`) and passed on.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import signal
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
import torch.distributed as dist

from checkpoint_convert import dtypes, load_hf_weights, load_model_checkpoint
from checkpoint_convert.arch import hf_arch, read_hf_config
from checkpoint_convert.checkpoint import CheckpointMeta, CheckpointWriteError, resolve_checkpoint, verify_checkpoint
from megatron_prorl.algo import fill
from megatron_prorl.algo.reset import ResetTrigger
from megatron_prorl.config import ProRLConfig, to_yaml
from megatron_prorl.data import MixedSampler, domain_mix_weights, encode_prompt, load_data
from megatron_prorl.models.builder import resolve_dtype, resolve_hf_dir
from megatron_prorl.rewards import RewardPool
from megatron_prorl.rollout import SamplingParams, build_engine_from_config
from megatron_prorl.rollout.base import eos_token_ids
from megatron_prorl.rollout.generate import Group, generate_groups
from megatron_prorl.runtime import device, process
from megatron_prorl.runtime.distributed import all_max, all_sum, detect_env, init_distributed
from megatron_prorl.train import checkpoint as ckpt
from megatron_prorl.train import resume
from megatron_prorl.train.actor import ActorState, PolicyActor, ResetRecord
from megatron_prorl.train.experience import group_stats, max_response_length, to_train_batch
from megatron_prorl.train.metrics import MetricsLogger
from megatron_prorl.train.stages import Stage, resolve_stages, stage_of, total_steps
from megatron_prorl.train.validate import validate
from megatron_prorl.weight_sync import WeightSync

log = logging.getLogger(__name__)


def _ps():
    from megatron.core import parallel_state

    return parallel_state


def _seed(*parts: int) -> int:
    """A sampling seed that depends only on the step's coordinates (so resume is exact)."""
    h = 0
    for p in parts:
        h = (h * 1_000_003 + int(p)) % (2**31 - 1)
    return h


def reduce_stats(stats: dict[str, tuple[float, float]], names: Sequence[str]) -> dict[str, float]:
    """Sum (sum, count) pairs over all ranks (ranks without data pass zeros) into means."""
    totals = all_sum([v for n in names for v in stats.get(n, (0.0, 0.0))])
    return {n: (s / c if c > 0 else float("nan")) for n, s, c in zip(names, totals[::2], totals[1::2])}


def agreed_stop_signal() -> Optional[str]:
    """The stop signal any rank received (collective), or None: SIGTERM / SIGUSR1 (Slurm's
    warning before the time limit) or SIGINT (Ctrl-C) finish the step, checkpoint and exit. The
    command records them from its start (``process.catch_stop_signals``), so one sent during
    start-up is not lost."""
    signum = int(all_max([process.stop_signal()])[0])
    return signal.Signals(signum).name if signum else None


class Trainer:
    def __init__(self, cfg: ProRLConfig):
        self.cfg = cfg
        self.stopped_by: Optional[str] = None
        self._start_distributed()
        self._load_data()
        self.actor = PolicyActor(cfg, self.arch)
        self._restore_or_initialise()
        self._start_rollout()
        self._open_run_dir()
        self._start_random_streams()

    def _start_random_streams(self) -> None:
        """Last, once set-up (which draws random numbers, some seeded from the OS) is done: the
        process-global generators start from the seed, or, resuming, from the states the run
        had after its checkpointed step; so two runs of one config, and a resumed run, hold the
        same states at the same step."""
        if self.resumed_from is not None:
            ckpt.load_rng(self.resumed_from)
            return
        seed = _seed(self.cfg.trainer.seed, self.rank)
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)

    # ------------------------------------------------------------------------ set-up
    def _start_distributed(self) -> None:
        """Check the layout against the model before starting the process group; roles."""
        cfg = self.cfg
        self.hf_dir = resolve_hf_dir(cfg.model.hf_dir)
        self.hf_config = read_hf_config(self.hf_dir)
        self.arch = hf_arch(self.hf_config, source=str(self.hf_dir / "config.json"))
        validate(cfg, self.hf_config, world_size=detect_env().world_size)
        init_distributed(cfg.parallel, seed=cfg.model.init_seed)
        ps = _ps()
        self.rank = dist.get_rank()
        self.dp_rank, self.dp_size = ps.get_data_parallel_rank(), ps.get_data_parallel_world_size()
        self.is_engine_rank = dist.get_rank(ps.get_model_parallel_group()) == 0
        self.is_last_stage_tp0 = ps.is_pipeline_last_stage() and ps.get_tensor_model_parallel_rank() == 0
        self.stages = resolve_stages(cfg)
        self.total_steps = total_steps(self.stages)

    def _load_data(self) -> None:
        from transformers import AutoTokenizer

        cfg = self.cfg
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.hf_dir))
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        self.data = load_data(cfg.data, self.tokenizer, cfg.rollout.max_prompt_length)
        self.domains = sorted({r.domain for s in self.data.train + self.data.val for r in s.rows})
        self.sampler = MixedSampler(self.data.pools(), self.data.weights(), seed=cfg.data.seed,
                                    origins={s.name: s.path for s in self.data.train})

    def _restore_or_initialise(self) -> None:
        """Resume the run's newest intact checkpoint; else start from checkpoint.load (a trainer
        checkpoint, or a converted model) or the HF weights."""
        cfg = self.cfg
        self.out = Path(cfg.trainer.output_dir)
        self.ckpts = ckpt.CheckpointManager(self.out / "checkpoints", cfg.checkpoint.keep_last)
        self.ckpts.remove_leftovers()
        self.trigger = ResetTrigger(cfg.reset)
        self.step = 0
        self.stage_index = -1
        self.history: list[dict] = []  # validation results, for the final summary
        self.config_changes: list[resume.Change] = []  # from the checkpoint's config, resuming
        resume = self.ckpts.latest()
        self.last_checkpoint = resume.name if resume is not None else None
        self.resumed_from: Optional[Path] = None
        if resume is None and cfg.checkpoint.load:
            resume, how = resolve_checkpoint(cfg.checkpoint.load)
            log.info("checkpoint.load: %s (%s)", resume, how)
            verify_checkpoint(resume)
        if resume is not None and (resume / "trainer_state.json").is_file():
            self._load(resume)  # a trainer checkpoint: continue where it stopped
            return
        if resume is not None:  # a converted model (prorl-convert hf-to-megatron): start from it
            load_model_checkpoint(self.actor.policy_module, resume)
        elif cfg.model.load_weights:
            load_hf_weights(self.actor.policy_module, self.arch, self.hf_dir)
        self.actor.sync_reference()

    def _start_rollout(self) -> None:
        """The engine and the reward pool on engine ranks; the weight sync everywhere, run once.

        Engine ranks take minutes here (a TensorRT-LLM engine starts a Ray instance and compiles
        kernels) while their peers have nothing to do: all ranks meet on the host group (gloo)
        before the first sync, so the wait is a CPU barrier with parallel.collective_timeout_minutes,
        not an NCCL gather spinning on the GPU."""
        cfg = self.cfg
        self.engine = self.pool = None
        if self.is_engine_rank:
            self.engine = build_engine_from_config(
                cfg.rollout, hf_config=self.hf_config, hf_dir=str(self.hf_dir),
                eos_token_ids=eos_token_ids(self.hf_dir, self.tokenizer.eos_token_id), pad_token_id=self.pad_id,
                device=device.current(),
                dtype=resolve_dtype(cfg.model))
            self.pool = RewardPool(cfg.rewards)
        dist.barrier(group=device.host_group())
        self.weight_sync = WeightSync(self.actor.policy_module, self.arch, self.engine,
                                      cfg.rollout.sync_bucket_mb << 20, cfg.rollout.sync_transport)
        self.weight_sync()

    def _open_run_dir(self) -> None:
        self.logger = MetricsLogger(self.out, self.cfg.logging, self.total_steps, enabled=self.rank == 0,
                                    resume_step=self.step)
        if self.config_changes:
            listed = "; ".join(c.line() for c in self.config_changes)
            self.logger.log_event(self.step, f"config changed on resume: {listed}", category="config",
                                  extra={"changes": [c.record() for c in self.config_changes]})
        if self.rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "config.yaml").write_text(to_yaml(self.cfg))
            log.info("data:\n%s", self.data.summary())

    # ------------------------------------------------------------------------ the loop
    def run(self) -> dict:
        try:
            self._loop()
        finally:
            self.close()
        return self.summary()

    def _loop(self) -> None:
        self.stopped_by = agreed_stop_signal()  # during start-up: stop before any step
        if self.stopped_by:
            self.logger.log_event(self.step, f"stopping on {self.stopped_by} before step {self.step + 1}")
        elif self.step == 0 and self.data.val:
            self._validate(0)
        while self.step < self.total_steps and not self.stopped_by:
            step = self.step + 1
            stage = stage_of(self.stages, step)
            if stage.index != self.stage_index:
                self._enter_stage(stage, step)
            metrics = self.train_step(step, stage)
            self.step = step
            reason = self.trigger.on_step(step, kl=metrics.get("kl"))
            if self.data.val and ((self.cfg.trainer.val_every and step % self.cfg.trainer.val_every == 0)
                                  or step == self.total_steps):
                score = self._validate(step)
                reason = reason or self.trigger.on_validation(score)
            if reason:
                self._reset(step, reason)
            self.stopped_by = agreed_stop_signal()
            every = self.cfg.checkpoint.every
            if self.stopped_by or step == self.total_steps or (every and step % every == 0):
                self.save()
            if self.stopped_by:
                self.logger.log_event(step, f"stopping on {self.stopped_by} after the checkpoint of step {step}")

    def _enter_stage(self, stage: Stage, step: int) -> None:
        self.stage_index = stage.index
        if stage.data_mix:
            self.sampler.set_weights(domain_mix_weights(self.data.pools(), self.data.weights(), stage.data_mix))
        self.logger.log_event(step, f"stage {stage.name}: n={stage.n} T={stage.temperature} "
                                    f"max_response_length={stage.max_response_length} kl_beta={stage.kl_beta}")
        if stage.reset_reference_at_start and step > 1:
            self._reset(step, f"stage {stage.name} starts")

    def _reset(self, step: int, reason: str) -> None:
        self.actor.reset_reference(step, reason)
        self.logger.log_event(step, f"reference reset: {reason}")

    # ------------------------------------------------------------------------ one step
    def train_step(self, step: int, stage: Stage) -> dict:
        cfg = self.cfg
        t_step = time.perf_counter()
        groups, metrics = self._collect(step, stage)
        timings = {"time/sleep": 0.0, "time/reference": 0.0, "time/training": 0.0, "time/release": 0.0,
                   "time/wake": 0.0, "time/sync": 0.0}
        if metrics["dynamic_sampling/fewest_kept"] == 0:
            # Every group of some replica was uninformative: nothing to learn from this step.
            metrics.update({"update_skipped": 1.0, "dynamic_sampling/all_filtered": 1.0})
        else:
            timings["time/sleep"] = self._engine_call("sleep")
            t0 = time.perf_counter()
            batch = to_train_batch(groups, cfg.algo.advantage, self.pad_id, cfg.algo.adv_eps, cfg.algo.scale_adv_by_std)
            batch = self.actor.balance(batch)  # with a token budget: even work over data-parallel ranks
            batch.old_logprobs, _ = self.actor.forward_logprobs(batch, stage.temperature)
            t_ref = time.perf_counter()
            if stage.kl_beta > 0:
                batch.ref_logprobs, _ = self.actor.forward_logprobs(batch, stage.temperature, "reference")
            timings["time/reference"] = time.perf_counter() - t_ref
            metrics.update(self._logprob_mismatch(batch))
            metrics.update(self.actor.update(batch, stage.temperature, stage.kl_beta))
            timings["time/training"] = time.perf_counter() - t0 - timings["time/reference"]
            del batch  # the step's tensors: their blocks go back to the device with the cache
            switch = self._release_and_wake()
            timings.update({k: switch.pop(k) for k in ("time/release", "time/wake")})
            metrics.update(switch)
            sync = self.weight_sync()
            timings["time/sync"], metrics["sync/gb_per_s"] = sync.seconds, sync.gb_per_s
        metrics.update(timings)
        metrics["time/step"] = time.perf_counter() - t_step
        metrics["tokens_per_s"] = metrics["generated_tokens"] / metrics["time/step"]
        metrics["stage"] = stage.index
        metrics.update({f"data/epochs/{name}": e for name, e in self.sampler.epochs().items()})
        self.logger.log(step, metrics)
        return metrics

    def _release_and_wake(self) -> dict:
        """The switch from update to generation (rollout.sleep_during_training): the trainer's
        cached allocator blocks go back to the device, then the engine wakes and maps its memory
        again. ``time/release`` and ``time/wake`` (s, the slowest rank's) and, with CUDA, the free
        memory in GiB, each the smallest over ranks (the tightest GPU is the one that runs out):
        ``mem/freed_gib`` by the release, ``mem/free_before_wake_gib``, ``mem/free_after_wake_gib``."""
        if not self.cfg.rollout.sleep_during_training:
            return {"time/release": 0.0, "time/wake": 0.0}
        t0 = time.perf_counter()
        free = device.release_cached_memory()
        seconds = time.perf_counter() - t0
        wake = self._engine_call("wake")
        if free is None:
            return {"time/release": all_max([seconds])[0], "time/wake": wake}
        before, after = free
        seconds, *least = all_max([seconds, before - after, -after, -device.free_memory()])
        freed, before_wake, after_wake = (-v / 2**30 for v in least)
        return {"time/release": seconds, "time/wake": wake, "mem/freed_gib": freed,
                "mem/free_before_wake_gib": before_wake, "mem/free_after_wake_gib": after_wake}

    def _engine_call(self, method: str) -> float:
        """``engine.sleep()`` / ``engine.wake()`` around the update (rollout.sleep_during_training);
        the slowest replica's seconds."""
        if not self.cfg.rollout.sleep_during_training:
            return 0.0
        t0 = time.perf_counter()
        if self.engine is not None:
            getattr(self.engine, method)()
        return all_max([time.perf_counter() - t0])[0]

    def _collect(self, step: int, stage: Stage) -> tuple[list[Group], dict]:
        """Dynamic sampling: draw prompt batches until every replica has its share of
        informative groups (at most algo.max_sampling_rounds rounds)."""
        cfg = self.cfg
        per_replica = cfg.batch.prompts_per_step // self.dp_size
        totals = {"generation": 0.0, "reward": 0.0, "tokens": 0}

        def generate_round(round_index: int, missing: int) -> list[Group]:
            rows = self.sampler.next_batch(cfg.batch.prompts_per_step)  # every rank draws: samplers stay equal
            if not (self.is_engine_rank and missing):
                return []
            mine = rows[self.dp_rank * per_replica:(self.dp_rank + 1) * per_replica]
            groups, times = self._generate(mine, stage.n, stage.temperature, cfg.rollout.top_p,
                                           stage.max_response_length,
                                           _seed(cfg.trainer.seed, step, round_index, self.dp_rank),
                                           stage.no_eos_penalty)
            totals["generation"] += times.generation
            totals["reward"] += times.reward_wait
            totals["tokens"] += sum(len(s.token_ids) for g in groups for s in g.samples)
            return groups

        filled = fill(generate_round, lambda g: g.rewards, per_replica, max_rounds=cfg.algo.max_sampling_rounds,
                      enabled=cfg.algo.dynamic_sampling,
                      anyone_short=lambda short: bool(all_max([float(self.is_engine_rank and short)])[0]))
        # Rollout statistics describe the policy's own samples: the first round, before filtering.
        metrics = reduce_stats(group_stats(filled.first_round, self.domains), sorted(group_stats([], self.domains)))
        # Only engine ranks generate, so TP/PP peers add zeros to these sums.
        n_kept, n_dropped, n_tokens = all_sum([len(filled.kept), filled.dropped, totals["tokens"]])
        max_len, gen_time, reward_time, fewest = all_max([
            max_response_length(filled.first_round), totals["generation"], totals["reward"],
            -len(filled.kept) if self.is_engine_rank else -per_replica])
        metrics.update({
            "dynamic_sampling/kept": n_kept, "dynamic_sampling/dropped": n_dropped,
            "dynamic_sampling/rounds": float(filled.rounds), "dynamic_sampling/fewest_kept": -fewest,
            "response_length/max": max_len, "time/generation": gen_time, "time/reward": reward_time,
            "generated_tokens": n_tokens,
        })
        return self._share_in_replica(filled.kept), metrics

    def _generate(self, rows, n: int, temperature: float, top_p: float, max_new_tokens: int, seed: int,
                  no_eos_penalty: float = 0.0):
        params = SamplingParams(n=n, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, seed=seed)
        prompt_ids = [encode_prompt(self.tokenizer, r, self.cfg.rollout.max_prompt_length)[0] for r in rows]
        return generate_groups(self.engine, self.pool, self.tokenizer, rows, prompt_ids, params, no_eos_penalty,
                               self.cfg.trainer.generation_chunks)

    def _share_in_replica(self, groups: list[Group]) -> list[Group]:
        """Engine rank -> every rank of its replica (TP and PP peers train on the same rows)."""
        mp = _ps().get_model_parallel_group()
        if dist.get_world_size(mp) == 1:
            return groups
        holder = [groups]
        dist.broadcast_object_list(holder, src=dist.get_global_rank(mp, 0), group=mp)
        return holder[0]

    def _logprob_mismatch(self, batch) -> dict:
        """|engine - trainer| log-prob of the sampled tokens, same weights: kernel/precision drift."""
        s = c = m = 0.0
        if self.is_last_stage_tp0 and batch.old_logprobs is not None:
            mask = batch.loss_mask.bool()
            diff = (batch.old_logprobs - batch.engine_logprobs).abs()[mask]
            s, c, m = diff.sum().item(), float(diff.numel()), diff.max().item() if diff.numel() else 0.0
        mean = reduce_stats({"d": (s, c)}, ["d"])["d"]
        return {"logprob_diff/mean": mean, "logprob_diff/max": all_max([m])[0]}

    # ------------------------------------------------------------------ validation
    def _validate(self, step: int) -> float:
        """pass@1 per domain over data.val (k samples each, paper eval settings); the blended
        score is the mean over domains."""
        cfg = self.cfg
        rows = [r for s in self.data.val for r in s.rows]
        mine = rows[self.dp_rank::self.dp_size]
        stats: dict = {}
        if self.is_engine_rank and mine:
            t = cfg.trainer
            groups, _ = self._generate(mine, t.val_samples, t.val_temperature, t.val_top_p,
                                       stage_of(self.stages, max(step, 1)).max_response_length,
                                       _seed(t.seed, 10**6 + step, self.dp_rank))
            for g in groups:
                key = f"val/pass@1/{g.domain}"
                s, c = stats.get(key, (0.0, 0.0))
                stats[key] = (s + sum(r.reward for r in g.results), c + len(g.results))
        names = [f"val/pass@1/{d}" for d in sorted({r.domain for r in rows})]
        result = reduce_stats(stats, names)
        result["val/score"] = sum(result[n] for n in names) / len(names)
        self.logger.log(step, result, kind="val")
        self.history.append({"step": step, **result})
        return result["val/score"]

    # ------------------------------------------------------------------ checkpoints
    def trainer_state(self) -> dict:
        return {
            "step": self.step, "stage_index": self.stage_index,
            "actor": dataclasses.asdict(self.actor.state),
            "sampler": self.sampler.state_dict(), "reset_trigger": self.trigger.state_dict(),
            "validation_history": self.history,
        }

    def save(self) -> Path:
        p = self.cfg.parallel
        meta = CheckpointMeta(tp=p.tensor_model_parallel_size, pp=p.pipeline_model_parallel_size,
                              dtype=dtypes.name_of(resolve_dtype(self.cfg.model)), family=self.arch.family)

        def write(tmp: Path) -> None:
            ckpt.save_actor(self.actor, tmp)
            ckpt.save_rng(tmp)
            ckpt.save_metadata(tmp, self.trainer_state(), to_yaml(self.cfg), self.hf_dir, meta)

        try:
            path = self.ckpts.save(self.step, write)
        except CheckpointWriteError as exc:
            raise CheckpointWriteError(f"checkpoint of step {self.step}: {exc}; the latest checkpoint is still "
                                       f"{self.last_checkpoint or 'none (no step checkpointed yet)'}") from exc
        self.last_checkpoint = path.name
        self.logger.log_event(self.step, f"checkpoint {path}")
        return path

    def _load(self, path: Path) -> None:
        point = resume.resume_point(path)
        self.config_changes = resume.config_changes(point, self.cfg, self.hf_config)
        resume.check_changes(point, self.config_changes)
        ckpt.load_actor(self.actor, path)
        self.resumed_from = path
        # Older checkpoints also hold the stage's "temperature" and "kl_beta": unused, the
        # stage of the step gives them.
        state = ckpt.load_trainer_state(path)
        self.step, self.stage_index = state["step"], state["stage_index"]
        a = state["actor"]
        self.actor.state = ActorState(**{**a, "resets": [ResetRecord(**r) for r in a["resets"]]})
        self.sampler.load_state_dict(state["sampler"])
        self.trigger.load_state_dict(state["reset_trigger"])
        self.history = state["validation_history"]
        log.info("resumed from %s at step %d", path, self.step)

    # ------------------------------------------------------------------ the end
    def summary(self) -> dict:
        """``before``: the validation at step 0; ``last_validation``: the latest one (at the
        final step of a finished run, earlier for a run stopped by a signal)."""
        before = next((h for h in self.history if h["step"] == 0), None)
        last = self.history[-1] if self.history else None
        return {"steps": self.step, "total_steps": self.total_steps, "stopped_by": self.stopped_by,
                "checkpoint": self.last_checkpoint, "before": before, "last_validation": last,
                "resets": [vars(r) for r in self.actor.state.resets]}

    def close(self) -> None:
        self.logger.close()
        self.weight_sync.close()
        if self.pool is not None:
            self.pool.close()
        if self.engine is not None:
            self.engine.shutdown()
