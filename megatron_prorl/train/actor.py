"""The policy and its frozen reference on Megatron-Core: log-probs and the ProRL update.

One ``PolicyActor`` per rank. Policy and reference share the parallel layout (same TP x PP
shards), so a reference reset is a local copy. Every rank of a data-parallel replica holds the
same ``TrainBatch`` (its share of the rollouts); log-probs live on the last pipeline stage, and
metrics are broadcast so every rank returns the same numbers. The settings a training stage
changes (temperature, KL coefficient) come with each call; the config is only read, and the
loss's settings (``cfg.algo``) only once, into ``self.objective``.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from megatron_prorl.runtime import device
from megatron_prorl.algo import MAX_METRICS, PolicyObjective, normalisers
from megatron_prorl.train.batch import (TrainBatch, balanced_partition, flatten, scatter_rows, sequence_work,
                                        unflatten, unpack)
from megatron_prorl.config import ProRLConfig
from megatron_prorl.models.builder import HFArch, build_gpt_model, padded_vocab_size, resolve_dtype
from megatron_prorl.models.logprobs import token_logprobs
from megatron_prorl.models.pipeline import finalize_grads, run_pipeline

log = logging.getLogger(__name__)


class NonFiniteError(RuntimeError):
    """Too many consecutive updates had a non-finite loss or gradient."""


def lr_at(update: int, lr: float, schedule: str, warmup_steps: int) -> float:
    """Learning rate for optimizer update number ``update`` (0-based)."""
    if schedule == "warmup_constant" and warmup_steps > 0:
        return lr * min(1.0, (update + 1) / warmup_steps)
    return lr


@dataclass
class ResetRecord:
    step: int
    reason: str
    optimizer_reset: bool


@dataclass
class ActorState:
    """What a checkpoint needs besides the model and optimizer tensors."""

    updates: int = 0
    consecutive_nonfinite: int = 0
    skipped_updates: int = 0
    resets: list[ResetRecord] = field(default_factory=list)


class PolicyActor:
    def __init__(self, cfg: ProRLConfig, arch: HFArch):
        from megatron.core import parallel_state as ps
        from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig

        self.cfg, self.arch = cfg, arch
        self.objective = PolicyObjective.from_config(cfg.algo)
        self.state = ActorState()
        tp = cfg.parallel.tensor_model_parallel_size
        self._vocab_start = ps.get_tensor_model_parallel_rank() * padded_vocab_size(arch.vocab_size, tp) // tp
        self._is_last_stage = ps.is_pipeline_last_stage()
        self._use_dist_opt = (cfg.parallel.use_distributed_optimizer
                              if cfg.parallel.use_distributed_optimizer is not None else torch.cuda.is_available())

        module = build_gpt_model(arch, cfg.model, cfg.parallel)
        ddp_config = DistributedDataParallelConfig(
            grad_reduce_in_fp32=True, overlap_grad_reduce=False,
            use_distributed_optimizer=self._use_dist_opt)
        self.policy = DistributedDataParallel(module.config, ddp_config, module)
        module.config.finalize_model_grads_func = finalize_grads

        self.reference = build_gpt_model(arch, cfg.model, cfg.parallel)
        self.reference.eval()
        self.reference.requires_grad_(False)
        self.optimizer = self._build_optimizer()
        self._loss_scaled = resolve_dtype(cfg.model) == torch.float16
        self.sync_reference()
        self._offload_reference()

    # ----------------------------------------------------------------------------- set-up
    def _build_optimizer(self):
        from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

        o, dtype = self.cfg.optim, resolve_dtype(self.cfg.model)
        opt_config = OptimizerConfig(
            optimizer="adam", lr=o.lr, weight_decay=o.weight_decay, adam_beta1=o.adam_beta1,
            adam_beta2=o.adam_beta2, adam_eps=o.adam_eps, clip_grad=o.clip_grad,
            bf16=dtype == torch.bfloat16, fp16=dtype == torch.float16, params_dtype=dtype,
            use_distributed_optimizer=self._use_dist_opt)
        optimizer = get_megatron_optimizer(opt_config, [self.policy])
        self.policy.module.config.grad_scale_func = optimizer.scale_loss
        return optimizer

    def optimizer_is_fresh(self) -> bool:
        """No step taken since the optimizer was built (its state holds nothing)."""
        return all(len(opt.optimizer.state) == 0
                   for opt in getattr(self.optimizer, "chained_optimizers", [self.optimizer]))

    def reinitialise_optimizer(self) -> None:
        self.optimizer = self._build_optimizer()

    @property
    def policy_module(self):
        """The GPTModel inside the DDP wrapper (what checkpoints and weight export read)."""
        return self.policy.module

    # ------------------------------------------------------------------------ log-probs
    def _micro_batches(self, batch: TrainBatch, logprob_pass: bool) -> list[dict]:
        """The pass's micro-batches: by token budget (packed or not) or micro_batch_size rows."""
        b = self.cfg.batch
        budget = b.max_tokens_per_micro_batch
        if logprob_pass and b.max_tokens_per_logprob_micro_batch is not None:
            budget = b.max_tokens_per_logprob_micro_batch
        if budget is None:
            return batch.micro_batches(b.micro_batch_size)
        return batch.budget_micro_batches(budget, b.pack_sequences)

    def _loss_inputs(self, mb: dict, logits: torch.Tensor, temperature: float):
        """(log-probs, entropy) of the micro-batch's rows, [rows, w] as its per-token tensors."""
        logprobs, entropy = token_logprobs(logits, mb["input_ids"], self._vocab_start, self.arch.vocab_size,
                                           temperature, self.cfg.model.logprob_chunk_tokens)
        return unpack(logprobs, mb), unpack(entropy, mb)

    def forward_logprobs(self, batch: TrainBatch, temperature: float, model: str = "policy"):
        """(log-probs, entropy), each [N, S-1] at the rollout ``temperature``, on the last
        pipeline stage; (None, None) on the others."""
        if model not in ("policy", "reference"):
            raise ValueError(f"model={model!r}: expected 'policy' or 'reference'")
        zero = torch.zeros(())

        def loss_fn(mb, logits):
            logprobs, entropy = self._loss_inputs(mb, logits, temperature)
            return zero, {"logprobs": logprobs, "entropy": entropy}

        net = self.policy if model == "policy" else self.reference
        was_training = net.training
        net.eval()
        micro_batches = self._micro_batches(batch, logprob_pass=True)
        with torch.no_grad(), self._reference_on_device(model == "reference"):
            out = run_pipeline(net, micro_batches, loss_fn, forward_only=True)
        net.train(was_training)
        if not self._is_last_stage:
            return None, None
        return tuple(scatter_rows(micro_batches, [o[k] for o in out], batch.loss_mask) for k in ("logprobs", "entropy"))

    # ---------------------------------------------------------------- data-parallel balance
    def balance(self, batch: TrainBatch) -> TrainBatch:
        """This rank's share of the step after dealing every mini-batch's sequences anew over the
        data-parallel ranks, each share about the same work (:func:`~megatron_prorl.train.batch.
        sequence_work`, Karmarkar-Karp); the rows of each optimizer update, over all ranks, stay
        the same rows, so the update is the same. Every rank of a replica gets the same batch.
        Only with a token budget (fixed micro-batches pad every row to the same length, so rows
        cost the same) and more than one data-parallel rank; a mini-batch with fewer rows than
        ranks keeps its rows where they are."""
        b = self.cfg.batch
        group = _dp_group()
        dp = dist.get_world_size(group)
        if dp == 1 or (b.max_tokens_per_micro_batch is None and b.max_tokens_per_logprob_micro_batch is None):
            return batch
        num_updates = self._num_updates()
        mine = torch.empty(len(batch), dtype=torch.long, device=batch.input_ids.device)
        for k, idx in enumerate(batch.mini_batches(num_updates)):
            mine[idx] = k
        flat = flatten(batch)
        flat["mini_batch"] = mine
        gathered = {name: _all_gather_1d(t, group) for name, t in flat.items()}
        flat, rows_per_rank = {name: t for name, (t, _) in gathered.items()}, gathered["lengths"][1]
        a = self.arch
        per_token = a.num_layers * a.hidden_size * (
            (a.num_heads + 2 * a.num_query_groups) * a.head_dim + a.num_heads * a.head_dim + 3 * a.ffn_hidden_size
        ) + a.hidden_size * a.vocab_size
        work = sequence_work(flat["lengths"].tolist(), per_token, a.num_layers * a.num_heads * a.head_dim)
        owner = [r for r, n in enumerate(rows_per_rank) for _ in range(n)]
        rank, rows = dist.get_rank(group), []
        for k in range(num_updates):
            idx = (flat["mini_batch"] == k).nonzero().squeeze(-1).tolist()
            if len(idx) < dp:
                rows += [i for i in idx if owner[i] == rank]
                continue
            rows += [idx[j] for j in balanced_partition([work[i] for i in idx], dp)[rank]]
        return unflatten(flat, rows)

    def _num_updates(self) -> int:
        b = self.cfg.batch
        return b.prompts_per_step // b.prompts_per_mini_batch

    # --------------------------------------------------------------------------- update
    def update(self, batch: TrainBatch, temperature: float, kl_beta: float) -> dict[str, float]:
        """Mini-batch updates over this rank's batch: prompts_per_step / prompts_per_mini_batch
        optimizer steps. ``batch.old_logprobs`` must be set (the policy's own, before this call);
        ``ref_logprobs`` when ``kl_beta`` > 0. Returns metrics averaged over the mini-batches."""
        if batch.old_logprobs is None and self._is_last_stage:
            raise ValueError("TrainBatch.old_logprobs is None: compute them with forward_logprobs first")
        per_update = [self._update_mini_batch(batch.select(idx), temperature, kl_beta)
                      for idx in batch.mini_batches(self._num_updates())]
        return {k: sum(m[k] for m in per_update) / len(per_update) for k in per_update[0]}

    def _update_mini_batch(self, mb: TrainBatch, temperature: float, kl_beta: float) -> dict[str, float]:
        o = self.cfg.optim
        metrics = self.forward_backward(mb, temperature, kl_beta)
        # With fp16 the grad scaler checks the gradients itself in step() (inf/NaN there is an
        # overflow of the loss scale, which it then backs off); otherwise they are checked here.
        if not (self._all_finite(metrics) and (self._loss_scaled or self._grads_finite())):
            self.state.consecutive_nonfinite += 1
            self.state.skipped_updates += 1
            log.warning("non-finite loss or gradient: update skipped (%d in a row)",
                        self.state.consecutive_nonfinite)
            if self.state.consecutive_nonfinite >= o.max_consecutive_nonfinite:
                raise NonFiniteError(
                    f"{self.state.consecutive_nonfinite} consecutive updates had a non-finite loss or "
                    f"gradient (optim.max_consecutive_nonfinite={o.max_consecutive_nonfinite}); last "
                    f"metrics: {metrics}. Lower optim.lr or check the data and rewards.")
            self.optimizer.zero_grad()
            return {**metrics, "grad_norm": float("nan"), "lr": 0.0, "update_skipped": 1.0}

        lr = lr_at(self.state.updates, o.lr, o.lr_schedule, o.lr_warmup_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        stepped, grad_norm, _ = self.optimizer.step()
        if not stepped:  # fp16: the scaler found inf/NaN gradients, skipped the step, backed off
            self.state.skipped_updates += 1
            log.warning("fp16 gradients overflowed: update skipped, loss scale now %g", self.optimizer.get_loss_scale())
            return {**metrics, "grad_norm": float("nan"), "lr": 0.0, "update_skipped": 1.0}
        self.state.updates += 1
        self.state.consecutive_nonfinite = 0
        return {**metrics, "grad_norm": float("nan") if grad_norm is None else float(grad_norm), "lr": lr,
                "update_skipped": 0.0}

    def forward_backward(self, mb: TrainBatch, temperature: float, kl_beta: float) -> dict[str, float]:
        """Loss and gradients of one mini-batch (grads left in the DDP buffers, reduced over DP);
        returns the loss metrics, identical on every rank."""
        counts = torch.stack([c.float() for c in normalisers(mb.loss_mask)])
        dist.all_reduce(counts, group=_dp_group())
        num_tokens, num_seqs = counts[0].clamp(min=1), counts[1].clamp(min=1)

        def loss_fn(m, logits):
            logprobs, entropy = self._loss_inputs(m, logits, temperature)
            return self.objective(
                logprobs, m["old_logprobs"], m["advantages"], m["loss_mask"], kl_beta=kl_beta,
                ref_logprobs=m.get("ref_logprobs"), entropy=entropy, engine_logprobs=m.get("engine_logprobs"),
                num_tokens=num_tokens, num_seqs=num_seqs)

        self.policy.train()
        self.policy.zero_grad_buffer()
        self.optimizer.zero_grad()
        out = run_pipeline(self.policy, self._micro_batches(mb, logprob_pass=False), loss_fn, forward_only=False)
        return self._reduce_metrics(out)

    def _reduce_metrics(self, out: list[dict]) -> dict[str, float]:
        """Sum micro-batch shares (max for MAX_METRICS), reduce over DP, share over PP."""
        from megatron.core import parallel_state as ps

        names = sorted(out[0]) if out else []
        src = ps.get_pipeline_model_parallel_last_rank()
        # Non-last stages do not know the names: take them from the last stage first.
        holder = [names]
        dist.broadcast_object_list(holder, src=src, group=ps.get_pipeline_model_parallel_group())
        names = holder[0]
        is_max = torch.tensor([n in MAX_METRICS for n in names], device=device.current())
        values = torch.zeros(len(names), dtype=torch.float64, device=device.current())
        if out:
            stacked = torch.stack([torch.stack([m[n].detach().double() for n in names]) for m in out])
            values = torch.where(is_max, stacked.max(0).values, stacked.sum(0))
        sums, maxes = values * ~is_max, torch.where(is_max, values, torch.full_like(values, -torch.inf))
        dist.all_reduce(sums, group=_dp_group())
        dist.all_reduce(maxes, op=dist.ReduceOp.MAX, group=_dp_group())
        reduced = torch.where(is_max, maxes, sums)
        dist.broadcast(reduced, src=src, group=ps.get_pipeline_model_parallel_group())
        return {n: float(v) for n, v in zip(names, reduced)}

    @staticmethod
    def _all_finite(metrics: dict[str, float]) -> bool:
        return all(torch.isfinite(torch.tensor(v)) for v in metrics.values())

    def _grads_finite(self) -> bool:
        bad = torch.zeros(1, device=device.current())
        for p in self.policy.parameters():
            grad = getattr(p, "main_grad", None)
            if grad is not None and not torch.isfinite(grad).all():
                bad += 1
                break
        dist.all_reduce(bad, op=dist.ReduceOp.MAX)  # every rank skips together
        return bad.item() == 0

    # ---------------------------------------------------------------------------- reset
    def reset_reference(self, step: int, reason: str) -> ResetRecord:
        """Copy the policy into the reference; re-initialise the optimizer if configured."""
        self.sync_reference()
        if self.cfg.reset.reset_optimizer:
            self.reinitialise_optimizer()
        record = ResetRecord(step=step, reason=reason, optimizer_reset=self.cfg.reset.reset_optimizer)
        self.state.resets.append(record)
        log.info("reference reset at step %d (%s)%s", step, reason,
                 "; optimizer state re-initialised" if record.optimizer_reset else "")
        return record

    @torch.no_grad()
    def sync_reference(self) -> None:
        """Make the reference an exact copy of the policy (start-up, and every reset)."""
        with self._reference_on_device(True):
            for ref, pol in zip(self.reference.parameters(), self.policy_module.parameters(), strict=True):
                ref.copy_(pol)

    # --------------------------------------------------------------- reference offload
    @contextlib.contextmanager
    def _reference_on_device(self, needed: bool):
        """Bring an offloaded reference to the GPU for the duration of a use."""
        if needed and self._offloads():
            self.reference.to(device.current())
        try:
            yield
        finally:
            if needed:
                self._offload_reference()

    def _offloads(self) -> bool:
        return self.cfg.model.offload_reference and torch.cuda.is_available()

    def _offload_reference(self) -> None:
        if self._offloads():
            self.reference.to(device.HOST)
            torch.cuda.empty_cache()


def _dp_group():
    from megatron.core import parallel_state as ps

    return ps.get_data_parallel_group()


def _all_gather_1d(t: torch.Tensor, group) -> tuple[torch.Tensor, list[int]]:
    """Every rank's 1-D ``t`` (of any length) concatenated in rank order, and each rank's length."""
    sizes = [torch.zeros(1, dtype=torch.long, device=t.device) for _ in range(dist.get_world_size(group))]
    dist.all_gather(sizes, torch.tensor([t.numel()], device=t.device), group=group)
    longest = max(int(n) for n in sizes)
    padded = torch.cat([t, t.new_zeros(longest - t.numel())])
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded, group=group)
    return torch.cat([p[:int(n)] for p, n in zip(parts, sizes)]), [int(n) for n in sizes]
