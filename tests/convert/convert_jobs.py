"""Work the conversion tests run in spawned processes (module-level, so spawn can import it).

- :func:`offline_job` (one process): every variant HF -> Megatron at every TP x PP -> HF, an
  overwrite, casts with --dtype, one way back through a deliberately wrong qkv split (negative
  control), and a conversion that fails midway (nothing may be left behind).
- :func:`distributed_job` (8 gloo ranks): for every TP x PP, the live GPTModel's own
  sharded_state_dict against dist_layout, logits of the checkpoint loaded at its own and at
  another layout, logits after load_hf_weights, the weight sync's export,
  save_model_checkpoint / load_model_checkpoint across layouts, and a wrong qkv interleave
  (negative control) caught by the logits.
"""

from __future__ import annotations

import glob
import os
import shutil
from pathlib import Path

import torch

LAYOUTS = [(tp, pp) for tp in (1, 2, 4) for pp in (1, 2)]
# Loaded from a checkpoint of another layout too (one per family, one tied): loads are the
# slow part of the distributed job.
RESHARDED = ("qwen2", "llama-tied")
# The live model saved with save_model_checkpoint, then loaded at the later layouts.
SAVED_VARIANT, SAVED_AT = "llama", (2, 2)


def ckpt_name(variant: str, tp: int, pp: int) -> str:
    return f"{variant}-tp{tp}-pp{pp}"


def read_hf_tensors(hf_dir) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    tensors = {}
    for f in sorted(glob.glob(f"{hf_dir}/*.safetensors")):
        tensors.update(load_file(f))
    return tensors


# ---- offline ----------------------------------------------------------------------------------

def offline_job(hf_dirs: dict[str, str], root: str) -> dict:
    from checkpoint_convert import convert, mapping
    from checkpoint_convert.safetensors_io import HFWeights

    out = {"lines": {}}
    for variant, hf_dir in hf_dirs.items():
        for tp, pp in LAYOUTS:
            name = ckpt_name(variant, tp, pp)
            there = convert.hf_to_megatron(hf_dir, f"{root}/ckpt/{name}", tp=tp, pp=pp, progress=False)
            # Small files: the way back writes several safetensors files and an index.
            back = convert.megatron_to_hf(f"{root}/ckpt/{name}", f"{root}/back/{name}", max_shard_bytes=100_000,
                                          progress=False)
            out["lines"][name] = (there.line(), back.line())

    # --overwrite: replaced atomically (here with the same weights from another layout).
    convert.megatron_to_hf(f"{root}/ckpt/{ckpt_name('qwen2', 4, 2)}", f"{root}/back/{ckpt_name('qwen2', 1, 1)}",
                           max_shard_bytes=100_000, overwrite=True, progress=False)

    # --dtype on both ways: fp32 source -> bf16 checkpoint -> bf16 (kept) and fp32 (cast) HF.
    convert.hf_to_megatron(hf_dirs["qwen2"], f"{root}/cast/ckpt", tp=2, dtype="bf16", progress=False)
    convert.megatron_to_hf(f"{root}/cast/ckpt", f"{root}/cast/bf16", progress=False)
    convert.megatron_to_hf(f"{root}/cast/ckpt", f"{root}/cast/fp32", dtype="fp32", progress=False)

    name = ckpt_name("qwen2", 2, 2)
    good_split = mapping.split_qkv

    def swapped_kv_split(*args):
        q, k, v = good_split(*args)
        return q, v, k

    mapping.split_qkv = swapped_kv_split
    try:
        convert.megatron_to_hf(f"{root}/ckpt/{name}", f"{root}/wrong/{name}", progress=False)
    finally:
        mapping.split_qkv = good_split

    # The same checkpoints written by Megatron-Core's own dist_checkpointing.save (from
    # dist_layout's entries): the files must describe the same tensors, and convert back alike.
    out["megatron_writer"] = {}
    for variant, tp, pp in MEGATRON_WRITER_CASES:
        name = ckpt_name(variant, tp, pp)
        theirs = Path(root) / "megatron_writer" / name
        save_with_megatron(hf_dirs[variant], theirs / "model", tp, pp)
        shutil.copytree(f"{root}/ckpt/{name}/hf", theirs / "hf")
        shutil.copy(f"{root}/ckpt/{name}/meta.json", theirs / "meta.json")
        convert.megatron_to_hf(theirs, f"{root}/megatron_writer/back/{name}", progress=False)
        out["megatron_writer"][name] = torch_dist_differences(Path(f"{root}/ckpt/{name}/model"), theirs / "model")
    # Negative control: another layout's checkpoint holds the same tensors in other chunks.
    out["megatron_writer_other_layout"] = torch_dist_differences(
        Path(f"{root}/ckpt/{ckpt_name('qwen2', 2, 2)}/model"), Path(f"{root}/ckpt/{ckpt_name('qwen2', 4, 2)}/model"))

    # A read error halfway through: the output must not exist, nor any temporary directory.
    calls = {"n": 0}
    good_locate = HFWeights._locate  # under both read() and map()

    def failing_locate(self, name, rows):
        calls["n"] += 1
        if calls["n"] == 20:
            raise OSError("injected read failure")
        return good_locate(self, name, rows)

    HFWeights._locate = failing_locate
    try:
        convert.hf_to_megatron(hf_dirs["llama"], f"{root}/interrupted/ckpt", tp=2, pp=2, progress=False)
        out["interrupted"] = "conversion did not fail"
    except OSError as exc:
        out["interrupted"] = str(exc)
    finally:
        HFWeights._locate = good_locate
    out["interrupted_left"] = sorted(p.name for p in Path(f"{root}/interrupted").iterdir()) \
        if Path(f"{root}/interrupted").exists() else []
    return out


# Checked against Megatron-Core's writer: untied with qkv bias, and tied at PP2 (a tied copy).
MEGATRON_WRITER_CASES = (("qwen2", 2, 2), ("llama-tied", 4, 2))


def save_with_megatron(hf_dir: str, model_dir: Path, tp: int, pp: int) -> None:
    """The checkpoint of every rank of TP ``tp`` x PP ``pp``, saved by dist_checkpointing.save."""
    import torch.distributed as dist
    from megatron.core import dist_checkpointing

    from checkpoint_convert.arch import load_arch
    from checkpoint_convert.dist_layout import param_entries
    from checkpoint_convert.mapping import FC1, Layout, fc1_shard_parts, to_megatron_shard
    from checkpoint_convert.safetensors_io import HFWeights
    from megatron_prorl.runtime import cpu_backend

    layout = Layout(load_arch(hf_dir), tp, pp)
    state = {}
    with HFWeights(hf_dir) as weights:
        for param in layout.params:
            for r in range(tp):
                cut = fc1_shard_parts if param.kind == FC1 else to_megatron_shard
                for local, entry in param_entries(param, layout, r, cut(param, weights.read, layout, r)).items():
                    replica = (entry[0] if isinstance(entry, list) else entry).replica_id
                    if not any(replica):  # what that rank would write
                        state[f"pp{layout.stage(param)}.tp{r}.{local}"] = entry
    cpu_backend.enable()  # dist_checkpointing's writer synchronises CUDA
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        model_dir.mkdir(parents=True)
        dist_checkpointing.save(state, str(model_dir))
    finally:
        dist.destroy_process_group()


def torch_dist_differences(ours: Path, theirs: Path) -> list[str]:
    """How two torch_dist checkpoint directories differ: backend, common state, tensors (global
    shape, dtype, chunk layout, values) and objects; order and file placement aside."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    from checkpoint_convert.dist_layout import TorchDistReader

    diffs = []
    if (ours / "metadata.json").read_text() != (theirs / "metadata.json").read_text():
        diffs.append("metadata.json")
    if torch.load(ours / "common.pt") != torch.load(theirs / "common.pt"):
        diffs.append("common.pt")
    a, b = (FileSystemReader(str(d)).read_metadata().state_dict_metadata for d in (ours, theirs))
    diffs += [f"only in one: {k}" for k in sorted(a.keys() ^ b.keys())]
    with TorchDistReader(ours) as x, TorchDistReader(theirs) as y:
        for key in sorted(a.keys() & b.keys()):
            if type(a[key]) is not type(b[key]):
                diffs.append(f"{key}: {type(a[key]).__name__} vs {type(b[key]).__name__}")
            elif isinstance(a[key], TensorStorageMetadata):
                chunks = [sorted((tuple(c.offsets), tuple(c.sizes)) for c in m.chunks) for m in (a[key], b[key])]
                if (a[key].size, a[key].properties, chunks[0]) != (b[key].size, b[key].properties, chunks[1]):
                    diffs.append(f"{key}: metadata")
                elif not torch.equal(x.read(key), y.read(key)):
                    diffs.append(f"{key}: values")
    return diffs


# ---- distributed ------------------------------------------------------------------------------

def _describe(entry):
    from megatron.core.dist_checkpointing import ShardedObject, ShardedTensor

    if isinstance(entry, list):
        return [_describe(e) for e in entry]
    if isinstance(entry, ShardedTensor):
        return ("tensor", entry.key, entry.dtype, entry.local_shape, entry.global_shape, entry.global_offset,
                entry.axis_fragmentations, entry.replica_id, entry.prepend_axis_num, entry.allow_shape_mismatch)
    if isinstance(entry, ShardedObject):
        return ("object", entry.key, entry.global_shape, entry.global_offset, entry.replica_id)
    return repr(entry)


def layout_mismatches(model, layout) -> list:
    """Entries where dist_layout differs from the model's own sharded_state_dict()."""
    from megatron.core import parallel_state as ps
    from megatron.core.dist_checkpointing.mapping import apply_factories

    from checkpoint_convert.dist_layout import param_entries
    from checkpoint_convert.mapping import FC1

    real = model.sharded_state_dict()
    apply_factories(real)
    params = dict(model.named_parameters())
    ours = {}
    for local, param in layout.stage_params(ps.get_pipeline_model_parallel_rank()).items():
        tensor = params[local].detach()
        if param.kind == FC1:
            tensor = tensor.chunk(2)
        ours.update(param_entries(param, layout, ps.get_tensor_model_parallel_rank(), tensor,
                                  ps.get_data_parallel_rank(with_context_parallel=True)))
    return [(k, _describe(real.get(k)), _describe(ours.get(k)))
            for k in sorted(set(real) | set(ours)) if _describe(real.get(k)) != _describe(ours.get(k))]


@torch.no_grad()
def megatron_logits(model, tokens: torch.Tensor, vocab_size: int):
    """Full logits [b, s, vocab] on the last stage (None elsewhere), through the pipeline schedule."""
    import torch.distributed as dist
    from megatron.core import parallel_state as ps
    from megatron.core.pipeline_parallel import get_forward_backward_func

    b, s = tokens.shape
    positions = torch.arange(s).unsqueeze(0).expand(b, s)
    out = {}

    def forward_step(data_iterator, model):
        def loss_func(output):
            out["logits"] = output.detach()
            return output.sum() * 0, torch.tensor(1), {}

        return model(tokens, positions, None), loss_func

    get_forward_backward_func()(forward_step_func=forward_step, data_iterator=iter([None]), model=[model],
                                num_microbatches=1, seq_length=s, micro_batch_size=b, forward_only=True)
    if not ps.is_pipeline_last_stage():
        return None
    local = out["logits"].contiguous()
    parts = [torch.empty_like(local) for _ in range(ps.get_tensor_model_parallel_world_size())]
    dist.all_gather(parts, local, group=ps.get_tensor_model_parallel_group())
    return torch.cat(parts, dim=-1)[..., :vocab_size]


def _diff(model, tokens, reference, vocab_size):
    logits = megatron_logits(model, tokens, vocab_size)
    return None if logits is None else (logits - reference).abs().max().item()


def export_check(model, arch, hf_dir, bucket_bytes: int = 20_000) -> dict:
    """The weight sync's collective export against the HF tensors on disk: everything on the
    model-parallel group's first rank, nothing elsewhere."""
    from megatron.core import parallel_state as ps

    from checkpoint_convert.mapping import is_ignored_hf_name
    from megatron_prorl.weight_sync import export_to_first_rank

    exported, overfull = {}, []
    for bucket in export_to_first_rank(model, arch, bucket_bytes):
        sizes = [t.nbytes for _, t in bucket]
        if len(sizes) > 1 and sum(sizes) > bucket_bytes:  # only a lone tensor may exceed the bound
            overfull.append(sum(sizes))
        exported.update((n, t.clone()) for n, t in bucket)
    if torch.distributed.get_rank(ps.get_model_parallel_group()) != 0:
        return {"received": sorted(exported)}  # must stay empty
    want = {n: t.float() for n, t in read_hf_tensors(hf_dir).items() if not is_ignored_hf_name(n, arch)}
    return {
        "names": sorted(set(want) ^ set(exported)),
        "different": sorted(n for n in want if n in exported and not (
            exported[n].dtype == want[n].dtype and torch.equal(exported[n], want[n]))),
        "overfull": overfull,
    }


def _wrong_interleave(q, k, v, groups):
    return torch.cat([q, k, v])  # all q rows, then k, then v: not per query group


def distributed_job(hf_dirs: dict[str, str], ckpt_root: str, saved_dir: str, tokens: torch.Tensor,
                    reference: dict) -> list[dict]:
    from megatron.core import parallel_state as ps

    from checkpoint_convert import mapping
    from checkpoint_convert.arch import load_arch
    from checkpoint_convert.checkpoint import load_model_checkpoint, save_model_checkpoint
    from checkpoint_convert.model_weights import load_hf_weights
    from megatron_prorl.config import ModelConfig, ParallelConfig
    from megatron_prorl.runtime.distributed import init_distributed
    from megatron_prorl.models.builder import build_gpt_model

    world = int(os.environ["WORLD_SIZE"])
    rows = []
    for tp, pp in [lp for lp in LAYOUTS if world % (lp[0] * lp[1]) == 0]:
        parallel = ParallelConfig(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp)
        init_distributed(parallel)
        other = (4, 2) if (tp, pp) != (4, 2) else (1, 1)
        for variant, hf_dir in hf_dirs.items():
            arch = load_arch(hf_dir)
            layout = mapping.Layout(arch, tp, pp)
            model = build_gpt_model(arch, ModelConfig(dtype="fp32", transformer_impl="local"), parallel).eval()
            ref = reference[variant]
            row = {"variant": variant, "tp": tp, "pp": pp, "layout": layout_mismatches(model, layout)}
            load_model_checkpoint(model, f"{ckpt_root}/{ckpt_name(variant, tp, pp)}")
            row["ckpt"] = _diff(model, tokens, ref, arch.vocab_size)
            if variant in RESHARDED:
                load_model_checkpoint(model, f"{ckpt_root}/{ckpt_name(variant, *other)}")
                row["resharded"] = _diff(model, tokens, ref, arch.vocab_size)
            with torch.no_grad():
                for p in model.parameters():
                    p.zero_()
            load_hf_weights(model, arch, hf_dir)
            row["hf"] = _diff(model, tokens, ref, arch.vocab_size)
            row["export"] = export_check(model, arch, hf_dir)
            if (variant, tp, pp) == (SAVED_VARIANT, *SAVED_AT):  # the trainer's way to write a checkpoint
                save_model_checkpoint(model, saved_dir, hf_dir)
            elif variant == SAVED_VARIANT and (tp, pp) > SAVED_AT:  # and to read it, at other layouts
                load_model_checkpoint(model, saved_dir)
                row["saved"] = _diff(model, tokens, ref, arch.vocab_size)
            if (variant, tp, pp) == ("qwen2", 2, 2):
                good = mapping.interleave_qkv
                mapping.interleave_qkv = _wrong_interleave
                try:
                    load_hf_weights(model, arch, hf_dir)
                finally:
                    mapping.interleave_qkv = good
                row["wrong_interleave"] = _diff(model, tokens, ref, arch.vocab_size)
            rows.append(row)
        ps.destroy_model_parallel()
    return rows
