"""TensorRT-LLM engine (GPU): a thin adapter over the TensorRT-LLM LLM API.

Pinned release: the TensorRT-LLM 1.2 line, PyTorch backend (the default since 1.x; it loads a
Hugging Face directory directly, no engine build), at a release that includes processed
log-probs (NVIDIA/TensorRT-LLM#9675, merged January 2026); older ones are refused at start-up.
The calls used, as they stand in that line's source:

- ``tensorrt_llm.LLM(model=hf_dir, tensor_parallel_size=..., dtype=..., enable_sleep=True,
  orchestrator_type="ray",
  ray_worker_extension_cls="tensorrt_llm.llmapi.rlhf_utils.WorkerExtension")``;
  ``llm.generate(prompts, sampling_params)`` -> ``RequestOutput``s whose ``outputs[i]``
  (``CompletionOutput``) carry ``token_ids``, ``logprobs`` (``list[dict[int, Logprob]]`` or
  ``list[float]``), ``finish_reason`` ('stop' | 'length' | 'timeout' | 'cancelled') and
  ``stop_reason``; ``llm.shutdown()``.
- ``tensorrt_llm.SamplingParams(n, temperature, top_p, max_tokens, seed, stop_token_ids,
  include_stop_str_in_output, ignore_eos, logprobs, logprobs_mode, detokenize)``. Log-probs at
  the sampling temperature need ``logprobs_mode=LogprobMode.PROCESSED``
  (``tensorrt_llm.sampling_params.LogprobMode``, NVIDIA/TensorRT-LLM#9675): the default RAW
  mode reports temperature-1 log-probs, which is the known trainer/engine mismatch at T != 1.
  A release without ``LogprobMode`` is refused. ``logprobs=0`` asks for the sampled token's
  log-prob only (the vLLM convention these releases follow). PROCESSED log-probs are those of the
  temperature-scaled and top-p-truncated distribution: with top_p < 1 they differ from what
  the trainer recomputes (the transformers engine records the un-truncated ones); ProRL's
  top_p = 1 makes both the same.
- EOS: the executor stops at ``end_id`` but leaves it out of the output (NVIDIA/TensorRT-LLM
  #2190), so the terminating token and its log-prob would be lost. We sample with
  ``ignore_eos=True`` and put the EOS ids among ``stop_token_ids`` with
  ``include_stop_str_in_output=True``: every terminating token stays in the response, and
  ``stop_reason`` says which one fired.
- Weight refresh ``refit`` (default): ``llm._collective_rpc("update_weights", args=(payload,))``
  per bucket, ``payload = {device_uuid: [(hf_name, reduce_tensor(t)), ...]}`` (CUDA IPC), then
  once with ``None`` to finalise (``process_weights_after_loading``, prefix-cache reset).
  ``rebuild``: shut the LLM down, write the streamed weights as a Hugging Face directory,
  start a new LLM on it (minutes per refresh; for releases without in-place update).
- Sleep: ``llm._collective_rpc("sleep", args=(tags,))`` / ``("wakeup", ...)`` on the Ray
  workers (``enable_sleep=True``); memory tags as in ``tensorrt_llm._torch.virtual_memory``.

No machine here has TensorRT-LLM, so the adapter is kept thin and everything testable lives in
pure functions (sampling-parameter translation, result parsing, name filtering, IPC payload
building, the refit call sequence, launcher-environment scrubbing), covered by CPU tests.
``tensorrt_llm`` is imported only inside the constructor.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Mapping, MutableMapping, Sequence

import torch

from megatron_prorl.accelerator import missing_for_tensorrt_llm
from megatron_prorl.rollout.base import Bucket, RolloutEngine, Sample, SamplingParams, SyncStats, check_prompts
from megatron_prorl.rollout.hf_export import engine_named_tensors, write_hf_dir

if TYPE_CHECKING:
    from megatron_prorl.config import RolloutConfig

WORKER_EXTENSION = "tensorrt_llm.llmapi.rlhf_utils.WorkerExtension"
# Weights ("model") and KV cache: everything big. Weights are refitted after every wake.
DEFAULT_SLEEP_TAGS = ("kv_cache", "model")
# Launcher variables that make Ray/MPI inside TensorRT-LLM believe they run under srun/mpirun.
LAUNCHER_ENV_PREFIXES = ("PMI", "PMIX", "MPI", "OMPI", "SLURM")


# ---- pure parts (CPU-tested) ---------------------------------------------------------------

def sampling_kwargs(params: SamplingParams, eos_token_ids: Sequence[int], logprobs_mode: Any) -> dict[str, Any]:
    """Keyword arguments for ``tensorrt_llm.SamplingParams`` equivalent to ``params``."""
    stop_ids = sorted(set(eos_token_ids) | set(params.stop_token_ids))
    return dict(
        n=params.n,
        temperature=params.temperature,
        top_p=params.top_p,
        max_tokens=params.max_new_tokens,
        seed=params.seed,
        stop_token_ids=stop_ids,
        include_stop_str_in_output=True,
        ignore_eos=True,
        logprobs=0,  # the sampled token's log-prob only
        logprobs_mode=logprobs_mode,
        detokenize=False,
    )


def _token_logprob(entry: Any, token: int, where: str) -> float:
    if isinstance(entry, Mapping):
        if token not in entry:
            raise ValueError(f"{where}: the log-probs returned for this position do not include "
                             f"the sampled token {token} (got tokens {sorted(entry)[:5]})")
        entry = entry[token]
    return float(getattr(entry, "logprob", entry))


def _finish_reason(completion: Any, eos: set[int], stops: set[int], where: str) -> str:
    reason = completion.finish_reason
    if reason == "length":
        return "length"
    if reason != "stop":
        raise RuntimeError(f"{where}: generation ended with finish_reason={reason!r}")
    last = completion.token_ids[-1] if completion.token_ids else None
    if last in eos:
        return "eos"
    if last in stops:
        return "stop"
    raise ValueError(f"{where}: finish_reason 'stop' (stop_reason={completion.stop_reason!r}) but the last "
                     f"token {last} is neither EOS {sorted(eos)} nor a stop token {sorted(stops)}: the "
                     "terminating token was dropped (include_stop_str_in_output not honoured?)")


def parse_request_outputs(outputs: Sequence[Any], params: SamplingParams,
                          eos_token_ids: Sequence[int]) -> list[Sample]:
    """``RequestOutput``s (one per prompt, in prompt order) -> our samples."""
    eos, stops = set(eos_token_ids), set(params.stop_token_ids) - set(eos_token_ids)
    samples = []
    for p, request in enumerate(outputs):
        if len(request.outputs) != params.n:
            raise ValueError(f"prompt {p}: {len(request.outputs)} completions returned, expected n={params.n}")
        for s, completion in enumerate(request.outputs):
            where = f"prompt {p} sample {s}"
            token_ids = [int(t) for t in completion.token_ids]
            logprobs = completion.logprobs or []
            if len(logprobs) != len(token_ids):
                raise ValueError(f"{where}: {len(token_ids)} tokens but {len(logprobs)} log-probs "
                                 "(were log-probs requested?)")
            values = [_token_logprob(e, t, f"{where} position {i}") for i, (e, t) in enumerate(zip(logprobs, token_ids))]
            samples.append(Sample(prompt_index=p, sample_index=s, token_ids=token_ids,
                                  logprobs=torch.tensor(values, dtype=torch.float32),
                                  finish_reason=_finish_reason(completion, eos, stops, where)))
    return samples


def build_ipc_payload(bucket: Bucket, device_uuids: Mapping[str, torch.device],
                      reduce: Callable[[torch.Tensor], Any],
                      to_device: Callable[[torch.Tensor, torch.device], torch.Tensor]) -> tuple[dict, list]:
    """``{device_uuid: [(name, reduce(tensor on that device)), ...]}`` for one bucket: every
    engine rank gets the full tensors (TensorRT-LLM shards them itself). Returns the payload and
    the device copies, which must stay alive until the engine has read them."""
    payload: dict[str, list] = {}
    keep_alive: list[torch.Tensor] = []
    for uuid, device in device_uuids.items():
        handles = []
        for name, tensor in bucket:
            local = to_device(tensor, device)
            keep_alive.append(local)
            handles.append((name, reduce(local)))
        payload[uuid] = handles
    return payload, keep_alive


def refit(rpc: Callable[[str, Any], Any], buckets: Iterable[Bucket],
          make_payload: Callable[[Bucket], tuple[dict, list]]) -> SyncStats:
    """Send every bucket through ``rpc("update_weights", payload)``, then finalise with ``None``."""
    stats = SyncStats()
    start = time.perf_counter()
    for bucket in buckets:
        payload, keep_alive = make_payload(bucket)
        rpc("update_weights", payload)
        del payload, keep_alive
        stats.buckets += 1
        stats.tensors += len(bucket)
        stats.bytes += sum(t.nbytes for _, t in bucket)
    rpc("update_weights", None)
    stats.seconds = time.perf_counter() - start
    return stats


@contextmanager
def launcher_env_scrubbed(environ: MutableMapping[str, str]) -> Iterator[dict[str, str]]:
    """Without the srun/mpirun variables (PMI*, PMIX*, MPI*, OMPI*, SLURM*) inside the block,
    so the Ray workers started there do not take themselves for MPI ranks (what verl does);
    restored afterwards for the rest of the trainer. Yields what was removed."""
    removed = {k: v for k, v in environ.items() if k.startswith(LAUNCHER_ENV_PREFIXES)}
    for key in removed:
        del environ[key]
    try:
        yield removed
    finally:
        environ.update(removed)


# ---- the adapter (GPU only) ----------------------------------------------------------------

class TensorRTLLMEngine(RolloutEngine):
    """TensorRT-LLM on the Hugging Face directory ``hf_dir`` (config + tokenizer; its weights
    are replaced by the first sync). Colocated with training: engine rank r is expected on
    local GPU r, whose UUID keys its IPC handles (a worker elsewhere fails naming its UUID).
    Around training: ``sleep()``, train, ``wake()``, ``update_weights()``, ``generate()``."""

    def __init__(self, hf_dir: str | Path, hf_config: dict, eos_token_ids: int | Sequence[int],
                 refresh: str = "refit", tensor_parallel_size: int = 1, dtype: str = "auto",
                 export_dir: str | Path | None = None, sleep_tags: Sequence[str] = DEFAULT_SLEEP_TAGS,
                 llm_kwargs: dict | None = None):
        missing = missing_for_tensorrt_llm()
        if missing:
            raise RuntimeError(f"rollout.engine='tensorrt_llm' needs {missing}; "
                               "use rollout.engine='transformers' otherwise")
        if refresh not in ("refit", "rebuild"):
            raise ValueError(f"rollout.refresh={refresh!r}: expected 'refit' or 'rebuild'")
        import tensorrt_llm
        try:
            from tensorrt_llm.sampling_params import LogprobMode
        except ImportError:
            raise RuntimeError(
                f"tensorrt_llm {tensorrt_llm.__version__} has no LogprobMode: its log-probs ignore the "
                "sampling temperature. Use a release with processed log-probs (NVIDIA/TensorRT-LLM#9675)"
            ) from None
        from tensorrt_llm._torch.utils import get_device_uuid
        from torch.multiprocessing.reductions import reduce_tensor

        self._trtllm, self._reduce, self._logprobs_mode = tensorrt_llm, reduce_tensor, LogprobMode.PROCESSED
        self.eos_token_ids = (eos_token_ids,) if isinstance(eos_token_ids, int) else tuple(eos_token_ids)
        self.refresh, self.hf_config, self.dtype = refresh, hf_config, dtype
        self.tensor_parallel_size, self.sleep_tags = tensor_parallel_size, tuple(sleep_tags)
        self._source_dir = self._model_dir = Path(hf_dir)
        # rebuild: where the streamed weights are written for the next LLM to load.
        self._owns_export_dir = export_dir is None
        self._export_dir = Path(export_dir) if export_dir else Path(tempfile.mkdtemp(prefix="prorl_trtllm_"))
        self._llm_kwargs = dict(llm_kwargs or {})
        self._device_uuids = {get_device_uuid(i): torch.device("cuda", i) for i in range(tensor_parallel_size)}
        self._llm = self._launch(self._model_dir)
        self._weights_valid, self._closed = True, False

    @classmethod
    def from_rollout_config(cls, cfg: RolloutConfig, *, hf_config, hf_dir, eos_token_ids, pad_token_id, device, dtype):
        if hf_dir is None:
            raise ValueError("rollout.engine='tensorrt_llm' loads a Hugging Face directory; none was given")
        return cls(hf_dir, hf_config, eos_token_ids, refresh=cfg.refresh,
                   tensor_parallel_size=cfg.engine_tensor_parallel_size,
                   dtype={torch.bfloat16: "bfloat16", torch.float16: "float16", torch.float32: "float32"}.get(dtype, "auto"))

    def _launch(self, model_dir: Path):
        kwargs = dict(model=str(model_dir), tensor_parallel_size=self.tensor_parallel_size, dtype=self.dtype,
                      **self._llm_kwargs)
        if self.refresh == "rebuild":
            return self._trtllm.LLM(**kwargs)
        kwargs.update(orchestrator_type="ray", ray_worker_extension_cls=WORKER_EXTENSION, enable_sleep=True)
        with launcher_env_scrubbed(os.environ):
            return self._trtllm.LLM(**kwargs)

    def generate(self, prompt_ids: Sequence[Sequence[int]], params: SamplingParams) -> list[Sample]:
        if self._closed:
            raise RuntimeError("TensorRTLLMEngine.generate after shutdown()")
        if self.refresh == "rebuild" and self._llm is None:
            self._llm = self._launch(self._model_dir)  # woken lazily: a sync may rebuild it anyway
        if not self._weights_valid:
            raise RuntimeError("TensorRTLLMEngine.generate: its weights were released by sleep(); "
                               "call wake() and update_weights() first")
        check_prompts(prompt_ids)
        trt_params = self._trtllm.SamplingParams(**sampling_kwargs(params, self.eos_token_ids, self._logprobs_mode))
        prompts = [{"prompt_token_ids": [int(t) for t in ids]} for ids in prompt_ids]
        outputs = self._llm.generate(prompts, sampling_params=trt_params, use_tqdm=False)
        return parse_request_outputs(outputs, params, self.eos_token_ids)

    def update_weights(self, buckets: Iterable[Bucket]) -> SyncStats:
        tied = bool(self.hf_config.get("tie_word_embeddings", False))
        named = (engine_named_tensors(bucket, tied) for bucket in buckets)
        if self.refresh == "rebuild":
            return self._rebuild(named)

        def make_payload(bucket: Bucket) -> tuple[dict, list]:
            return build_ipc_payload(bucket, self._device_uuids, self._reduce,
                                     lambda t, d: t.to(d, non_blocking=True).contiguous())

        def rpc(method: str, payload: Any) -> None:
            torch.cuda.synchronize()  # device copies complete before another process maps them
            self._llm._collective_rpc(method, args=(payload,))

        stats = refit(rpc, named, make_payload)
        self._weights_valid = True
        return stats

    def _rebuild(self, named: Iterable[Bucket]) -> SyncStats:
        start = time.perf_counter()
        if self._llm is not None:
            self._llm.shutdown()
            self._llm = None
        stats = write_hf_dir(self._export_dir, self.hf_config, named, copy_from=self._source_dir)
        self._model_dir = self._export_dir
        self._llm = self._launch(self._model_dir)
        stats.seconds = time.perf_counter() - start
        return stats

    def sleep(self) -> None:
        if self.refresh == "rebuild":  # the whole LLM goes; generate() or the next sync restarts it
            if self._llm is not None:
                self._llm.shutdown()
                self._llm = None
            return
        self._llm._collective_rpc("sleep", args=(list(self.sleep_tags),))
        self._weights_valid = "model" not in self.sleep_tags

    def wake(self) -> None:
        if self.refresh == "refit":
            self._llm._collective_rpc("wakeup", args=(list(self.sleep_tags),))

    def shutdown(self) -> None:
        self._closed = True
        if self._llm is not None:
            self._llm.shutdown()
            self._llm = None
        if self._owns_export_dir:
            shutil.rmtree(self._export_dir, ignore_errors=True)
