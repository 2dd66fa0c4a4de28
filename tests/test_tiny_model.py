"""The shipped tiny model (megatron_prorl/assets/tiny): loadable offline with transformers,
renders the prompt contract, fits the TP=2 / PP=2 tests, and is only partially competent."""

from __future__ import annotations

import importlib.util
import json
import re
import string
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

import megatron_prorl
from megatron_prorl.data.prompts import render_prompt
from megatron_prorl.data.schema import Row
from megatron_prorl.tokenizer import build_byte_tokenizer

TINY = Path(megatron_prorl.__file__).parent / "assets" / "tiny"
SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "make_tiny_model.py"


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(TINY, local_files_only=True)


@pytest.fixture(scope="module")
def model():
    return AutoModelForCausalLM.from_pretrained(TINY, local_files_only=True).eval()


@pytest.fixture(scope="module")
def heldout() -> list[Row]:
    return [Row(**json.loads(line)) for line in (TINY / "heldout.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("make_tiny_model", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_chat_template_renders_the_prompt_contract(tokenizer):
    row = Row(prompt="What is 23+45?", domain="math", ground_truth="68")
    assert render_prompt(tokenizer, row) == (
        "<|user|>What is 23+45?\nLet's think step by step and output the final answer within "
        "\\boxed{}.<|assistant|>")
    turns = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"},
             {"role": "assistant", "content": " A"}]
    assert tokenizer.apply_chat_template(turns, tokenize=False) == (
        "<|system|>S<|user|>U<|assistant|> A<|endoftext|>")
    with pytest.raises(Exception, match="unsupported chat role: tool"):
        tokenizer.apply_chat_template([{"role": "tool", "content": "x"}], tokenize=False)


def test_tokenizer_is_byte_level_lossless_and_survives_reload(tokenizer):
    text = string.printable + " \\boxed{68} naïve 中文"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(text.encode())  # one token per byte, nothing unknown
    assert tokenizer.decode(ids) == text
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    for special in ("<|user|>", "<|assistant|>", "<|endoftext|>"):
        assert tokenizer(special, add_special_tokens=False)["input_ids"] == \
            [tokenizer.convert_tokens_to_ids(special)]
    # transformers rebuilds a qwen2 tokenizer's pipeline around the vocabulary, other engines
    # read tokenizer.json as is, the trainer may build it in memory: all must agree.
    prompt = render_prompt(tokenizer, Row(prompt="What is 23+45?", domain="math", ground_truth="68"))
    text = prompt + " \\boxed{68}<|endoftext|>"
    expected = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert build_byte_tokenizer()(text, add_special_tokens=False)["input_ids"] == expected
    assert Tokenizer.from_file(str(TINY / "tokenizer.json")).encode(text).ids == expected
    assert build_byte_tokenizer().chat_template == tokenizer.chat_template


def test_config_fits_the_parallel_tests_and_is_small(tokenizer, model):
    cfg = model.config
    assert cfg.model_type == "qwen2" and cfg.tie_word_embeddings
    assert cfg.num_attention_heads % 2 == 0 and cfg.num_key_value_heads % 2 == 0  # TP=2
    assert cfg.num_hidden_layers % 2 == 0  # PP=2
    assert cfg.max_position_embeddings >= 256
    assert cfg.rope_parameters["rope_theta"] == 10000.0
    assert cfg.vocab_size == len(tokenizer)
    assert model.dtype == torch.float32
    assert GenerationConfig.from_pretrained(TINY).eos_token_id == tokenizer.eos_token_id
    assert sum(f.stat().st_size for f in TINY.iterdir()) < 3_000_000


def test_heldout_file_is_the_scripts_disjoint_split(heldout, script):
    train, held = script.split_additions(12345, 200)
    assert not set(train) & set(held) and len(train) + len(held) == 90 * 90
    adds = [r for r in heldout if r.source == "arithmetic:add"]
    assert [r.prompt for r in adds] == [f"What is {a}+{b}?" for a, b in held]
    assert all(r.ground_truth == str(a + b) for r, (a, b) in zip(adds, held))


def test_corpus_only_writes_the_warmup_examples_and_no_model(script, heldout, tmp_path, capsys):
    script.main(["--corpus-only", str(tmp_path)])
    assert [p.name for p in tmp_path.iterdir()] == ["pretraining.jsonl"]  # no model, no card
    texts = [json.loads(line)["text"] for line in (tmp_path / "pretraining.jsonl").read_text().splitlines()]
    tok = build_byte_tokenizer()
    train, _ = script.split_additions(12345, 200)
    a, b = train[0]
    assert texts[0] == render_prompt(tok, script.addition_row(a, b)) + f" \\boxed{{{a + b}}}"
    assert len(texts) == len(set(texts)) and sum("\\boxed{" in t for t in texts) == len(train)
    assert any(t.endswith("</answer>") for t in texts)
    prompts = {t.split("<|assistant|>")[0] for t in texts}
    assert not any(render_prompt(tok, r).split("<|assistant|>")[0] in prompts for r in heldout)


def test_warmup_batch_labels_only_the_completion(script):
    tok = build_byte_tokenizer()
    row = script.addition_row(23, 45)
    batch = script.collate([script.encode(tok, row), script.encode(tok, script.addition_row(10, 10))],
                           tok.pad_token_id)
    labelled = batch["labels"][0][batch["labels"][0] != -100]
    assert tok.decode(labelled) == " \\boxed{68}<|endoftext|>"
    assert (batch["labels"][1] != -100).sum() == len(" \\boxed{20}") + 1


def _pass_at_1(model, tokenizer, rows, temperature, samples):
    enc = tokenizer([render_prompt(tokenizer, r) for r in rows], return_tensors="pt",
                    add_special_tokens=False)  # all addition prompts have the same length
    sampling = dict(do_sample=True, temperature=temperature, top_k=0, top_p=1.0) \
        if temperature else dict(do_sample=False)
    with torch.no_grad():
        out = model.generate(**enc, **sampling, num_return_sequences=samples, max_new_tokens=16,
                             pad_token_id=tokenizer.pad_token_id)
    texts = tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    boxed = [re.findall(r"\\boxed\{([^{}]*)\}", t) for t in texts]
    return sum(bool(b) and b[-1] == rows[i // samples].ground_truth
               for i, b in enumerate(boxed)) / len(texts)


def test_model_is_partially_competent_on_heldout_additions(model, tokenizer, heldout):
    """Untrained (~0) or fully trained (~1) would leave GRPO nothing to show."""
    rows = [r for r in heldout if r.source == "arithmetic:add"][:64]
    torch.manual_seed(0)
    greedy = _pass_at_1(model, tokenizer, rows, None, 1)
    sampled = _pass_at_1(model, tokenizer, rows, 1.2, 4)
    assert 0.05 <= sampled <= 0.7, sampled
    assert 0.05 <= greedy <= 0.9, greedy


def test_model_answers_logic_prompts_in_answer_tags(model, tokenizer, heldout):
    """The Reasoning Gym share taught the logic domain's format (its accuracy is partial)."""
    rows = [r for r in heldout if r.domain == "logic"][:16]
    enc = tokenizer([render_prompt(tokenizer, r) for r in rows], return_tensors="pt",
                    padding=True, padding_side="left", add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**enc, do_sample=False, max_new_tokens=24,
                             pad_token_id=tokenizer.pad_token_id)
    texts = tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:])
    well_formed = [re.fullmatch(r" <answer>-?\d+</answer><\|endoftext\|>(<\|pad\|>)*", t) for t in texts]
    assert sum(map(bool, well_formed)) >= 14, texts
