"""Offline conversions: HF -> Megatron (every TP x PP) -> HF is bit-identical, and usable by transformers.

The conversions themselves run once per session in a spawned process (conftest ``offline``).
"""

from __future__ import annotations

import json

import pytest
import torch
from convert_jobs import LAYOUTS, MEGATRON_WRITER_CASES, ckpt_name, read_hf_tensors
from convert_models import VARIANTS
from transformers import AutoModelForCausalLM, AutoTokenizer

from checkpoint_convert.safetensors_io import INDEX_FILE

NON_WEIGHT_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                    "chat_template.jinja")


def mismatches(a: dict, b: dict) -> list[str]:
    """Names whose tensors differ in presence, dtype, shape or any bit."""
    return sorted(n for n in a.keys() | b.keys()
                  if n not in a or n not in b or a[n].dtype != b[n].dtype or not torch.equal(a[n], b[n]))


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_hf_megatron_hf_is_bit_identical_at_every_layout(hf_dirs, offline, variant):
    root, results = offline
    source = read_hf_tensors(hf_dirs[variant])
    for tp, pp in LAYOUTS:
        name = ckpt_name(variant, tp, pp)
        assert mismatches(source, read_hf_tensors(root / "back" / name)) == [], name
        assert (root / "back" / name / INDEX_FILE).is_file()  # 100 kB files: sharded on the way back
        there, back = results["lines"][name]
        assert there.startswith(f"hf-to-megatron (TP{tp} x PP{pp}): {len(source)} tensors") and "GB/s" in there
        assert back.startswith(f"megatron-to-hf: {len(source)} tensors")


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_checkpoint_directory_layout(hf_dirs, offline, variant):
    root, _ = offline
    family, _, dtype, _ = VARIANTS[variant]
    ckpt = root / "ckpt" / ckpt_name(variant, 4, 2)
    assert json.loads((ckpt / "meta.json").read_text()) == {
        "format": "megatron-prorl", "version": 1, "tp": 4, "pp": 2,
        "dtype": {torch.float32: "fp32", torch.bfloat16: "bf16"}[dtype], "family": family}
    assert (ckpt / "model" / "metadata.json").is_file() and (ckpt / "model" / ".metadata").is_file()
    for f in NON_WEIGHT_FILES:  # copied verbatim, into the checkpoint and back out of it
        assert (ckpt / "hf" / f).read_bytes() == (hf_dirs[variant] / f).read_bytes(), f
        assert (root / "back" / ckpt.name / f).read_bytes() == (hf_dirs[variant] / f).read_bytes(), f
    assert not list((ckpt / "hf").glob("*.safetensors"))
    for d in ("ckpt", "back"):  # no temporary or replaced directories left over
        assert not [p for p in (root / d).iterdir() if p.name.startswith(".")]


def test_dtype_casts_both_ways(hf_dirs, offline):
    root, _ = offline
    source = read_hf_tensors(hf_dirs["qwen2"])  # fp32
    assert json.loads((root / "cast" / "ckpt" / "meta.json").read_text())["dtype"] == "bf16"
    as_bf16 = {n: t.to(torch.bfloat16) for n, t in source.items()}
    assert mismatches(as_bf16, read_hf_tensors(root / "cast" / "bf16")) == []
    assert mismatches({n: t.float() for n, t in as_bf16.items()}, read_hf_tensors(root / "cast" / "fp32")) == []
    assert json.loads((root / "cast" / "bf16" / "config.json").read_text())["dtype"] == "bfloat16"
    assert json.loads((root / "cast" / "fp32" / "config.json").read_text())["dtype"] == "float32"


@pytest.mark.parametrize("case", MEGATRON_WRITER_CASES)
def test_checkpoint_files_match_megatron_cores_own_writer(hf_dirs, offline, case):
    """dist_layout writes the torch_dist files itself: the same checkpoint saved through
    dist_checkpointing.save has the same tensors, chunks and objects, and converts back alike."""
    root, results = offline
    variant, tp, pp = case
    name = ckpt_name(variant, tp, pp)
    assert results["megatron_writer"][name] == []
    back = read_hf_tensors(root / "megatron_writer" / "back" / name)
    assert mismatches(read_hf_tensors(hf_dirs[variant]), back) == []
    # Negative control: the comparison sees chunk layouts (TP2 vs TP4 of the same weights).
    other = results["megatron_writer_other_layout"]
    assert other and all(d.endswith(": metadata") for d in other), other


def test_negative_control_a_wrong_qkv_split_is_caught_by_the_round_trip(hf_dirs, offline):
    root, _ = offline
    source = read_hf_tensors(hf_dirs["qwen2"])
    wrong = mismatches(source, read_hf_tensors(root / "wrong" / ckpt_name("qwen2", 2, 2)))
    assert wrong == sorted(n for n in source if ".k_proj." in n or ".v_proj." in n)


def test_a_failed_conversion_leaves_nothing_behind(offline):
    _, results = offline
    assert results["interrupted"] == "injected read failure"
    assert results["interrupted_left"] == []  # neither the output nor a temporary directory


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_exported_directory_loads_in_transformers_and_generates(hf_dirs, offline, variant):
    root, _ = offline
    exported = root / "back" / ckpt_name(variant, 2, 2)
    original = AutoModelForCausalLM.from_pretrained(hf_dirs[variant]).eval()
    model = AutoModelForCausalLM.from_pretrained(exported).eval()
    tokenizer = AutoTokenizer.from_pretrained(exported)
    prompt = tokenizer("What is 12+34?", return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(model(**prompt).logits, original(**prompt).logits)
        # EOS held off for 8 steps: random weights may favour it after any prompt
        steps = dict(max_new_tokens=8, min_new_tokens=8, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        ours, theirs = model.generate(**prompt, **steps), original.generate(**prompt, **steps)
    assert ours.shape == (1, prompt["input_ids"].shape[1] + 8) and torch.equal(ours, theirs)
    assert isinstance(tokenizer.decode(ours[0]), str)
