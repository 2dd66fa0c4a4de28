"""Benchmark: HF <-> Megatron conversion of a model with DeepSeek-R1-Distill-Qwen-1.5B's shapes.

Random bf16 weights for that exact config (written below) go to disk as sharded safetensors.
In each round, each in a fresh process: a plain copy of the weight files (read + write + fsync:
the I/O limit), ``prorl-convert hf-to-megatron --tp 2 --pp 2``, and ``prorl-convert
megatron-to-hf`` of the result, whose output is then compared with the source bit for bit.
Rounds repeat (medians reported) because shared machines are noisy; each step starts after a
sync and a pause, on a quiet disk.
Reported per step: the command's wall time as a user sees it (interpreter start-up and
imports included), the converter's own time, GB/s, the ratio of wall times to the copy's, and
peak memory two ways: the kernel's high-water RSS of the largest process of the step (memory-
mapped source pages it touched count too), and the PSS of the whole process tree sampled every
0.1 s (shared pages counted once). The same three steps on a 1 MB model give each step's fixed
cost (interpreter, imports), reported beside the ratios to the copy. Targets: within 3x of the
copy; peak RSS under 1.5x the model's bytes.

    python bench/bench_convert.py [--workdir /tmp] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import torch

from checkpoint_convert.arch import hf_arch
from checkpoint_convert.mapping import hf_shapes
from checkpoint_convert.safetensors_io import HFWeights, SafetensorsWriter

# deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B/config.json
CONFIG = {
    "architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 151643,
    "eos_token_id": 151643, "hidden_act": "silu", "hidden_size": 1536, "initializer_range": 0.02,
    "intermediate_size": 8960, "max_position_embeddings": 131072, "max_window_layers": 21,
    "model_type": "qwen2", "num_attention_heads": 12, "num_hidden_layers": 28, "num_key_value_heads": 2,
    "rms_norm_eps": 1e-06, "rope_theta": 10000, "sliding_window": 4096, "tie_word_embeddings": False,
    "torch_dtype": "bfloat16", "transformers_version": "4.44.0", "use_cache": True, "use_mrope": False,
    "use_sliding_window": False, "vocab_size": 151936,
}
SHARD_BYTES = 2 * 10**9


# The same commands on a model of ~1 MB measure what does not depend on the model's size:
# interpreter start-up and imports.
TINY = {**CONFIG, "hidden_size": 128, "intermediate_size": 256, "num_attention_heads": 4, "num_key_value_heads": 2,
        "num_hidden_layers": 4, "vocab_size": 1024}


def write_model(out: Path, config: dict) -> int:
    """Random bf16 weights for ``config`` as sharded safetensors; returns the weights' bytes."""
    out.mkdir(parents=True)
    (out / "config.json").write_text(json.dumps(config, indent=2))
    shapes = hf_shapes(hf_arch(config))
    writer = SafetensorsWriter(out, [(n, s, torch.bfloat16) for n, s in shapes.items()], SHARD_BYTES)
    gen = torch.Generator().manual_seed(0)
    for name, shape in shapes.items():
        writer.write(name, torch.randn(shape, generator=gen, dtype=torch.bfloat16))
    writer.close()
    return writer.total_bytes


def weight_files(d: Path) -> list[Path]:
    return sorted(d.glob("*.safetensors"))


# The I/O limit: the same bytes read and written, fsynced as the converters do, from a Python
# that imports nothing heavy.
COPY = """
import os, shutil, sys
src, dst = sys.argv[1:]
os.mkdir(dst)
for name in sorted(f for f in os.listdir(src) if f.endswith(".safetensors")):
    shutil.copyfile(os.path.join(src, name), os.path.join(dst, name))
    fd = os.open(os.path.join(dst, name), os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)
"""


class TreePss:
    """Peak PSS of a process and its descendants, sampled in a thread."""

    def __init__(self, pid: int, every: float = 0.1):
        self.root, self.every, self.peak = psutil.Process(pid), every, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            total = 0
            try:
                for p in [self.root, *self.root.children(recursive=True)]:
                    total += p.memory_full_info().pss
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
            self.peak = max(self.peak, total)
            self._stop.wait(self.every)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


# Runs the measured command and reports its ru_maxrss. A small launcher, because a child's
# ru_maxrss starts from the resident set of the process it was forked from (this one holds torch).
LAUNCHER = """
import os, sys
pid = os.posix_spawn(sys.argv[2], sys.argv[2:], os.environ)
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as f:
    f.write(str(usage.ru_maxrss))
sys.exit(os.waitstatus_to_exitcode(status))
"""


def measure(command: list[str]) -> dict:
    """Run ``command``: wall seconds, high-water RSS and peak tree PSS (bytes), stdout."""
    with tempfile.TemporaryDirectory() as tmp:
        rss_file = Path(tmp) / "maxrss"
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-c", LAUNCHER, str(rss_file), *command],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        sampler = TreePss(proc.pid)
        stdout, stderr = proc.communicate()
        wall = time.perf_counter() - start
        peak_pss = sampler.stop()
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed ({proc.returncode}):\n{stderr}")
        # ru_maxrss (kB): the largest resident set the command or any of its waited-for
        # children reached.
        rss = int(rss_file.read_text()) * 1024
    return {"wall": wall, "rss": rss, "pss": peak_pss, "stdout": stdout}


def run_step(args: list[str]) -> dict:
    result = measure([sys.executable, "-m", "checkpoint_convert.cli", *args, "--no-progress"])
    m = re.search(r"in (\d+\.\d+) s", result["stdout"])
    result["own"] = float(m.group(1)) if m else float("nan")
    return result


def copy_step(src: Path, dst: Path) -> dict:
    result = measure([sys.executable, "-c", COPY, str(src), str(dst)])
    result["own"] = result["wall"]
    return result


def identical(a: Path, b: Path) -> tuple[bool, int]:
    with HFWeights(a) as x, HFWeights(b) as y:
        if x.tensors.keys() != y.tensors.keys():
            return False, 0
        for name in x.tensors:
            if not torch.equal(x.read(name).view(torch.int16), y.read(name).view(torch.int16)):
                return False, 0
        return True, len(x.tensors)


H2M, M2H = "hf-to-megatron TP2xPP2", "megatron-to-hf"


def settle() -> None:
    """Start a step on a quiet disk: this machine's virtual disk absorbs bursts and then slows
    down, so a step right after another's gigabytes would pay for them."""
    os.sync()
    time.sleep(SETTLE_S)


def one_round(model: Path) -> dict[str, dict]:
    """Copy, hf-to-megatron and megatron-to-hf of ``model``/hf, side by side; outputs removed after."""
    steps = {}
    settle()
    steps[COPY_STEP] = copy_step(model / "hf", model / "copy")
    settle()
    steps[H2M] = run_step(["hf-to-megatron", "--hf-dir", str(model / "hf"), "--out", str(model / "ckpt"),
                           "--tp", "2", "--pp", "2"])
    settle()
    steps[M2H] = run_step(["megatron-to-hf", "--ckpt", str(model / "ckpt"), "--out", str(model / "back")])
    steps[M2H]["identical"] = identical(model / "hf", model / "back")
    for d in ("copy", "ckpt", "back"):
        shutil.rmtree(model / d)
    return steps


COPY_STEP = "plain copy (+fsync)"
SETTLE_S = 5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default=None, help="where to put the ~11 GB of files (default: $TMPDIR)")
    parser.add_argument("--rounds", type=int, default=3, help="repeat the three steps; medians are reported")
    args = parser.parse_args()
    if args.workdir:
        Path(args.workdir).mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="bench_convert_", dir=args.workdir))
    try:
        print(f"writing random weights to {root} ...", flush=True)
        model_bytes = write_model(root / "big" / "hf", CONFIG)
        write_model(root / "tiny" / "hf", TINY)
        print(f"model: DeepSeek-R1-Distill-Qwen-1.5B shapes, bf16, {model_bytes / 1e9:.3f} GB in "
              f"{len(weight_files(root / 'big' / 'hf'))} files; {os.cpu_count()} CPUs, load average "
              f"{os.getloadavg()[0]:.1f}", flush=True)
        rounds, tiny = [], []
        for i in range(args.rounds):
            rounds.append(one_round(root / "big"))
            tiny.append(one_round(root / "tiny"))
            line = ", ".join(f"{k} {v['wall']:.1f} s" for k, v in rounds[-1].items())
            print(f"round {i + 1}: {line}; load average {os.getloadavg()[0]:.1f}", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    median = statistics.median
    print(f"\nmedians of {len(rounds)} rounds; x copy: per round, then the median; start-up: the same "
          "step on a 1 MB model")
    print(f"{'step':24s} {'wall s':>7s} {'own s':>7s} {'start-up s':>10s} {'GB/s':>6s} {'x copy':>7s} "
          f"{'x copy w/o start-up':>19s} {'peak RSS GB':>11s} {'x model':>7s} {'peak PSS GB':>11s} {'x model':>7s}")
    summary = {}
    for label in rounds[0]:
        startup = median([t[label]["wall"] for t in tiny])
        ratio = median([r[label]["wall"] / r[COPY_STEP]["wall"] for r in rounds])
        variable = median([(r[label]["wall"] - startup) / r[COPY_STEP]["wall"] for r in rounds])
        wall = median([r[label]["wall"] for r in rounds])
        rss, pss = max(r[label]["rss"] for r in rounds), max(r[label]["pss"] for r in rounds)
        summary[label] = (ratio, variable, rss / model_bytes)
        print(f"{label:24s} {wall:7.1f} {median([r[label]['own'] for r in rounds]):7.1f} {startup:10.1f} "
              f"{model_bytes / 1e9 / wall:6.2f} {ratio:7.2f} {variable:19.2f} {rss / 1e9:11.2f} "
              f"{rss / model_bytes:7.2f} {pss / 1e9:11.2f} {pss / model_bytes:7.2f}")
    same = [r[M2H]["identical"] for r in rounds]
    print(f"\nround trip bit-identical in every round: {all(ok for ok, _ in same)} ({same[0][1]} tensors)")
    for label in (H2M, M2H):
        ratio, variable, rss = summary[label]
        print(f"{label}: {ratio:.2f}x the copy ({variable:.2f}x without start-up; target <= 3), "
              f"peak RSS {rss:.2f}x the model (target < 1.5)")


if __name__ == "__main__":
    main()
