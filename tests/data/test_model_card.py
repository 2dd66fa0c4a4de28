"""The prompt format and model card of an exported model (megatron_prorl/data/model_card.py):
a model exported from a training run, prompted with transformers from nothing but the files of
its directory, answers as `prorl eval` does; the card's header and sections come from the
checkpoint's own records."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from megatron_prorl import domains
from megatron_prorl.builtin import resolve
from megatron_prorl.config import load_config, to_yaml
from megatron_prorl.convert_cli import main as convert_main
from megatron_prorl.data.model_card import CARD_FILE, PROMPT_FILE, write_model_card
from megatron_prorl.eval.cli import main as eval_main
from megatron_prorl.eval.run import read_samples

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def header(card: Path) -> dict:
    text = card.read_text()
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n", 2)[1])


def greedy_from_the_export_alone(model_dir: Path, problem: str, domain: str, max_new_tokens: int = 24) -> str:
    """What a transformers user does with the directory and nothing else."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    fmt = json.loads((model_dir / PROMPT_FILE).read_text())
    turn = fmt["user_turn"].format(problem=problem, instruction=fmt["domains"][domain]["instruction"])
    text = tokenizer.apply_chat_template([{"role": "user", "content": turn}], tokenize=False,
                                         add_generation_prompt=fmt["add_generation_prompt"])
    ids = tokenizer(text, add_special_tokens=fmt["add_special_tokens"], return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False)
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


def test_an_export_answers_as_prorl_eval_does_from_its_own_files(reference_run, tmp_path):
    run, _ = reference_run
    export = tmp_path / "export"
    assert convert_main(["megatron-to-hf", "--ckpt", str(run), "--out", str(export)]) == 0
    fmt = json.loads((export / PROMPT_FILE).read_text())
    assert fmt["chat_template"] == (export / "chat_template.jinja").read_text()
    assert list(fmt["domains"]) == ["math"]  # the run trained on arithmetic:add only
    assert fmt["domains"]["math"]["instruction"] == domains.get("math").instruction

    answer = greedy_from_the_export_alone(export, "What is 63+32?", "math")
    assert "\\boxed{95}" in answer, answer

    # prorl eval on the same directory, near-greedy (T = 1e-4: the top token's probability is 1
    # to within exp(-100) unless two logits tie within 0.01), the same number of new tokens.
    data = tmp_path / "one.jsonl"
    data.write_text(json.dumps({"prompt": "What is 63+32?", "domain": "math", "ground_truth": "95"}) + "\n")
    out = tmp_path / "eval"
    assert eval_main(["--model", str(export), "--data", str(data), "--out", str(out), "--samples", "1", "--k", "1",
                      "--temperature", "1e-4", "--top-p", "1.0", "--max-new-tokens", "24", "--reward-workers", "1",
                      "--quiet"]) == 0
    [record] = read_samples(out / "samples.jsonl", text=True)
    assert record["response"].strip() == answer.strip() and (record["answer"], record["score"]) == ("95", 1.0)
    # and the evaluation's report states the prompt it used
    assert json.loads((out / PROMPT_FILE).read_text())["domains"] == fmt["domains"]
    assert "## Prompt format" in (out / "summary.md").read_text()


def test_the_card_of_a_training_checkpoint(reference_run, tmp_path):
    run, _ = reference_run
    ckpt = run / "checkpoints" / "step_00000003"
    model_dir = Path(shutil.copytree(resolve("builtin:tiny"), tmp_path / "model"))
    card = write_model_card(model_dir, ckpt)
    meta = header(card)
    assert meta["pipeline_tag"] == "text-generation" and meta["library_name"] == "transformers"
    assert "prorl" in meta["tags"] and "datasets" not in meta and "base_model" not in meta  # generated, built-in
    text = card.read_text()
    assert "step 3 of 3, reference resets at steps 2" in text
    assert "| `optim.lr` | 0.0003 |" in text and "| `rollout.n` | 4 |" in text
    state = json.loads((ckpt / "trainer_state.json").read_text())
    first, last = state["validation_history"][0], state["validation_history"][-1]
    assert (first["step"], last["step"]) == (0, 3)
    assert f"| val/score | {first['val/score']:.4g} | {last['val/score']:.4g} |" in text
    assert "## Prompt format" in text and domains.get("math").instruction in text


def test_hub_names_come_from_the_base_model_and_the_prepared_data(tmp_path):
    """A base model from the hub's cache, with a card stating its licence, and training files
    `prorl data prepare` made from hub datasets: the header names all three."""
    base = tmp_path / "hub" / "models--deepseek-ai--DeepSeek-R1-Distill-Qwen-1.5B" / "snapshots" / "abc"
    base.mkdir(parents=True)
    (base / "README.md").write_text("---\nlicense: mit\nlibrary_name: transformers\n---\n# DeepSeek\n")
    data = tmp_path / "data"
    data.mkdir()
    (data / "prepared.json").write_text(json.dumps({
        "math.jsonl": {"inputs": {"source": "hf:agentica-org/DeepScaleR-Preview-Dataset", "format": "deepscaler"}},
        "logic.jsonl": {"inputs": {"mix": "x", "seed": 0}}}))
    cfg = load_config(None, [f"model.hf_dir={base}", f"data.train=[{{domain: math, path: {data}/math.jsonl}}, "
                             f"{{domain: logic, path: {data}/logic.jsonl}}]",
                             "trainer.stages=[{name: 8k, steps: 10}]"])
    ckpt = tmp_path / "step_00000004"
    ckpt.mkdir()
    (ckpt / "config.yaml").write_text(to_yaml(cfg))
    (ckpt / "trainer_state.json").write_text(json.dumps({"step": 4, "validation_history": []}))
    model_dir = Path(shutil.copytree(resolve("builtin:tiny"), tmp_path / "model"))
    meta = header(write_model_card(model_dir, ckpt))
    assert meta["base_model"] == "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B" and meta["license"] == "mit"
    assert meta["datasets"] == ["agentica-org/DeepScaleR-Preview-Dataset"]
    assert list(json.loads((model_dir / PROMPT_FILE).read_text())["domains"]) == ["math", "logic"]


def test_a_model_without_a_training_run_gets_every_domains_prompt(tmp_path):
    model_dir = Path(shutil.copytree(resolve("builtin:tiny"), tmp_path / "model"))
    (model_dir / CARD_FILE).unlink()
    card = write_model_card(model_dir, None)
    fmt = json.loads((model_dir / PROMPT_FILE).read_text())
    assert list(fmt["domains"]) == domains.in_report_order(domains.names())
    for name, entry in fmt["domains"].items():
        assert entry["example"]["prompt"].startswith("<|user|>") and entry["example"]["prompt"].endswith("<|assistant|>")
    assert "records no training run" in card.read_text()
