"""The GPU self-check (scripts/gpu_selftest.sh) and the GPU benchmarks (bench/gpu) on a machine
without CUDA, which is every machine here (CUDA is also hidden from them, so this holds on a GPU
machine too): each says "no CUDA device" without a traceback (the self-check exits non-zero, a
benchmark 0); `pytest -m gpu` collects the GPU tests, which then skip naming why; and the
self-check's table is assembled from what pytest's JUnit report and the benchmarks' result lines
really contain. The commands run side by side, a few seconds in all.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCHES = sorted((ROOT / "bench" / "gpu").glob("bench_*.py"))
GPU_TESTS = {  # every test under tests/gpu, by name
    "test_gpu_megatron.py::test_policy_on_cuda_matches_cpu_fp32_and_trains[local-bf16]",
    "test_gpu_megatron.py::test_policy_on_cuda_matches_cpu_fp32_and_trains[te-bf16]",
    "test_gpu_megatron.py::test_policy_on_cuda_matches_cpu_fp32_and_trains[te-fp8]",
    "test_gpu_rollout.py::test_weight_sync_on_cuda_is_bit_exact",
    "test_gpu_rollout.py::test_transformers_engine_on_cuda_samples_what_the_trainer_recomputes",
    "test_gpu_rollout.py::test_transformers_engine_sleep_releases_its_memory",
    "test_gpu_trtllm.py::test_trtllm_refit_processed_logprobs_match_the_trainer",
    "test_gpu_trtllm.py::test_trtllm_sleep_releases_and_wake_restores_memory",
}


def _load(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """name -> (exit status, stdout, stderr) of every command, started together."""
    junit = tmp_path_factory.mktemp("gpu_selftest") / "gpu.xml"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHON": sys.executable,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    pytest_gpu = [sys.executable, "-m", "pytest", "-m", "gpu", "tests/gpu", "-q", "-p", "no:cacheprovider"]
    commands = {"selftest": ["bash", "scripts/gpu_selftest.sh"],
                **{path.name: [sys.executable, str(path)] for path in BENCHES},
                "collect": [*pytest_gpu, "--collect-only"],
                "run": [*pytest_gpu, f"--junitxml={junit}"]}
    procs = {name: subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for name, cmd in commands.items()}
    out = {"junit": junit}
    for name, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=300)
        out[name] = (proc.returncode, stdout, stderr)
    return out


@pytest.mark.parametrize("name", ["selftest", *(p.name for p in BENCHES)])
def test_without_cuda_each_says_so_without_a_traceback(runs, name):
    code, stdout, stderr = runs[name]
    assert "no CUDA device" in stdout, stdout + stderr
    assert "Traceback" not in stdout + stderr, stdout + stderr
    assert code == (1 if name == "selftest" else 0)


def test_the_bench_scripts_are_the_four_measurements():
    assert [p.name for p in BENCHES] == ["bench_memory_plan.py", "bench_policy_mfu.py", "bench_rollout.py",
                                         "bench_weight_sync.py"]
    assert tuple(f"bench/gpu/{p.name}" for p in BENCHES) == _load(ROOT / "scripts" / "gpu_selftest.py").BENCHES


def test_pytest_m_gpu_collects_the_gpu_tests_and_they_skip_with_the_reason(runs):
    code, stdout, stderr = runs["collect"]
    assert code == 0, stdout + stderr
    assert {line.removeprefix("tests/gpu/") for line in stdout.splitlines() if "::" in line} == GPU_TESTS
    code, stdout, stderr = runs["run"]
    assert code == 0, stdout + stderr
    rows = _load(ROOT / "scripts" / "gpu_selftest.py").junit_rows(runs["junit"])
    assert {r.check.removeprefix("tests/gpu/") for r in rows} == GPU_TESTS
    assert {(r.result, r.note) for r in rows} == {("skipped", "no CUDA device (torch.cuda.is_available() is False)")}


def test_the_table_is_assembled_from_the_reports(runs, capsys):
    selftest = _load(ROOT / "scripts" / "gpu_selftest.py")
    common = _load(ROOT / "bench" / "gpu" / "gpu_common.py")
    common.emit({"bench": "policy_mfu", "name": "policy fwd+bwd bf16 (seq 8192)", "spec": "transformer_engine",
                 "mfu": 0.4123, "tokens_per_s": 35123.4, "peak_memory_gib": 61.234})
    common.emit({"bench": "policy_mfu", "name": "policy fwd+bwd fp8 (seq 8192)", "skipped": "FP8 needs TE"})
    common.emit({"bench": "policy_mfu", "name": "policy on an A100", "mfu": None, "model_tflops": 180.2,
                 "device": "NVIDIA A100-SXM4-80GB", "tokens_per_s": 15840.0, "peak_memory_gib": 60.0})
    common.emit({"bench": "rollout", "name": "rollout tensorrt_llm", "tokens_per_s": 20000.0, "peak_memory_gib": None,
                 "device_used_gib": 75.04})
    common.emit({"bench": "weight_sync", "name": "weight sync policy -> transformers", "sync_s": 0.0517})
    printed = "a human-readable line\n" + capsys.readouterr().out
    crashed = "Traceback (...)\nRuntimeError: CUDA out of memory"
    rows = (selftest.junit_rows(runs["junit"]) + selftest.bench_output_rows("bench/gpu/bench_policy_mfu.py", 0, printed)
            + selftest.bench_output_rows("bench/gpu/bench_rollout.py", 1, crashed)
            + selftest.bench_output_rows("bench/gpu/bench_weight_sync.py", 0, "no result line"))
    lines = selftest.format_table(rows).splitlines()
    assert len(lines) == len(rows) + 1 and lines[0].split()[:4] == ["check", "result", "MFU", "tokens/s"]

    def cells(check: str) -> list[str]:
        return next(line for line in lines if line.startswith(check + " ")).removeprefix(check).split()

    assert all(cells("tests/gpu/" + test)[0] == "skipped" for test in GPU_TESTS)
    assert cells("policy fwd+bwd bf16 (seq 8192)") == ["passed", "41.2%", "35,123", "61.2", "transformer_engine"]
    assert cells("policy fwd+bwd fp8 (seq 8192)") == ["skipped", "FP8", "needs", "TE"]
    assert cells("policy on an A100") == ["passed", "15,840", "60.0", "MFU", "n/a:", "no", "peak", "for",
                                          "NVIDIA", "A100-SXM4-80GB", "(180", "model", "TFLOP/s)"]
    assert cells("rollout tensorrt_llm") == ["passed", "20,000", "memory", "in", "the", "engine's", "workers:", "75.0",
                                             "GiB", "in", "use", "on", "the", "device"]
    assert cells("weight sync policy -> transformers") == ["passed", "0.052"]
    assert cells("bench/gpu/bench_rollout.py") == ["failed", "exit", "status", "1:", "RuntimeError:", "CUDA", "out",
                                                   "of", "memory"]
    assert cells("bench/gpu/bench_weight_sync.py") == ["failed", "printed", "no", "BENCH_JSON", "result"]


def test_main_runs_the_tests_then_each_benchmark_and_fails_on_any_failure(runs, monkeypatch, tmp_path, capsys):
    import shutil

    import torch

    selftest = _load(ROOT / "scripts" / "gpu_selftest.py")
    common = _load(ROOT / "bench" / "gpu" / "gpu_common.py")
    common.emit({"bench": "weight_sync", "name": "weight sync policy -> transformers", "sync_s": 0.05})
    measured = capsys.readouterr().out
    outputs = {script: (0, measured) for script in selftest.BENCHES}
    ran = []

    def run(what, cmd, log):  # the machine's part: pytest's report (CPU: all skipped), benchmark output
        ran.append(what)
        if what.startswith("pytest"):
            shutil.copy(runs["junit"], cmd[-1].removeprefix("--junitxml="))
            return 0, ""
        return outputs[what]

    monkeypatch.setattr(selftest, "_run", run)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *args: "NVIDIA H200")
    assert selftest.main(["--out", str(tmp_path)]) == 0
    assert ran == ["pytest -m gpu tests/gpu", *selftest.BENCHES]
    printed = capsys.readouterr().out
    assert f"OK: {len(selftest.BENCHES)} passed, 0 failed, {len(GPU_TESTS)} skipped" in printed
    assert "NVIDIA H200 x1" in printed
    outputs["bench/gpu/bench_rollout.py"] = (1, "Traceback (...)\nRuntimeError: CUDA out of memory")
    assert selftest.main(["--out", str(tmp_path), "--no-bench"]) == 0
    assert selftest.main(["--out", str(tmp_path)]) == 1
    assert (f"FAILED: {len(selftest.BENCHES) - 1} passed, 1 failed, {len(GPU_TESTS)} skipped"
            in capsys.readouterr().out)


def test_an_engine_that_cannot_start_fails_the_self_check(runs, monkeypatch, tmp_path, capsys):
    """The image's engine is TensorRT-LLM: when it lacks something it needs (ray here, the
    package itself when asked for by --engine), the self-check fails with a row naming it,
    instead of passing with its tests skipped. Only the machine is stood in for: CUDA (none
    here), the pytest run (its report: every GPU test skipped) and whether ray is installed."""
    import importlib
    import shutil

    import torch

    selftest = _load(ROOT / "scripts" / "gpu_selftest.py")

    def run(what, cmd, log):
        shutil.copy(runs["junit"], cmd[-1].removeprefix("--junitxml="))
        return 0, ""

    monkeypatch.setattr(selftest, "_run", run)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *args: "NVIDIA H100 80GB HBM3")

    def verdict(*args: str) -> tuple[int, str]:
        code = selftest.main(["--out", str(tmp_path), "--no-bench", *args])
        return code, capsys.readouterr().out

    # Without TensorRT-LLM (CI; in the image this part cannot occur): auto holds the machine to
    # the transformers engine; asking for TensorRT-LLM fails, naming the package.
    if importlib.util.find_spec("tensorrt_llm") is None:
        assert selftest.resolve_engine("auto") == "transformers"
        code, out = verdict()
        assert code == 0 and "rollout engine transformers: available" in out
        code, out = verdict("--engine", "tensorrt_llm")
        assert code == 1 and f"FAILED: 0 passed, 1 failed, {len(GPU_TESTS)} skipped" in out
        (row,) = [line for line in out.splitlines() if line.startswith("rollout engine tensorrt_llm ")]
        assert row.split()[3] == "failed" and "needs the 'tensorrt_llm' package" in row

    # The image: TensorRT-LLM of the targeted release installed, so auto means it; without ray
    # the engine cannot start (the adapter pins its engine through a private Ray instance).
    from helpers.fake_dist import write_distribution

    from megatron_prorl.rollout.trtllm import TARGET_RELEASE

    site = write_distribution(tmp_path / "site", "tensorrt_llm", TARGET_RELEASE, {"__init__.py": ""})
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    find_spec = importlib.util.find_spec
    ray_spec = {"ray": None}
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: ray_spec["ray"] if name == "ray" else find_spec(name, *a))
    assert selftest.resolve_engine("auto") == "tensorrt_llm"
    code, out = verdict()
    assert code == 1 and "rollout engine tensorrt_llm: CANNOT START: ray is not installed" in out
    (row,) = [line for line in out.splitlines() if line.startswith("rollout engine tensorrt_llm ")]
    assert row.split()[3:6] == ["failed", "ray", "is"]
    ray_spec["ray"] = object()  # ray installed: nothing missing, the verdict is the tests'
    code, out = verdict()
    assert code == 0 and "rollout engine tensorrt_llm: available" in out
    assert "tensorrt_llm" not in sys.modules  # looked up, never imported (its import starts MPI)
