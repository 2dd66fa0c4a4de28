"""TensorRT-LLM engine (GPU): a thin adapter over the TensorRT-LLM LLM API, pinned to one release.

Release: TensorRT-LLM **1.3.0rc24** (``TARGET_RELEASE``; the NGC image
``nvcr.io/nvidia/tensorrt-llm/release:1.3.0rc24``), PyTorch backend. Any other installed version is
refused at start with both versions named, before ``tensorrt_llm`` is imported. It is the newest
release whose source is readable here and has all three things RL needs: post-temperature
log-probs (``LogprobMode.PROCESSED``), in-place refit (``update_weights`` over ``_collective_rpc``
on Ray workers) and sleep/wake (``sleep_config``, which replaced 1.2.x's ``enable_sleep`` flag).

Every call, and where it was read (``1.3.0rc24/_modules/tensorrt_llm/...`` are that release's
documentation sources in NVIDIA/TensorRT-LLM's gh-pages; "stored" files are the copy of the
repository file the search index holds, commit given, release not known - rc24 publishes no page
for them):

- ``importlib.metadata.version("tensorrt_llm")``: the check, without importing.
- ``import tensorrt_llm``: in a scrubbed environment (:mod:`megatron_prorl.runtime.launcher_env`),
  because the import initialises MPI (stored ``tensorrt_llm/_utils.py``).
- ``tensorrt_llm.sampling_params.LogprobMode.PROCESSED`` (rc24 ``sampling_params.html``:
  "log probabilities after applying sampling parameters, such as temperature, top-k, top-p").
- ``tensorrt_llm.SamplingParams(n, temperature, top_p, top_k=0, min_p=0.0,
  repetition_penalty=1.0, no_repeat_ngram_size=0, max_tokens, seed, end_id=-1, pad_id,
  stop_token_ids, include_stop_str_in_output=True, logprobs=0, logprobs_simple_format=True,
  logprobs_mode, detokenize=False)`` (rc24 ``sampling_params.html``): ``logprobs=0`` is the
  sampled token's log-prob (``return_log_probs = self.logprobs is not None`` on the PyTorch
  backend), ``logprobs_simple_format`` returns it as ``list[float]``. top_k, min_p,
  repetition_penalty and no_repeat_ngram_size are pinned because ``LLM._prepare_sampling_params``
  fills every unset field of ``_GENERATION_CONFIG_SAMPLING_FIELDS`` from generation_config.json
  (rc24 ``llmapi/llm.html``), which would change the distribution the trainer recomputes.
  PROCESSED log-probs are those of the temperature-scaled, top-p-truncated distribution: at
  top_p < 1 they differ from the transformers engine's un-truncated ones; ProRL uses top_p = 1.
- EOS: ``SamplingParams._setup`` sets ``end_id`` from the tokenizer when it is None and appends
  every generation_config EOS id other than ``end_id`` to ``stop_token_ids`` (rc24
  ``sampling_params.html``); a stop by ``end_id`` drops the token from the output, a stop word
  keeps it when ``include_stop_str_in_output`` and sets ``stop_reason`` to the id (stored
  ``tensorrt_llm/executor/result.py`` at 005bc848, ``_handle_sequence``). So ``end_id=-1`` (as
  verl's ``trtllm_async_server.py`` does) and all EOS ids - the tokenizer's and
  generation_config.json's - are stop tokens: every terminating token and its log-prob stay in
  the response, and :func:`finish_reason` names it "eos" or "stop" from ``stop_reason``.
- ``tensorrt_llm.LLM(model, tensor_parallel_size, dtype, orchestrator_type="ray",
  allreduce_strategy="NCCL", kv_cache_config=KvCacheConfig(free_gpu_memory_fraction=...),
  ray_worker_extension_cls=WORKER_EXTENSION, sleep_config=SleepConfig())`` (rc24
  ``llmapi/llm.html`` ``BaseLLM.__init__``: unknown keys are refused; rc24 ``llmapi/llm_args.html``
  ``TorchLlmArgs``: ``orchestrator_type: Literal["rpc", "ray"]``, ``ray_worker_extension_cls``,
  ``sleep_config: Optional[SleepConfig]``, ``allreduce_strategy``; ``KvCacheConfig``:
  ``free_gpu_memory_fraction`` default 0.9, in [0, 1]; ``max_gpu_total_bytes: NonNegativeInt``
  default 0, "If both `max_gpu_total_bytes` and `free_gpu_memory_fraction` are specified, memory
  corresponding to the minimum will be allocated"). ``allreduce_strategy="NCCL"`` is what
  rc24's ``AsyncLLM.__init__`` forces for RL ("a bug in TRTLLM's AllReduce which will cause
  convergence issue", rc24 ``_torch/async_llm.html``).
- ``llm.generate(prompts, sampling_params=..., use_tqdm=False)`` with
  ``{"prompt_token_ids": [...]}`` prompts -> ``RequestOutput``s whose ``outputs`` are
  ``CompletionOutput(token_ids, logprobs, finish_reason, stop_reason)`` (rc24 ``llmapi/llm.html``;
  fields: stored ``executor/result.py``). ``llm.shutdown()`` (rc24 ``llmapi/llm.html``).
- ``llm._collective_rpc(method, args=(...))`` ("Currently, this is only supported for
  RayExecutor", rc24 ``llmapi/llm.html``) with methods ``"update_weights"`` (payload
  ``{device_uuid: [(name, reduce_tensor(t)), ...]}`` per bucket, then ``None`` to finalise:
  ``process_weights_after_loading``, prefix-cache reset; stored ``llmapi/rlhf_utils.py`` at
  04762f3b: the worker looks up ``get_device_uuid(self.device_id)`` and rebuilds each handle on its
  own device), ``"sleep"`` / ``"wakeup"`` with a list of memory tags (what rc24's
  ``AsyncLLM.release`` / ``resume`` send, ``_torch/async_llm.html``; the sync ``LLM`` of rc24 has
  no ``release``/``resume``), and ``"report_device_id"`` (stored ``executor/ray_gpu_worker.py`` at
  0acd798d, ``RayWorkerWrapper``: the worker's GPU UUID).
- ``tensorrt_llm.llmapi.llm_args.ExecutorMemoryType`` (the sleep tags; rc24 ``SleepConfig`` keys
  its ``restore_modes`` by it) and ``tensorrt_llm._torch.utils.get_device_uuid`` ("GPU-" + the
  torch device UUID; stored ``_torch/utils.py``), used on both sides of the IPC refit.

Placement (DP > 1 engines per node). Each engine rank runs its engine on its own GPU(s). Ray
would otherwise hand out GPUs by its own count: separate Ray instances each start at GPU 0, a
shared one assigns them in arrival order, and the IPC handles then name a UUID no worker has
("Device UUID ... not found") - or every engine lands on GPU 0. verl and NeMo-RL pin by putting
trainer and engine actors in the same Ray placement-group bundle; here the trainer is not a Ray
actor, so the adapter pins the other way NeMo-RL supports for colocated runs (one local Ray
cluster per ``CUDA_VISIBLE_DEVICES``, ``virtual_cluster.py::init_ray``): it starts a private Ray
instance with ``CUDA_VISIBLE_DEVICES`` = exactly this engine's physical GPUs (Ray offers only
those and ``ray.get_gpu_ids()`` returns their ids, docs.ray.io "Accelerator Support";
TensorRT-LLM's ``RayWorkerWrapper`` maps that id through ``CUDA_VISIBLE_DEVICES`` to its device,
stored ``ray_gpu_worker.py``), then asks the workers which UUIDs they run on and refuses a
mismatch. ``RayExecutor`` attaches to a Ray already initialised in the process
(``ray.init(..., ignore_reinit_error=True)``, stored ``executor/ray_executor.py`` at 0777969c).

Memory. ``rollout.kv_cache_memory_fraction`` becomes ``KvCacheConfig.free_gpu_memory_fraction``,
``rollout.kv_cache_max_bytes`` (when set) ``KvCacheConfig.max_gpu_total_bytes``; the smaller of the
two sizes is what the cache takes (rc24 ``llm_args.html``, quoted above). The trainer returns its
allocator's cached blocks (``torch.cuda.empty_cache``) before it calls ``wake()``.
``sleep()`` releases every ``ExecutorMemoryType`` tag: the model weights (kept in host memory by
``SleepConfig``'s default restore mode; overwritten by the refit after ``wake()`` anyway), the KV
cache (discarded; re-mapped empty at the same addresses and size on wake), and the
sampler/executor/decoder buffers. The Ray worker processes, their CUDA contexts and NCCL
communicators stay. ``wake()`` re-maps them; ``generate`` then needs ``update_weights`` first.

Request order. Each round's prompts go to one ``llm.generate`` call, unsorted: the PyTorch
backend batches in flight, choosing at every step which requests run (its scheduler: a
capacity scheduler for the KV cache, then a micro-batch scheduler under ``max_batch_size`` and
``max_num_tokens``, rc24 ``TorchLlmArgs`` defaults 2048 and 8192; docs ``torch/scheduler.html``,
read at 1.4.0rc4 and unversioned, rc24's copy not found), with the tokens of every request packed
without padding (docs ``features/paged-attention-ifb-scheduler.html``: in-flight batching
"requires the input tensors to be packed (no padding)"). Sorting or bucketing prompts by length
would change nothing there; the transformers engine, which pads, sorts its chunks itself.

GPU-only assumptions nothing here could check (upstream file and version read for each):

1. ``SleepConfig()`` with defaults is valid and every ``ExecutorMemoryType`` value is a tag the
   workers' ``sleep``/``wakeup`` accept (rc24 ``llm_args.html`` shows the ``sleep_config`` field
   but the index's page did not reveal the class body; verl ``trtllm_rollout.py`` releases all
   tags at 1.3.0rc15; NeMo-RL ``trtllm_worker_async.py`` imports ``SleepConfig`` and
   ``ExecutorMemoryType`` from ``tensorrt_llm.llmapi.llm_args``).
2. The rc24 worker implementation of ``update_weights`` (``rlhf_utils.py``), ``sleep``/``wakeup``
   and ``report_device_id`` matches the stored copies named above (rc24 has no page for them; the
   index also holds a newer ``executor/ray/`` layout). Without ``report_device_id`` the placement
   check is skipped with a warning.
3. The stored ``RayWorkerWrapper`` reads ``MASTER_PORT`` from its environment for the workers'
   rendezvous; the adapter gives each engine a free one (the newer stored layout,
   ``executor/ray/gpu_worker.py``, lets its rank 0 pick a TCPStore port instead and never reads it).
4. A private Ray instance per engine rank, started with ``address="local"`` and the engine's
   ``CUDA_VISIBLE_DEVICES``, runs beside the others on the node (NeMo-RL does this for colocated
   local clusters; Ray docs ``ray.get_gpu_ids``); the image installs ray 2.54.1 (pyproject.toml's
   ``trtllm`` extra, where the version is argued): both stored executor layouts import names
   ray 2.54.1 has (checked in its wheel), rc24's own was not readable.
5. CUDA IPC handles of the trainer's tensors open in the Ray workers on the same GPU (the
   trainer's caching allocator must allow IPC, e.g. no ``expandable_segments``).
6. The TorchSampler (``sampler_type="auto"``, rc24 ``llm_args.html``) computes PROCESSED
   log-probs as ``log_softmax(logits / T)`` at top_p = 1, top_k = 0; per-request ``seed`` is
   honoured only from NVIDIA/TensorRT-LLM#17172 (2026-08), whose presence in rc24 is unknown.
7. ``end_id=-1`` disables the executor's own EOS stop on the PyTorch backend, so only stop words
   end a response (verl relies on the same at rc15; stored ``result.py``).
8. ``free_gpu_memory_fraction`` is taken of the memory free once the weights are loaded, and the
   KV cache re-mapped on wake has the same size (rc24 ``llm_args.html`` describes it only as the
   fraction "allocated for the KV cache"); ``max_gpu_total_bytes`` caps the same allocation.
9. ``import tensorrt_llm`` with the launcher variables removed gives a singleton MPI that does not
   touch the job's PMIx server (stored ``_utils.py`` at 000a01de, a 1.0.0rc4 tree, initialises
   ``MPI.COMM_WORLD`` at import; whether rc24 honours ``TLLM_DISABLE_MPI`` there is unknown; the
   adapter sets it and scrubs, so both cases are covered).

No machine here has TensorRT-LLM, so everything testable lives in pure functions (sampling
parameters, EOS ids, finish reasons, result parsing, release check, LLM arguments, placement
check, IPC payload, refit call sequence) covered by CPU tests; ``tensorrt_llm`` and ``ray`` are
imported only when an engine is built.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, MutableMapping, Sequence

import torch

from megatron_prorl.rollout.base import (Bucket, RolloutEngine, Sample, SamplingParams, SyncStats, check_prompts,
                                         generation_config_eos)
from megatron_prorl.rollout.hf_export import engine_named_tensors, write_hf_dir
from megatron_prorl.runtime.accelerator import missing_for_tensorrt_llm
from megatron_prorl.runtime.distributed import free_port
from megatron_prorl.runtime.launcher_env import applied, engine_environment, import_environment, physical_gpu_ids

if TYPE_CHECKING:
    from megatron_prorl.config import RolloutConfig

log = logging.getLogger(__name__)

TARGET_RELEASE = "1.3.0rc24"
WORKER_EXTENSION = "tensorrt_llm.llmapi.rlhf_utils.WorkerExtension"
# Keys of TorchLlmArgs (rc24 llm_args.html) the adapter sets; llm_kwargs is checked against it.
LLM_ARGS_USED = frozenset({
    "model", "tensor_parallel_size", "dtype", "orchestrator_type", "allreduce_strategy",
    "kv_cache_config", "ray_worker_extension_cls", "sleep_config",
})
# A private Ray instance needs little object store: only the small IPC handles travel through it.
RAY_OBJECT_STORE_BYTES = 1 << 30


# ---- pure parts (CPU-tested) ---------------------------------------------------------------

def check_release(installed: str | None) -> None:
    """Refuse any TensorRT-LLM but :data:`TARGET_RELEASE` (a local ``+build`` suffix is allowed)."""
    if installed is None:
        raise RuntimeError(f"rollout.engine='tensorrt_llm' needs TensorRT-LLM {TARGET_RELEASE}; "
                           "the 'tensorrt_llm' package is not installed")
    if installed.split("+")[0] != TARGET_RELEASE:
        raise RuntimeError(f"TensorRT-LLM {installed} is installed but this adapter is written against "
                           f"{TARGET_RELEASE} (log-prob mode, sleep config and refit RPCs differ between "
                           f"releases); install {TARGET_RELEASE} or use rollout.engine='transformers'")


def installed_release() -> str | None:
    """The installed ``tensorrt_llm`` distribution's version, read without importing it."""
    try:
        return importlib.metadata.version("tensorrt_llm")
    except importlib.metadata.PackageNotFoundError:
        return None


def missing_here() -> str:
    """Why this adapter cannot run on this machine ("" when it can): CUDA, the package, the
    targeted release, ray. Found without importing ``tensorrt_llm`` (the GPU tests and
    benchmarks skip with this sentence)."""
    if missing := missing_for_tensorrt_llm():
        return f"tensorrt_llm is not importable: needs {missing}"
    try:
        check_release(installed_release())
    except RuntimeError as err:
        return str(err)
    if importlib.util.find_spec("ray") is None:
        return "ray is not installed (the engine runs on a private Ray instance, see Placement)"
    return ""


_imported_scrubbed = False


def import_tensorrt_llm(environ: MutableMapping[str, str] = os.environ):
    """Check the release, then import ``tensorrt_llm`` with the launcher variables removed (its
    import initialises MPI); ``environ`` is restored afterwards."""
    global _imported_scrubbed
    if "tensorrt_llm" in sys.modules and not _imported_scrubbed:
        raise RuntimeError("tensorrt_llm was imported before the launcher environment was scrubbed "
                           "(its import initialises MPI); build the engine before anything imports it")
    check_release(installed_release())
    # Kept for good: the LLM constructor sets it itself for the Ray orchestrator (rc24 llmapi/llm.html).
    environ["TLLM_DISABLE_MPI"] = "1"
    with applied(environ, import_environment(environ)):
        import tensorrt_llm
    _imported_scrubbed = True
    check_release(tensorrt_llm.__version__)
    return tensorrt_llm


def kv_cache_kwargs(memory_fraction: float, max_bytes: int | None) -> dict[str, Any]:
    """Keyword arguments for rc24's ``KvCacheConfig``: the fraction of free memory, and the
    byte cap when there is one (the smaller wins)."""
    kwargs: dict[str, Any] = {"free_gpu_memory_fraction": memory_fraction}
    if max_bytes is not None:
        kwargs["max_gpu_total_bytes"] = int(max_bytes)
    return kwargs


def sampling_kwargs(params: SamplingParams, eos_token_ids: Sequence[int], pad_token_id: int,
                    logprobs_mode: Any) -> dict[str, Any]:
    """Keyword arguments for rc24's ``tensorrt_llm.SamplingParams`` equivalent to ``params``
    (see the module docstring for why each is set)."""
    return dict(
        n=params.n,
        temperature=params.temperature,
        top_p=params.top_p,
        top_k=0,  # all logits
        min_p=0.0,
        repetition_penalty=1.0,
        no_repeat_ngram_size=0,
        max_tokens=params.max_new_tokens,
        seed=params.seed,
        end_id=-1,  # EOS ends a response as a stop token, which stays in the output
        pad_id=pad_token_id,
        stop_token_ids=sorted(set(eos_token_ids) | set(params.stop_token_ids)),
        include_stop_str_in_output=True,
        logprobs=0,  # the sampled token's log-prob only
        logprobs_simple_format=True,
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


def finish_reason(completion: Any, eos: set[int], where: str) -> str:
    """"length", or "eos"/"stop" for a response that ends on the stop token that ended it
    (``stop_reason``): "eos" when it is an EOS id, else "stop" (also for stop tokens TensorRT-LLM
    added itself). A stop whose token is not the last one lost its log-prob: refused."""
    reason = completion.finish_reason
    if reason == "length":
        return "length"
    if reason != "stop":
        raise RuntimeError(f"{where}: generation ended with finish_reason={reason!r}")
    stop = completion.stop_reason
    last = completion.token_ids[-1] if completion.token_ids else None
    if isinstance(stop, int) and not isinstance(stop, bool) and stop == last:
        return "eos" if last in eos else "stop"
    raise ValueError(f"{where}: finish_reason 'stop' with stop_reason={stop!r} but the response ends on "
                     f"{last}: the terminating token was dropped with its log-prob (an end_id stop, or "
                     "include_stop_str_in_output not honoured)")


def parse_request_outputs(outputs: Sequence[Any], params: SamplingParams,
                          eos_token_ids: Sequence[int]) -> list[Sample]:
    """``RequestOutput``s (one per prompt, in prompt order) -> our samples."""
    eos = set(eos_token_ids)
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
                                  finish_reason=finish_reason(completion, eos, where)))
    return samples


def llm_kwargs(model_dir: str | Path, tensor_parallel_size: int, dtype: str, kv_cache_config: Any,
               refit: bool, sleep_config: Any = None, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Keyword arguments for rc24's ``tensorrt_llm.LLM``. Always the Ray orchestrator: it is the
    one whose placement the adapter pins (and the only one with ``_collective_rpc``); ``refit``
    adds the weight-update extension and sleep support."""
    kwargs: dict[str, Any] = dict(model=str(model_dir), tensor_parallel_size=tensor_parallel_size, dtype=dtype,
                                  orchestrator_type="ray", allreduce_strategy="NCCL",
                                  kv_cache_config=kv_cache_config)
    if refit:
        kwargs.update(ray_worker_extension_cls=WORKER_EXTENSION, sleep_config=sleep_config)
    overlap = sorted(set(kwargs) & set(extra or {}))
    if overlap:
        raise ValueError(f"llm_kwargs {overlap} are set by the adapter; they cannot be overridden")
    kwargs.update(extra or {})
    return kwargs


def memory_tags(memory_types: Iterable[Any]) -> list[str]:
    """Every sleep/wake tag: the values of ``ExecutorMemoryType`` (verl releases all of them)."""
    return [getattr(t, "value", t) for t in memory_types]


def check_placement(expected: Sequence[str], reported: Sequence[str]) -> None:
    """The engine's workers must run on exactly the GPUs the adapter pinned them to."""
    if sorted(expected) != sorted(reported):
        raise RuntimeError(f"TensorRT-LLM workers run on GPUs {sorted(reported)} but were pinned to "
                           f"{sorted(expected)}: weight-sync handles would miss them")


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


# ---- the adapter (GPU only) ----------------------------------------------------------------

class TensorRTLLMEngine(RolloutEngine):
    """TensorRT-LLM on the Hugging Face directory ``hf_dir`` (config + tokenizer; its weights are
    replaced by the first sync), on this process's CUDA devices ``devices`` (one per engine
    tensor-parallel rank; default: the current device), colocated with training.
    Around training: ``sleep()``, train, ``wake()``, ``update_weights()``, ``generate()``."""

    def __init__(self, hf_dir: str | Path, hf_config: dict, eos_token_ids: int | Sequence[int],
                 refresh: str = "refit", tensor_parallel_size: int = 1, dtype: str = "auto",
                 devices: Sequence[int] | None = None, pad_token_id: int | None = None,
                 kv_cache_memory_fraction: float = 0.5, kv_cache_max_bytes: int | None = None,
                 export_dir: str | Path | None = None, llm_kwargs: dict | None = None):
        missing = missing_for_tensorrt_llm()
        if missing:
            raise RuntimeError(f"rollout.engine='tensorrt_llm' needs {missing}; "
                               "use rollout.engine='transformers' otherwise")
        if refresh not in ("refit", "rebuild"):
            raise ValueError(f"rollout.refresh={refresh!r}: expected 'refit' or 'rebuild'")
        devices = [torch.cuda.current_device()] if devices is None else [int(d) for d in devices]
        if len(devices) != tensor_parallel_size:
            raise ValueError(f"engine tensor_parallel_size={tensor_parallel_size} needs as many CUDA devices, "
                             f"got {devices}")
        trtllm = import_tensorrt_llm()
        from tensorrt_llm._torch.utils import get_device_uuid
        from tensorrt_llm.llmapi import KvCacheConfig
        from tensorrt_llm.llmapi.llm_args import ExecutorMemoryType, SleepConfig
        from tensorrt_llm.sampling_params import LogprobMode
        from torch.multiprocessing.reductions import reduce_tensor

        self._trtllm, self._reduce, self._logprobs_mode = trtllm, reduce_tensor, LogprobMode.PROCESSED
        given = (eos_token_ids,) if isinstance(eos_token_ids, int) else tuple(eos_token_ids)
        self.eos_token_ids = tuple(dict.fromkeys(given + generation_config_eos(hf_dir)))
        if not self.eos_token_ids:
            raise ValueError("TensorRTLLMEngine needs at least one EOS token id")
        self.pad_token_id = self.eos_token_ids[0] if pad_token_id is None else pad_token_id
        self.refresh, self.hf_config, self.dtype = refresh, hf_config, dtype
        self.tensor_parallel_size = tensor_parallel_size
        self._tags = memory_tags(ExecutorMemoryType)
        self._kv_cache_config = KvCacheConfig(**kv_cache_kwargs(kv_cache_memory_fraction, kv_cache_max_bytes))
        self._sleep_config = SleepConfig()
        self._source_dir = self._model_dir = Path(hf_dir)
        # rebuild: where the streamed weights are written for the next LLM to load.
        self._owns_export_dir = export_dir is None
        self._export_dir = Path(export_dir) if export_dir else Path(tempfile.mkdtemp(prefix="prorl_trtllm_"))
        self._extra_kwargs = dict(llm_kwargs or {})
        self._device_uuids = {get_device_uuid(d): torch.device("cuda", d) for d in devices}
        self._gpus = physical_gpu_ids(devices, os.environ.get("CUDA_VISIBLE_DEVICES"))
        self._llm, self._weights_valid, self._asleep, self._closed = None, True, False, False
        self._start_ray()
        try:
            self._llm = self._launch(self._model_dir)
        except BaseException:
            self.shutdown()
            raise

    @classmethod
    def from_rollout_config(cls, cfg: RolloutConfig, *, hf_config, hf_dir, eos_token_ids, pad_token_id, device, dtype):
        if hf_dir is None:
            raise ValueError("rollout.engine='tensorrt_llm' loads a Hugging Face directory; none was given")
        if cfg.engine_tensor_parallel_size != 1:
            raise ValueError(f"rollout.engine_tensor_parallel_size={cfg.engine_tensor_parallel_size}: the "
                             "TensorRT-LLM engine runs on its trainer rank's GPU (1); several GPUs need the "
                             "devices of the rank's model-parallel group, which the trainer does not pass")
        device = torch.device(device)
        return cls(hf_dir, hf_config, eos_token_ids, refresh=cfg.refresh, tensor_parallel_size=1,
                   dtype={torch.bfloat16: "bfloat16", torch.float16: "float16",
                          torch.float32: "float32"}.get(dtype, "auto"),
                   devices=[device.index if device.index is not None else torch.cuda.current_device()],
                   pad_token_id=pad_token_id, kv_cache_memory_fraction=cfg.kv_cache_memory_fraction,
                   kv_cache_max_bytes=cfg.kv_cache_max_bytes)

    def _engine_env(self) -> dict[str, str]:
        return engine_environment(os.environ, self._gpus, free_port())

    def _start_ray(self) -> None:
        """A Ray instance of this process that sees only the engine's GPUs (see Placement)."""
        import ray

        if ray.is_initialized():
            raise RuntimeError("Ray is already initialised in this process: the TensorRT-LLM engine needs a "
                               "private Ray instance restricted to its own GPUs")
        with applied(os.environ, self._engine_env()):
            ray.init(address="local", num_gpus=len(self._gpus), include_dashboard=False, namespace="trtllm",
                     object_store_memory=RAY_OBJECT_STORE_BYTES,
                     runtime_env={"env_vars": {"RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES": "1"}})

    def _launch(self, model_dir: Path):
        kwargs = llm_kwargs(model_dir, self.tensor_parallel_size, self.dtype, self._kv_cache_config,
                            refit=self.refresh == "refit", sleep_config=self._sleep_config, extra=self._extra_kwargs)
        with applied(os.environ, self._engine_env()):
            llm = self._trtllm.LLM(**kwargs)
        try:
            reported = llm._collective_rpc("report_device_id")
        except Exception as err:  # the check is extra safety; rc24's RPC set is not readable here
            log.warning("TensorRT-LLM workers did not report their GPUs (%s); placement unchecked", err)
        else:
            try:
                check_placement(list(self._device_uuids), reported)
            except RuntimeError:
                llm.shutdown()
                raise
        return llm

    def generate(self, prompt_ids: Sequence[Sequence[int]], params: SamplingParams) -> list[Sample]:
        if self._closed:
            raise RuntimeError("TensorRTLLMEngine.generate after shutdown()")
        if self._asleep or not self._weights_valid:
            raise RuntimeError("TensorRTLLMEngine.generate: its memory was released by sleep(); "
                               "call wake() and update_weights() first")
        if self.refresh == "rebuild" and self._llm is None:
            self._llm = self._launch(self._model_dir)  # started lazily: a sync may rebuild it anyway
        check_prompts(prompt_ids)
        trt_params = self._trtllm.SamplingParams(
            **sampling_kwargs(params, self.eos_token_ids, self.pad_token_id, self._logprobs_mode))
        prompts = [{"prompt_token_ids": [int(t) for t in ids]} for ids in prompt_ids]
        outputs = self._llm.generate(prompts, sampling_params=trt_params, use_tqdm=False)
        return parse_request_outputs(outputs, params, self.eos_token_ids)

    def update_weights(self, buckets: Iterable[Bucket]) -> SyncStats:
        tied = bool(self.hf_config.get("tie_word_embeddings", False))
        named = (engine_named_tensors(bucket, tied) for bucket in buckets)
        if self.refresh == "rebuild":
            return self._rebuild(named)
        if self._asleep:
            raise RuntimeError("TensorRTLLMEngine.update_weights while asleep: call wake() first")

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
        self._weights_valid, self._asleep = True, False
        stats.seconds = time.perf_counter() - start
        return stats

    def sleep(self) -> None:
        """Release the engine's GPU memory (see Memory in the module docstring)."""
        if self._asleep or self._closed:
            return
        if self.refresh == "rebuild":  # the whole LLM goes; generate() or the next sync restarts it
            if self._llm is not None:
                self._llm.shutdown()
                self._llm = None
        else:
            self._llm._collective_rpc("sleep", args=(self._tags,))
            self._weights_valid = False
        self._asleep = True

    def wake(self) -> None:
        """Map the released memory again; ``update_weights`` must follow before ``generate``."""
        if not self._asleep or self._closed:
            return
        if self.refresh == "refit":
            self._llm._collective_rpc("wakeup", args=(self._tags,))
        self._asleep = False

    def shutdown(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._llm is not None:
            self._llm.shutdown()
            self._llm = None
        import ray

        ray.shutdown()
        if self._owns_export_dir:
            shutil.rmtree(self._export_dir, ignore_errors=True)
