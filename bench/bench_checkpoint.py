"""Checkpoint benchmark on CPU: a trainer checkpoint's save and load, with and without the
manifest (checksums written last on save, verified first on load), side by side in one run.

    python bench/bench_checkpoint.py [--rounds 3] [--workdir DIR]

Two models, fp32, one rank: the embedded tiny default (builtin:tiny, 116k parameters) and a
~94M-parameter Qwen2 shape (bench_weight_sync's). A save writes what the trainer writes (policy,
reference, optimizer after one real update, RNG, metadata) into an atomic directory; a load
reads policy, reference and optimizer back. Rounds are interleaved and each figure is the median.
Target: the manifest adds under 10% to a save and to a load; besides the side-by-side figures,
the manifest's own step is timed on the same checkpoint (steadier: it does not carry the noise
of two separate writes of the whole checkpoint). The last column compares the in-process
torch_dist writer with Megatron-Core's own (a spawned Manager plus forked writers).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

MODELS = {
    "tiny (116k)": "builtin:tiny",
    "94M": dict(model_type="qwen2", hidden_size=640, intermediate_size=1792, num_hidden_layers=12,
                num_attention_heads=10, num_key_value_heads=2, vocab_size=32000, max_position_embeddings=2048,
                rms_norm_eps=1e-6, rope_theta=1e6, tie_word_embeddings=False),
}


def _run(model, rounds: int, workdir: str) -> dict:
    from unittest import mock

    from checkpoint_convert import checkpoint as convert_checkpoint
    from checkpoint_convert.arch import hf_arch, load_arch
    from checkpoint_convert.checkpoint import atomic_directory, verify_checkpoint
    from checkpoint_convert.manifest import write_manifest
    from megatron_prorl import builtin
    from megatron_prorl.train import checkpoint as ckpt
    from megatron_prorl.train.actor import PolicyActor
    from megatron_prorl.train.batch import from_sequences
    from megatron_prorl.config import ProRLConfig
    from megatron_prorl.runtime.distributed import init_distributed, shutdown_distributed

    cfg = ProRLConfig()
    cfg.model.dtype = "fp32"
    cfg.batch.prompts_per_step = cfg.batch.prompts_per_mini_batch = 1
    init_distributed(cfg.parallel)
    arch = load_arch(builtin.resolve(model)) if isinstance(model, str) else hf_arch(model)
    actor = PolicyActor(cfg, arch)
    g = torch.Generator().manual_seed(0)
    tokens = [torch.randint(2, arch.vocab_size, (8,), generator=g).tolist() for _ in range(4)]
    batch = from_sequences(tokens[:2], tokens[2:], [1.0, -1.0])
    batch.old_logprobs, _ = actor.forward_logprobs(batch, 1.0)
    actor.update(batch, 1.0, 0.0)  # the optimizer holds state, as in a run
    hf_dir = Path(workdir) / "hf"
    hf_dir.mkdir(exist_ok=True)
    (hf_dir / "config.json").write_text("{}")
    meta = convert_checkpoint.CheckpointMeta(tp=1, pp=1, dtype="fp32", family=arch.family)
    target = Path(workdir) / "ckpt"

    def save(manifest: bool):
        with atomic_directory(target, overwrite=True, manifest=manifest) as tmp:
            ckpt.save_actor(actor, tmp)
            ckpt.save_rng(tmp)
            ckpt.save_metadata(tmp, {}, "", hf_dir, meta)

    def load(manifest: bool):
        if manifest:
            verify_checkpoint(target)
        ckpt.load_actor(actor, target)

    def save_with_megatron_writer():
        from megatron.core.dist_checkpointing.serialization import get_default_save_sharded_strategy

        with mock.patch.object(convert_checkpoint, "_in_process_strategy", get_default_save_sharded_strategy):
            save(manifest=False)

    times: dict[str, list[float]] = {}
    for _ in range(rounds + 1):  # the first round warms up
        for name, fn in (("save", lambda: save(False)), ("save+manifest", lambda: save(True)),
                         ("manifest", lambda: write_manifest(target)),
                         ("load", lambda: load(False)), ("load+verify", lambda: load(True)),
                         ("verify", lambda: verify_checkpoint(target)),
                         ("save, Megatron writer", save_with_megatron_writer)):
            t0 = time.perf_counter()
            fn()
            times.setdefault(name, []).append(time.perf_counter() - t0)
    save(True)
    size = sum(p.stat().st_size for p in target.rglob("*") if p.is_file())
    shutdown_distributed()
    return {"params": sum(p.numel() for p in actor.policy_module.parameters()), "bytes": size,
            **{k: statistics.median(v[1:]) for k, v in times.items()}}


def main():
    from megatron_prorl.runtime.launch import spawn

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workdir", default=None, help="where checkpoints are written (default: a temporary dir)")
    args = ap.parse_args()
    # "+manifest" and "+verify" compare two saves (loads), so they carry the disk's noise; the
    # step's own time (hashing and writing the manifest, or checking it) is the steadier figure.
    print(f"{'model':12} {'size':>9} {'save':>7} {'+manifest':>10} {'(its own)':>15} {'load':>7} {'+verify':>9} "
          f"{'(its own)':>15} {'Megatron writer':>16}")
    for label, model in MODELS.items():
        work = Path(tempfile.mkdtemp(dir=args.workdir))
        try:
            r = spawn(_run, 1, model, args.rounds, str(work), timeout=3600)[0]
        finally:
            shutil.rmtree(work, ignore_errors=True)
        print(f"{label:12} {r['bytes'] / 1e6:7.1f}MB {r['save']:6.3f}s {r['save+manifest']:6.3f}s "
              f"({r['save+manifest'] / r['save'] - 1:+.0%}) {r['manifest']:6.3f}s ({r['manifest'] / r['save']:.0%}) "
              f"{r['load']:6.3f}s {r['load+verify']:6.3f}s ({r['load+verify'] / r['load'] - 1:+.0%}) "
              f"{r['verify']:6.3f}s ({r['verify'] / r['load']:.0%}) {r['save, Megatron writer']:8.3f}s "
              f"({r['save, Megatron writer'] / r['save']:.1f}x)")


if __name__ == "__main__":
    main()
