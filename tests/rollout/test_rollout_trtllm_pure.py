"""The TensorRT-LLM adapter's pure parts, fed with real engine outputs and real tensors.

No machine here has TensorRT-LLM; its result objects are reproduced as stand-ins with the
fields of the pinned release 1.3.0rc24 (``CompletionOutput``: index, token_ids, logprobs,
finish_reason, stop_reason; ``Logprob``: logprob, rank), and the upstream rules the adapter
relies on are restated here from that release's source (named at each).
"""

from __future__ import annotations

import enum
import importlib
import importlib.util
import json
import os
import sys
from dataclasses import dataclass, field
from typing import Optional

import pytest
import torch

from helpers.fake_dist import write_distribution
from helpers.hf_models import EOS, PAD
from megatron_prorl.rollout import SamplingParams, build_engine, build_engine_from_config
from megatron_prorl.runtime.accelerator import missing_for_tensorrt_llm
from megatron_prorl.rollout import trtllm
from megatron_prorl.rollout.base import eos_token_ids
from megatron_prorl.rollout.trtllm import (
    LLM_ARGS_USED,
    TARGET_RELEASE,
    WORKER_EXTENSION,
    build_ipc_payload,
    check_placement,
    check_release,
    finish_reason,
    import_tensorrt_llm,
    installed_release,
    llm_kwargs,
    memory_tags,
    parse_request_outputs,
    refit,
    sampling_kwargs,
)

# __init__ fields of tensorrt_llm.SamplingParams at 1.3.0rc24 (1.3.0rc24/_modules/tensorrt_llm/sampling_params.html).
TRTLLM_SAMPLING_FIELDS = {
    "end_id", "pad_id", "max_tokens", "bad", "bad_token_ids", "stop", "stop_token_ids",
    "include_stop_str_in_output", "embedding_bias", "logits_processor", "apply_batched_logits_processor",
    "n", "best_of", "use_beam_search", "logprobs_mode", "top_k", "top_p", "top_p_min", "top_p_reset_ids",
    "top_p_decay", "seed", "temperature", "min_tokens", "beam_search_diversity_rate", "repetition_penalty",
    "presence_penalty", "frequency_penalty", "prompt_ignore_length", "length_penalty", "early_stopping",
    "no_repeat_ngram_size", "min_p", "beam_width_array", "logprobs", "prompt_logprobs",
    "logprobs_simple_format", "prompt_logprobs_simple_format", "return_context_logits",
    "return_generation_logits", "exclude_input_from_output", "return_encoder_output", "return_perf_metrics",
    "additional_model_outputs", "lookahead_config", "guided_decoding", "thinking_token_budget", "ignore_eos",
    "detokenize", "add_special_tokens", "truncate_prompt_tokens", "skip_special_tokens",
    "spaces_between_special_tokens",
}
# Same file: fields LLM._prepare_sampling_params fills from generation_config.json when unset (None).
GENERATION_CONFIG_SAMPLING_FIELDS = {"early_stopping", "length_penalty", "min_p", "no_repeat_ngram_size",
                                     "repetition_penalty", "temperature", "top_k", "top_p"}
BEAM_SEARCH_ONLY = {"early_stopping", "length_penalty"}


def trtllm_stop_tokens(kwargs: dict, generation_config_eos: list[int]) -> list[int]:
    """Stop tokens after rc24's ``SamplingParams._setup``: every generation_config EOS id other
    than ``end_id`` is appended to ``stop_token_ids``."""
    stops = list(kwargs["stop_token_ids"] or [])
    for token in generation_config_eos:
        if token != kwargs["end_id"] and token not in stops:
            stops.append(token)
    return stops


@dataclass
class Logprob:
    logprob: float
    rank: Optional[int] = None


@dataclass
class CompletionOutput:
    index: int
    token_ids: list[int] = field(default_factory=list)
    logprobs: list = field(default_factory=list)
    finish_reason: Optional[str] = None
    stop_reason: Optional[int | str] = None
    text: str = ""


@dataclass
class RequestOutput:
    outputs: list[CompletionOutput]
    finished: bool = True


def as_trtllm_outputs(samples, n: int, as_dicts: bool) -> list[RequestOutput]:
    """Our samples as rc24 returns them for a stop-word stop (stored executor/result.py,
    ``_handle_sequence``): finish_reason 'stop', stop_reason = the token id, token kept."""
    requests = []
    for first in range(0, len(samples), n):
        comps = []
        for s in samples[first:first + n]:
            values = s.logprobs.tolist()
            logprobs = [{t: Logprob(v, rank=1)} for t, v in zip(s.token_ids, values)] if as_dicts else values
            reason = "length" if s.finish_reason == "length" else "stop"
            comps.append(CompletionOutput(index=s.sample_index, token_ids=list(s.token_ids), logprobs=logprobs,
                                          finish_reason=reason,
                                          stop_reason=s.token_ids[-1] if reason == "stop" else None))
        requests.append(RequestOutput(comps))
    return requests


def test_sampling_params_translation():
    params = SamplingParams(n=16, temperature=1.2, top_p=0.95, max_new_tokens=8192, stop_token_ids=(7, 3, 7), seed=42)
    kw = sampling_kwargs(params, eos_token_ids=(151645, 151643), pad_token_id=151643, logprobs_mode="processed")
    assert set(kw) <= TRTLLM_SAMPLING_FIELDS
    assert kw["n"] == 16 and kw["temperature"] == 1.2 and kw["top_p"] == 0.95
    assert kw["max_tokens"] == 8192 and kw["seed"] == 42 and kw["pad_id"] == 151643
    # EOS is handled as a stop token kept in the output, so its log-prob is returned too.
    assert kw["end_id"] == -1 and kw["stop_token_ids"] == [3, 7, 151643, 151645]
    assert kw["include_stop_str_in_output"] is True and "ignore_eos" not in kw
    # logprobs=0: the sampled token only; simple format requires exactly 0 (rc24 _validate).
    assert kw["logprobs"] == 0 and kw["logprobs_simple_format"] is True
    assert kw["logprobs_mode"] == "processed" and kw["detokenize"] is False
    # Nothing that shapes the distribution is left for generation_config.json to fill in.
    assert all(kw.get(name) is not None for name in GENERATION_CONFIG_SAMPLING_FIELDS - BEAM_SEARCH_ONLY)
    assert (kw["top_k"], kw["min_p"], kw["repetition_penalty"], kw["no_repeat_ngram_size"]) == (0, 0.0, 1.0, 0)


def test_extra_generation_config_eos_ends_with_eos_not_an_exception(tmp_path):
    """TensorRT-LLM makes generation_config EOS ids stop tokens on its own; the adapter knows
    them too, so such a response is 'eos', and a stop token it did not know is still 'stop'."""
    extra_eos = 7
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [EOS, extra_eos]}))
    eos = eos_token_ids(tmp_path, EOS)
    params = SamplingParams(n=1, stop_token_ids=(9,))
    kw = sampling_kwargs(params, tuple(dict.fromkeys(eos)), PAD, "processed")
    # Every token TensorRT-LLM may stop on is an EOS id or one of ours.
    assert set(trtllm_stop_tokens(kw, [EOS, extra_eos])) == {EOS, extra_eos, 9}

    def ending_on(token, stop_reason):
        return RequestOutput([CompletionOutput(0, [4, token], [-0.5, -0.25], "stop", stop_reason=stop_reason)])

    reasons = [parse_request_outputs([ending_on(t, t)], params, eos)[0].finish_reason for t in (extra_eos, EOS, 9, 42)]
    assert reasons == ["eos", "eos", "stop", "stop"]
    # The old adapter (EOS ids from the tokenizer only) raised on the extra id; it is a stop token now.
    assert parse_request_outputs([ending_on(extra_eos, extra_eos)], params, (EOS,))[0].finish_reason == "stop"


def test_finish_reason_refuses_a_stop_that_lost_its_token():
    eos = {EOS}
    assert finish_reason(CompletionOutput(0, [4, 5], finish_reason="length"), eos, "s") == "length"
    with pytest.raises(ValueError, match="stop_reason=None but the response ends on 5"):  # an end_id stop
        finish_reason(CompletionOutput(0, [4, 5], finish_reason="stop"), eos, "s")
    with pytest.raises(ValueError, match="stop_reason=1 but the response ends on 5"):
        finish_reason(CompletionOutput(0, [4, 5], finish_reason="stop", stop_reason=EOS), eos, "s")
    with pytest.raises(ValueError, match="stop_reason='</s>'"):
        finish_reason(CompletionOutput(0, [4, 5], finish_reason="stop", stop_reason="</s>"), eos, "s")
    with pytest.raises(ValueError, match="ends on None"):
        finish_reason(CompletionOutput(0, [], finish_reason="stop", stop_reason=EOS), eos, "s")
    for reason in ("cancelled", "timeout", None):
        with pytest.raises(RuntimeError, match=f"finish_reason={reason!r}"):
            finish_reason(CompletionOutput(0, [4], finish_reason=reason), eos, "s")


@pytest.mark.parametrize("as_dicts", [True, False])
def test_parse_round_trips_real_engine_samples(tied_setup, as_dicts):
    _, _, engine = tied_setup
    params = SamplingParams(n=3, temperature=1.2, max_new_tokens=25, stop_token_ids=(50, 51, 52, 53), seed=4)
    samples = engine.generate([[5, 6, 7], [9]] * 4, params)
    assert {s.finish_reason for s in samples} == {"eos", "stop", "length"}
    parsed = parse_request_outputs(as_trtllm_outputs(samples, 3, as_dicts), params, (EOS,))
    assert len(parsed) == len(samples)
    for got, want in zip(parsed, samples):
        assert (got.prompt_index, got.sample_index) == (want.prompt_index, want.sample_index)
        assert got.token_ids == want.token_ids and got.finish_reason == want.finish_reason
        torch.testing.assert_close(got.logprobs, want.logprobs)


def test_parse_rejects_what_would_corrupt_a_batch():
    params = SamplingParams(n=1, stop_token_ids=(9,))
    ok = CompletionOutput(0, [4, 5], [-0.5, -0.25], "length")
    assert parse_request_outputs([RequestOutput([ok])], params, (EOS,))[0].finish_reason == "length"
    other_token = CompletionOutput(0, [4, 9], [{4: Logprob(-0.5)}, {8: Logprob(-0.1)}], "stop", stop_reason=9)
    with pytest.raises(ValueError, match="position 1.*sampled token 9"):
        parse_request_outputs([RequestOutput([other_token])], params, (EOS,))
    with pytest.raises(ValueError, match="2 tokens but 0 log-probs"):
        parse_request_outputs([RequestOutput([CompletionOutput(0, [4, 5], [], "length")])], params, (EOS,))
    with pytest.raises(ValueError, match="1 completions returned, expected n=2"):
        parse_request_outputs([RequestOutput([ok])], SamplingParams(n=2), (EOS,))


def test_release_check_names_both_versions():
    check_release(TARGET_RELEASE)
    check_release(TARGET_RELEASE + "+cu130")  # a local build of the same release
    with pytest.raises(RuntimeError, match=rf"TensorRT-LLM 1\.2\.1 is installed but this adapter is written against {TARGET_RELEASE}"):
        check_release("1.2.1")
    with pytest.raises(RuntimeError, match="TensorRT-LLM 1.3.0rc25 is installed"):
        check_release("1.3.0rc25")
    with pytest.raises(RuntimeError, match=f"needs TensorRT-LLM {TARGET_RELEASE}; the 'tensorrt_llm' package is not installed"):
        check_release(None)


@pytest.fixture
def fake_tensorrt_llm(tmp_path, monkeypatch):
    """Install a stand-in ``tensorrt_llm`` (package + dist-info) that records the environment it
    was imported in; returns a function making one of a given version."""
    monkeypatch.setattr(trtllm, "_imported_scrubbed", False)
    monkeypatch.delitem(sys.modules, "tensorrt_llm", raising=False)

    def make(version: str):
        init = f"import os\nSEEN = dict(os.environ)\n__version__ = {version!r}\n"
        monkeypatch.syspath_prepend(str(write_distribution(tmp_path / version, "tensorrt_llm", version,
                                                           {"__init__.py": init})))
        importlib.invalidate_caches()

    yield make
    sys.modules.pop("tensorrt_llm", None)


def test_tensorrt_llm_is_imported_without_launcher_variables(fake_tensorrt_llm, monkeypatch):
    fake_tensorrt_llm(TARGET_RELEASE)
    launcher = {"SLURM_PROCID": "3", "SLURM_JOB_ID": "77", "PMI_RANK": "3", "PMIX_RANK": "3",
                "OMPI_COMM_WORLD_SIZE": "32", "MPI_LOCALRANKID": "3"}
    for key, value in launcher.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    monkeypatch.delenv("TLLM_DISABLE_MPI", raising=False)
    assert installed_release() == TARGET_RELEASE
    module = import_tensorrt_llm()
    assert not set(launcher) & set(module.SEEN), "MPI would have seen the launcher at import"
    assert module.SEEN["CUDA_VISIBLE_DEVICES"] == "0,1" and module.SEEN["TLLM_DISABLE_MPI"] == "1"
    # The trainer keeps its environment.
    assert all(os.environ[k] == v for k, v in launcher.items())
    assert import_tensorrt_llm() is module  # a second engine (rebuild) imports nothing new


def test_other_release_is_refused_before_import(fake_tensorrt_llm):
    fake_tensorrt_llm("1.2.1")
    with pytest.raises(RuntimeError, match=f"TensorRT-LLM 1.2.1 is installed but .* {TARGET_RELEASE}"):
        import_tensorrt_llm()
    assert "tensorrt_llm" not in sys.modules


def test_import_before_the_scrub_is_refused(fake_tensorrt_llm):
    fake_tensorrt_llm(TARGET_RELEASE)
    importlib.import_module("tensorrt_llm")
    with pytest.raises(RuntimeError, match="tensorrt_llm was imported before the launcher environment was scrubbed"):
        import_tensorrt_llm()


def test_llm_arguments_for_each_refresh_mode():
    kv = object()
    sleep = object()
    fit = llm_kwargs("/m", 1, "bfloat16", kv, refit=True, sleep_config=sleep)
    assert set(fit) == LLM_ARGS_USED
    assert fit["orchestrator_type"] == "ray" and fit["ray_worker_extension_cls"] == WORKER_EXTENSION
    assert fit["kv_cache_config"] is kv and fit["sleep_config"] is sleep and "enable_sleep" not in fit
    assert fit["allreduce_strategy"] == "NCCL" and fit["model"] == "/m"
    rebuild = llm_kwargs("/m", 1, "auto", kv, refit=False, extra={"max_batch_size": 64})
    assert "sleep_config" not in rebuild and "ray_worker_extension_cls" not in rebuild
    assert rebuild["orchestrator_type"] == "ray" and rebuild["max_batch_size"] == 64
    with pytest.raises(ValueError, match=r"llm_kwargs \['kv_cache_config'\] are set by the adapter"):
        llm_kwargs("/m", 1, "auto", kv, refit=False, extra={"kv_cache_config": None})


def test_sleep_tags_are_every_memory_type():
    memory_type = enum.Enum("ExecutorMemoryType", {"MODEL_WEIGHTS_MAIN": "model", "KV_CACHE": "kv_cache",
                                                   "SAMPLER": "sampler"})
    assert memory_tags(memory_type) == ["model", "kv_cache", "sampler"]


def test_placement_check_names_both_sides():
    check_placement(["GPU-b", "GPU-a"], ["GPU-a", "GPU-b"])
    with pytest.raises(RuntimeError, match=r"run on GPUs \['GPU-0'\] but were pinned to \['GPU-3'\]"):
        check_placement(["GPU-3"], ["GPU-0"])


def test_ipc_payload_every_engine_device_gets_every_tensor_and_handles_rebuild():
    from torch.multiprocessing.reductions import reduce_tensor

    bucket = [("model.norm.weight", torch.randn(64)), ("model.embed_tokens.weight", torch.randn(10, 64))]
    devices = {"GPU-aaaa": torch.device("cpu"), "GPU-bbbb": torch.device("cpu")}
    moved = []

    def to_device(t, d):
        moved.append(d)
        return t.clone()

    payload, keep_alive = build_ipc_payload(bucket, devices, reduce_tensor, to_device)
    assert set(payload) == set(devices) and len(keep_alive) == 4 and len(moved) == 4
    for handles in payload.values():
        assert [name for name, _ in handles] == [name for name, _ in bucket]
        for (name, (rebuild, args)), (_, original) in zip(handles, bucket):
            # What the worker does with a handle: call the rebuild function on its arguments.
            torch.testing.assert_close(rebuild(*args), original)


def test_refit_sends_each_bucket_then_finalises_with_none():
    calls = []
    buckets = [[("a", torch.zeros(4))], [("b", torch.zeros(2)), ("c", torch.zeros(2))]]
    stats = refit(lambda method, payload: calls.append((method, payload)), iter(buckets),
                  lambda b: ({"GPU-0": [n for n, _ in b]}, []))
    assert calls == [("update_weights", {"GPU-0": ["a"]}), ("update_weights", {"GPU-0": ["b", "c"]}),
                     ("update_weights", None)]
    assert (stats.buckets, stats.tensors, stats.bytes) == (2, 3, 32)


def test_engine_without_tensorrt_llm_names_what_is_missing():
    missing = missing_for_tensorrt_llm()
    if not missing:
        pytest.skip("TensorRT-LLM and a GPU are present: the error path cannot occur here")
    with pytest.raises(RuntimeError, match="rollout.engine='tensorrt_llm' needs") as err:
        build_engine("tensorrt_llm", hf_dir="/nonexistent", hf_config={}, eos_token_ids=EOS)
    assert missing in str(err.value)
    assert "tensorrt_llm" not in sys.modules  # looked up, not imported (its import initialises MPI)


def test_missing_here_names_what_stops_the_adapter(monkeypatch):
    if missing_for_tensorrt_llm():  # this machine: the sentence names it, and nothing was imported
        assert trtllm.missing_here() == f"tensorrt_llm is not importable: needs {missing_for_tensorrt_llm()}"
        assert "tensorrt_llm" not in sys.modules
    monkeypatch.setattr(trtllm, "missing_for_tensorrt_llm", lambda: "")
    monkeypatch.setattr(trtllm, "installed_release", lambda: "1.2.1")
    assert trtllm.missing_here().startswith(f"TensorRT-LLM 1.2.1 is installed but this adapter is written against "
                                            f"{TARGET_RELEASE}")
    monkeypatch.setattr(trtllm, "installed_release", lambda: TARGET_RELEASE + "+local")
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else find_spec(name, *a))
    assert trtllm.missing_here().startswith("ray is not installed")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object())
    assert trtllm.missing_here() == ""


# ---- the adapter's constructor against a stand-in of the release ------------------------------

# Fields of rc24's KvCacheConfig (1.3.0rc24/_modules/tensorrt_llm/llmapi/llm_args.html; a subset:
# the class is a StrictBaseModel, so any other key is refused, which the stand-in reproduces).
RC24_KV_CACHE_FIELDS = {
    "enable_block_reuse", "max_tokens", "max_attention_window", "sink_token_length", "free_gpu_memory_fraction",
    "host_cache_size", "disk_cache_size", "disk_cache_path", "cross_kv_cache_fraction",
    "secondary_offload_min_priority", "event_buffer_max_size", "attention_dp_events_gather_period_ms",
    "enable_partial_reuse", "copy_on_partial_reuse", "use_uvm", "max_gpu_total_bytes", "iteration_stats_interval",
    "dtype", "mamba_ssm_cache_dtype", "tokens_per_block", "use_kv_cache_manager_v2",
}
# The modules and names the adapter takes from the release (megatron_prorl/rollout/trtllm.py);
# the LLM and KvCacheConfig record what they were given, and the environment they ran in.
STAND_IN = {
    "__init__.py": """
import os
CALLS = []
__version__ = {version!r}

class LLM:
    def __init__(self, **kwargs):
        CALLS.append(("LLM", kwargs, dict(os.environ)))

    def _collective_rpc(self, method, args=()):
        CALLS.append(("rpc", method, args))
        from tensorrt_llm._torch.utils import get_device_uuid
        return [get_device_uuid(0)] if method == "report_device_id" else None

    def shutdown(self):
        CALLS.append(("shutdown",))
""",
    "_torch/__init__.py": "",
    "_torch/utils.py": "def get_device_uuid(index):\n    return f'GPU-standin-{{index}}'\n",
    "llmapi/__init__.py": """
from tensorrt_llm.llmapi.llm_args import KvCacheConfig
""",
    "llmapi/llm_args.py": """
import enum

FIELDS = {fields!r}

class KvCacheConfig:
    def __init__(self, **kwargs):
        unknown = set(kwargs) - FIELDS
        if unknown:
            raise ValueError(f"extra fields not permitted: {{sorted(unknown)}}")
        fraction = kwargs.get("free_gpu_memory_fraction", 0.9)
        if not 0 <= fraction <= 1 or not isinstance(kwargs.get("max_gpu_total_bytes", 0), int) \\
                or kwargs.get("max_gpu_total_bytes", 0) < 0:
            raise ValueError(f"invalid {{kwargs}}")
        self.kwargs = kwargs

class ExecutorMemoryType(str, enum.Enum):
    MODEL_WEIGHTS_MAIN = "model"
    KV_CACHE = "kv_cache"

class SleepConfig:
    pass
""",
    "sampling_params.py": """
import enum

class LogprobMode(str, enum.Enum):
    RAW = "raw"
    PROCESSED = "processed"
""",
}


class _StandInRay:
    """``ray`` as the adapter uses it: a private instance, started and shut down."""

    def __init__(self):
        self.calls: list[tuple] = []
        self.initialized = False

    def is_initialized(self):
        return self.initialized

    def init(self, **kwargs):
        self.calls.append(("init", kwargs, dict(os.environ)))
        self.initialized = True

    def shutdown(self):
        self.calls.append(("shutdown",))
        self.initialized = False


@pytest.fixture
def stand_in_release(tmp_path, monkeypatch):
    """The targeted release as a stand-in package (installed, importable, CUDA assumed), ray as a
    stand-in module; returns (tensorrt_llm module loader, ray, a Hugging Face directory)."""
    files = {name: source.format(version=TARGET_RELEASE, fields=RC24_KV_CACHE_FIELDS) for name, source in STAND_IN.items()}
    monkeypatch.syspath_prepend(str(write_distribution(tmp_path / "site", "tensorrt_llm", TARGET_RELEASE, files)))
    importlib.invalidate_caches()
    monkeypatch.setattr(trtllm, "_imported_scrubbed", False)
    monkeypatch.setattr(trtllm, "missing_for_tensorrt_llm", lambda: "")
    ray = _StandInRay()
    monkeypatch.setitem(sys.modules, "ray", ray)
    hf_dir = tmp_path / "model"
    hf_dir.mkdir()
    (hf_dir / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    yield ray, hf_dir
    for name in [m for m in sys.modules if m == "tensorrt_llm" or m.startswith("tensorrt_llm.")]:
        sys.modules.pop(name)


def _engine_from_config(hf_dir, *overrides: str):
    from megatron_prorl.config import load_config

    cfg = load_config(overrides=["rollout.engine=tensorrt_llm", *overrides])
    return build_engine_from_config(cfg.rollout, hf_config={"model_type": "qwen2"}, hf_dir=str(hf_dir),
                                    eos_token_ids=[EOS], pad_token_id=PAD, device=torch.device("cuda", 0),
                                    dtype=torch.bfloat16)


def test_the_kv_cache_byte_cap_reaches_kv_cache_config(stand_in_release):
    """rollout.kv_cache_max_bytes -> KvCacheConfig.max_gpu_total_bytes beside the fraction (rc24:
    the smaller of the two sizes is allocated), through the adapter's own constructor; unset, the
    field is left at rc24's default (0: no cap)."""
    ray, hf_dir = stand_in_release
    engine = _engine_from_config(hf_dir, "rollout.kv_cache_memory_fraction=0.3", "rollout.kv_cache_max_bytes=12884901888")
    import tensorrt_llm

    (llm,) = [c for c in tensorrt_llm.CALLS if c[0] == "LLM"]
    assert llm[1]["kv_cache_config"].kwargs == {"free_gpu_memory_fraction": 0.3, "max_gpu_total_bytes": 12 << 30}
    engine.shutdown()
    tensorrt_llm.CALLS.clear()
    engine = _engine_from_config(hf_dir)
    (llm,) = [c for c in tensorrt_llm.CALLS if c[0] == "LLM"]
    assert llm[1]["kv_cache_config"].kwargs == {"free_gpu_memory_fraction": 0.5}
    engine.shutdown()
    assert [c[0] for c in ray.calls] == ["init", "shutdown", "init", "shutdown"]


def test_the_engine_starts_without_the_launcher_and_training_only_variables(stand_in_release, monkeypatch):
    """The private Ray instance and the LLM (whose Ray workers copy the environment) start without
    the launcher's variables and without what only the trainer needs (CUDA_DEVICE_MAX_CONNECTIONS,
    the trainer's ranks), on the engine's own GPU and port; the trainer's environment is back
    afterwards."""
    from megatron_prorl.runtime.launcher_env import TRAINING_ONLY_ENV

    ray, hf_dir = stand_in_release
    trainer = {"CUDA_DEVICE_MAX_CONNECTIONS": "1", "RANK": "13", "WORLD_SIZE": "32", "LOCAL_RANK": "5",
               "LOCAL_WORLD_SIZE": "8", "SLURM_PROCID": "13", "PMIX_RANK": "13", "MASTER_PORT": "29500",
               "CUDA_VISIBLE_DEVICES": "4,5,6,7", "NCCL_IB_SL": "1"}
    for key, value in trainer.items():
        monkeypatch.setenv(key, value)
    before = dict(os.environ)
    engine = _engine_from_config(hf_dir)  # device cuda:0 of this rank: GPU 4
    import tensorrt_llm

    seen = {"ray.init": ray.calls[0][2], "LLM": next(c[2] for c in tensorrt_llm.CALLS if c[0] == "LLM")}
    for where, env in seen.items():
        assert not set(env) & (TRAINING_ONLY_ENV | {"SLURM_PROCID", "PMIX_RANK"}), where
        assert env["CUDA_VISIBLE_DEVICES"] == "4" and env["NCCL_IB_SL"] == "1", where
        assert env["MASTER_PORT"] != "29500", where  # a port of the engine's own
    assert os.environ == {**before, "TLLM_DISABLE_MPI": "1"}  # set for good at the import
    engine.shutdown()
