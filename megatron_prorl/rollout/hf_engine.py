"""The transformers engine: a Hugging Face causal LM driven by our own sampling loop.

It is the engine of the CPU path and the GPU fallback. The model is built from the HF config
alone (random weights) and receives its weights from the trainer as streamed buckets, so there
is no disk round trip. Generation is a batched loop over the model with a KV cache
(``DynamicCache``) rather than ``model.generate``, which keeps the recorded log-probs exact:
each is ``log_softmax(logits / T)`` at the sampled token, in float32 (see
:mod:`megatron_prorl.rollout.sampling` for top_p < 1).

Batching: all prompts x n samples form one batch (chunked by whole prompts when
``max_batch_size`` is set, the prompts then sorted longest first so that each chunk's prompts,
left-padded to its longest, carry little padding through the prefill and every decoding step's
attention over the cache; samples come back in the prompts' order). Each prompt is prefilled
once and its cache repeated n times; prompts are left-padded with position ids counted over real
tokens only; rows that finish are dropped from the batch (and its cache) so they cost nothing
afterwards. The same seed and the same inputs give the same outputs.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Iterable, Sequence

import torch
from transformers import AutoConfig, AutoModelForCausalLM, DynamicCache

from megatron_prorl.rollout.base import (
    Bucket,
    RolloutEngine,
    Sample,
    SamplingParams,
    SyncStats,
    check_prompts,
)
from megatron_prorl.rollout.sampling import sample_tokens

if TYPE_CHECKING:
    from megatron_prorl.config import RolloutConfig


def config_from_dict(hf_config: dict):
    """A transformers config object from a config.json dict."""
    cfg = dict(hf_config)
    model_type = cfg.pop("model_type", None)
    if not model_type:
        raise ValueError("hf_config has no 'model_type': cannot pick a transformers model class")
    return AutoConfig.for_model(model_type, **cfg)


class StateDictLoader:
    """Loads weights by HF name into a module, checking names and shapes and tracking which
    parameters a sync has covered. Names that share storage (tied embeddings) count as one:
    loading either marks both. Made per sync: moving the module (sleep/wake) may replace
    buffers."""

    def __init__(self, module: torch.nn.Module):
        self._targets = module.state_dict(keep_vars=True)
        by_storage: dict[tuple, list[str]] = {}
        for name, tensor in self._targets.items():
            by_storage.setdefault((tensor.untyped_storage().data_ptr(), tensor.storage_offset()), []).append(name)
        self._aliases = {name: names for names in by_storage.values() for name in names}
        self._loaded: set[str] = set()

    def load(self, name: str, tensor: torch.Tensor) -> None:
        target = self._targets.get(name)
        if target is None:
            raise KeyError(f"weight '{name}' is not a parameter of the engine model "
                           f"(expected HF names such as '{next(iter(self._targets))}')")
        if tuple(tensor.shape) != tuple(target.shape):
            raise ValueError(f"weight '{name}': shape {tuple(tensor.shape)} does not match the "
                             f"engine model's {tuple(target.shape)}")
        with torch.no_grad():
            target.copy_(tensor)
        self._loaded.update(self._aliases[name])

    def missing(self) -> list[str]:
        return [name for name in self._targets if name not in self._loaded]


class TransformersEngine(RolloutEngine):
    """``hf_config``: config.json as a dict; EOS ids end a response (finish "eos"); the pad id
    only fills left padding; ``max_batch_size`` caps rows (prompts x n) per forward."""

    def __init__(self, hf_config: dict, eos_token_ids: int | Sequence[int], pad_token_id: int | None = None,
                 device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                 max_batch_size: int | None = None):
        self.eos_token_ids = (eos_token_ids,) if isinstance(eos_token_ids, int) else tuple(eos_token_ids)
        if not self.eos_token_ids:
            raise ValueError("TransformersEngine needs at least one EOS token id")
        self.pad_token_id = self.eos_token_ids[0] if pad_token_id is None else pad_token_id
        self.device = torch.device(device)
        self.max_batch_size = max_batch_size
        with self.device:
            self.model = AutoModelForCausalLM.from_config(config_from_dict(hf_config), dtype=dtype)
        self.model.eval().requires_grad_(False)
        self._asleep = False

    @classmethod
    def from_rollout_config(cls, cfg: RolloutConfig, *, hf_config, hf_dir, eos_token_ids, pad_token_id, device, dtype):
        return cls(hf_config, eos_token_ids, pad_token_id, device=device, dtype=dtype,
                   max_batch_size=cfg.engine_max_batch_size)

    # ---- weights -------------------------------------------------------------------------

    def update_weights(self, buckets: Iterable[Bucket], *, complete: bool = True) -> SyncStats:
        """Copy each (hf_name, tensor) into the model. With ``complete`` (a full sync) every
        parameter must have been sent, else the sync is rejected naming what is missing."""
        stats = SyncStats()
        start = time.perf_counter()
        loader = StateDictLoader(self.model)
        for bucket in buckets:
            for name, tensor in bucket:
                loader.load(name, tensor)
                stats.tensors += 1
                stats.bytes += tensor.nbytes
            stats.buckets += 1
        if complete and (missing := loader.missing()):
            raise ValueError(f"weight sync incomplete: {len(missing)} engine parameters were not sent, "
                             f"e.g. {missing[:5]}")
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        stats.seconds = time.perf_counter() - start
        return stats

    # ---- memory --------------------------------------------------------------------------

    def sleep(self) -> None:
        """Park the weights in host memory so the trainer has the accelerator."""
        if self._asleep:
            return
        if self.device.type != "cpu":
            self.model.to("cpu")
            torch.cuda.empty_cache()
        self._asleep = True

    def wake(self) -> None:
        if not self._asleep:
            return
        self.model.to(self.device)
        self._asleep = False

    def shutdown(self) -> None:
        self.model = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    # ---- generation ----------------------------------------------------------------------

    def generate(self, prompt_ids: Sequence[Sequence[int]], params: SamplingParams) -> list[Sample]:
        if self.model is None:
            raise RuntimeError("TransformersEngine.generate after shutdown()")
        if self._asleep:
            raise RuntimeError("TransformersEngine.generate while asleep: call wake() first")
        check_prompts(prompt_ids)
        per_chunk = max(1, (self.max_batch_size or len(prompt_ids) * params.n) // params.n)
        generator = torch.Generator(device=self.device).manual_seed(params.seed)
        order = sorted(range(len(prompt_ids)), key=lambda i: (-len(prompt_ids[i]), i))
        if per_chunk >= len(prompt_ids):
            order = list(range(len(prompt_ids)))  # one batch: its padding is the same in any order
        samples: list[Sample] = []
        for first in range(0, len(prompt_ids), per_chunk):
            chunk = order[first:first + per_chunk]
            samples += self._generate_chunk([prompt_ids[i] for i in chunk], chunk, params, generator)
        return sorted(samples, key=lambda s: (s.prompt_index, s.sample_index))

    @torch.inference_mode()
    def _generate_chunk(self, prompts: Sequence[Sequence[int]], indices: Sequence[int], params: SamplingParams,
                        generator: torch.Generator) -> list[Sample]:
        """Samples of ``prompts`` (the prompts numbered ``indices`` in the call)."""
        n, dev = params.n, self.device
        eos = torch.tensor(self.eos_token_ids, device=dev)
        stops = torch.tensor(params.stop_token_ids, device=dev, dtype=torch.long)

        # Prefill each prompt once (left-padded), then repeat its cache and logits n times.
        longest = max(len(p) for p in prompts)
        input_ids = torch.full((len(prompts), longest), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), longest), dtype=torch.long)
        for i, ids in enumerate(prompts):
            input_ids[i, longest - len(ids):] = torch.as_tensor(ids, dtype=torch.long)
            mask[i, longest - len(ids):] = 1
        input_ids, mask = input_ids.to(dev), mask.to(dev)
        positions = (mask.cumsum(-1) - 1).clamp_(min=0)
        cache = DynamicCache(config=self.model.config)
        logits = self.model(input_ids=input_ids, attention_mask=mask, position_ids=positions,
                            past_key_values=cache, use_cache=True, logits_to_keep=1).logits[:, -1]
        if n > 1:
            cache.batch_repeat_interleave(n)
            logits = logits.repeat_interleave(n, dim=0)
            mask = mask.repeat_interleave(n, dim=0)
        next_pos = mask.sum(-1)

        rows = len(prompts) * n
        tokens = torch.full((rows, params.max_new_tokens), self.pad_token_id, dtype=torch.long, device=dev)
        logps = torch.zeros((rows, params.max_new_tokens), dtype=torch.float32, device=dev)
        lengths = torch.full((rows,), params.max_new_tokens, dtype=torch.long, device=dev)
        reasons = ["length"] * rows
        active = torch.arange(rows, device=dev)  # batch row -> output row

        for step in range(params.max_new_tokens):
            token, logp = sample_tokens(logits, params.temperature, params.top_p, generator)
            tokens[active, step] = token
            logps[active, step] = logp
            hit_eos = torch.isin(token, eos)
            done = hit_eos | torch.isin(token, stops)
            if done.any():
                for row, is_eos in zip(active[done].tolist(), hit_eos[done].tolist()):
                    lengths[row] = step + 1
                    reasons[row] = "eos" if is_eos else "stop"
                keep = (~done).nonzero().squeeze(-1)
                if keep.numel() == 0:
                    break
                active, token, mask, next_pos = active[keep], token[keep], mask[keep], next_pos[keep]
                cache.batch_select_indices(keep)
            if step + 1 == params.max_new_tokens:
                break
            mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=-1)
            logits = self.model(input_ids=token[:, None], attention_mask=mask, position_ids=next_pos[:, None],
                                past_key_values=cache, use_cache=True).logits[:, -1]
            next_pos = next_pos + 1

        tokens, logps, lengths = tokens.cpu(), logps.cpu(), lengths.tolist()
        return [Sample(prompt_index=indices[row // n], sample_index=row % n,
                       token_ids=tokens[row, :lengths[row]].tolist(), logprobs=logps[row, :lengths[row]].clone(),
                       finish_reason=reasons[row])
                for row in range(rows)]
