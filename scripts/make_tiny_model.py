"""Make the embedded default model (megatron_prorl/assets/tiny) from scratch.

A tiny Qwen2-architecture model with the project's byte-level tokenizer is warmed up by
supervised learning on procedurally generated problems, rendered with exactly the prompts the
RL trainer uses (megatron_prorl.data.prompts), and saved once it is PARTIALLY competent: a
fully trained model leaves GRPO nothing to improve, an untrained one gives it no signal.

Mix: "What is a+b?" (math; a, b in 10..99, target " \\boxed{a+b}") and, for a quarter of each
batch, Reasoning Gym's chain_sum with two one-digit terms (logic; target " <answer>x</answer>").
A fixed held-out set of each (its own seed) is never trained on; it is written next to the
model as heldout.jsonl.

Greedy and sampled pass@1 on the held-out problems are measured every --eval-every steps;
training stops at the first evaluation whose addition pass@1 at the rollout temperature
reaches --stop-at. Batches come from Python's RNG and evaluation only draws from torch's, so
evaluating never changes the training trajectory. The warm-up is reproducible on one machine
and torch version, not bit for bit across machines: the chosen checkpoint itself is shipped.

    python scripts/make_tiny_model.py            # writes megatron_prorl/assets/tiny
    python scripts/make_tiny_model.py --corpus-only DIR   # only DIR/pretraining.jsonl (below)

The warm-up's pretraining corpus (every example a batch can draw, each one document: the
rendered prompt and its target completion, one JSON line {"text": ...}) is written by
--corpus-only without training or touching the model; the Creativity Index of responses
(`prorl eval creativity --corpus DIR`) is measured against it.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import time
from pathlib import Path

import reasoning_gym
import torch
from transformers import (AutoModelForCausalLM, AutoTokenizer, GenerationConfig, Qwen2Config,
                          Qwen2ForCausalLM)

from megatron_prorl.data.prompts import render_prompt
from megatron_prorl.data.schema import Row
from megatron_prorl.tokenizer import build_byte_tokenizer

ADD_RANGE = range(10, 100)
RG_TASK = "chain_sum"
RG_CONFIG = dict(min_terms=2, max_terms=2, min_digits=1, max_digits=1)
ROLLOUT_TEMPERATURE = 1.2
MAX_NEW_TOKENS = 24


def addition_row(a: int, b: int) -> Row:
    return Row(prompt=f"What is {a}+{b}?", domain="math", ground_truth=str(a + b),
               source="arithmetic:add", id=f"add-{a}-{b}")


def split_additions(heldout_seed: int, n_heldout: int) -> tuple[list, list]:
    """(training pairs, held-out pairs): a disjoint split of all (a, b) in ADD_RANGE^2."""
    pairs = [(a, b) for a in ADD_RANGE for b in ADD_RANGE]
    heldout = set(random.Random(heldout_seed).sample(pairs, n_heldout))
    return [p for p in pairs if p not in heldout], sorted(heldout)


def chain_sum_rows(seed: int, size: int) -> list[Row]:
    data = reasoning_gym.create_dataset(RG_TASK, seed=seed, size=size, **RG_CONFIG)
    return [Row(prompt=e["question"], domain="logic", source=f"reasoning_gym:{RG_TASK}",
                ground_truth={"task": RG_TASK, "entry": e}, id=f"{RG_TASK}-{seed}-{i}")
            for i, e in enumerate(data)]


def target_answer(row: Row) -> str:
    return row.ground_truth if row.domain == "math" else row.ground_truth["entry"]["answer"]


def target_completion(row: Row) -> str:
    """What the warm-up teaches: the bare answer in the domain's format (no reasoning)."""
    answer = target_answer(row)
    return f" \\boxed{{{answer}}}" if row.domain == "math" else f" <answer>{answer}</answer>"


def extract_answer(row: Row, completion: str) -> str | None:
    """The last \\boxed{} (math) or <answer></answer> (logic) in the completion."""
    pattern = r"\\boxed\{([^{}]*)\}" if row.domain == "math" else r"<answer>(.*?)</answer>"
    found = re.findall(pattern, completion, flags=re.DOTALL)
    return found[-1].strip() if found else None


def is_correct(row: Row, completion: str) -> bool:
    return extract_answer(row, completion) == target_answer(row)


def encode(tokenizer, row: Row) -> tuple[list[int], int]:
    """(prompt + completion + EOS token ids, number of prompt tokens)."""
    prompt = tokenizer(render_prompt(tokenizer, row), add_special_tokens=False)["input_ids"]
    answer = tokenizer(target_completion(row), add_special_tokens=False)["input_ids"]
    return prompt + answer + [tokenizer.eos_token_id], len(prompt)


def collate(examples: list[tuple[list[int], int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded batch; labels only on completion tokens (prompt and padding are -100)."""
    width = max(len(ids) for ids, _ in examples)
    input_ids = torch.full((len(examples), width), pad_id)
    labels = torch.full((len(examples), width), -100)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, (ids, n_prompt) in enumerate(examples):
        input_ids[i, :len(ids)] = torch.tensor(ids)
        labels[i, n_prompt:len(ids)] = torch.tensor(ids[n_prompt:])
        attention_mask[i, :len(ids)] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}


@torch.no_grad()
def pass_at_1(model, tokenizer, rows: list[Row], temperature: float | None,
              samples: int = 1) -> float:
    """Mean correctness over rows x samples; temperature None means greedy."""
    model.eval()
    batch = tokenizer([render_prompt(tokenizer, r) for r in rows], return_tensors="pt",
                      padding=True, padding_side="left", add_special_tokens=False)
    sampling = dict(do_sample=True, temperature=temperature, top_k=0, top_p=1.0) \
        if temperature is not None else dict(do_sample=False)
    out = model.generate(**batch, **sampling, num_return_sequences=samples,
                         max_new_tokens=MAX_NEW_TOKENS, pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id)
    texts = tokenizer.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
    model.train()
    return sum(is_correct(rows[i // samples], t) for i, t in enumerate(texts)) / len(texts)


def evaluate(model, tokenizer, heldout: dict[str, list[Row]], samples: int) -> dict[str, float]:
    scores = {}
    for name, rows in heldout.items():
        scores[f"{name}/greedy"] = pass_at_1(model, tokenizer, rows, None)
        for t in (1.0, ROLLOUT_TEMPERATURE):
            scores[f"{name}/pass@1_T{t}"] = pass_at_1(model, tokenizer, rows, t, samples)
    return scores


def build_model(vocab_size: int, tokenizer, args) -> Qwen2ForCausalLM:
    config = Qwen2Config(
        vocab_size=vocab_size, hidden_size=args.hidden, intermediate_size=args.ffn,
        num_hidden_layers=args.layers, num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads, max_position_embeddings=512, rope_theta=10000.0,
        rms_norm_eps=1e-6, tie_word_embeddings=True, use_sliding_window=False,
        bos_token_id=None, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id)
    # TP=2 splits heads and KV heads, PP=2 splits layers: the tests run both.
    for name in ("num_attention_heads", "num_key_value_heads", "num_hidden_layers"):
        if getattr(config, name) % 2:
            raise ValueError(f"{name}={getattr(config, name)}: must be even (TP=2, PP=2 tests)")
    return Qwen2ForCausalLM(config)


def write_model_card(out: Path, args, step: int, scores: dict, n_params: int, seconds: float):
    command = " ".join(["python scripts/make_tiny_model.py", *args.argv])
    rows = "\n".join(f"| {k} | {v:.3f} |" for k, v in scores.items())
    (out / "README.md").write_text(f"""# tiny: the embedded default model

A {n_params:,}-parameter Qwen2-architecture causal LM, deliberately only PARTIALLY competent
so that GRPO on a CPU improves it visibly. Made from random init by `{command}`.

- Architecture: hidden {args.hidden}, {args.layers} layers, {args.heads} heads, {args.kv_heads} KV heads, \
FFN {args.ffn}, tied embeddings, RoPE theta 10000, fp32 safetensors.
- Tokenizer: byte level with no merges (`megatron_prorl/tokenizer.py`): one token per byte,
  Qwen2's pre-tokenizer, special tokens `<|pad|>`, `<|endoftext|>` (EOS), `<|system|>`,
  `<|user|>`, `<|assistant|>`. Chat template: `<|user|>{{message}}<|assistant|>`.
- Data, with exactly the RL trainer's prompts (`megatron_prorl.data.prompts.render_prompt`):
  - math, source `arithmetic:add`: "What is a+b?", a and b uniform in 10..99, target
    ` \\boxed{{a+b}}` + EOS; the {args.heldout} held-out pairs (seed {args.heldout_seed}) never trained on.
  - logic, {args.rg_share:.0%} of each batch: Reasoning Gym `{RG_TASK}` with {RG_CONFIG},
    target ` <answer>x</answer>` + EOS; {args.heldout_rg} held-out questions (seed {args.heldout_seed}) never
    trained on. `heldout.jsonl` holds both held-out sets as the project's `Row`s.
- Warm-up: seed {args.seed}, AdamW lr {args.lr}, gradient norm clipped to 1, batch {args.batch}, loss
  on completion tokens only, {args.threads} thread(s). Stopped at the first evaluation (every
  {args.eval_every} steps) with add pass@1 at T={ROLLOUT_TEMPERATURE} >= {args.stop_at}: step {step}, \
{seconds:.0f} s of training.
- Completions are at most 20 tokens: give rollouts at least {MAX_NEW_TOKENS} new tokens.

## Held-out scores of the saved files

pass@1: {args.samples} samples per problem, pure sampling (no top-k/top-p) at temperature T, at
most {MAX_NEW_TOKENS} new tokens. Correct: the last `\\boxed{{}}` (logic: `<answer></answer>`) equals
the answer.

| metric | value |
|---|---|
{rows}

The warm-up is reproducible on one machine and torch version, not bit for bit across
machines: this checkpoint is the reference.
""")


def write_corpus(out: Path, tokenizer, rows: list[Row]) -> None:
    """The warm-up's pretraining corpus: one document per distinct training example, the prompt
    as the model sees it (chat template included) followed by its target completion."""
    texts = list(dict.fromkeys(render_prompt(tokenizer, r) + target_completion(r) for r in rows))
    out.mkdir(parents=True, exist_ok=True)
    path = out / "pretraining.jsonl"
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as f:
        f.writelines(json.dumps({"text": t}) + "\n" for t in texts)
    tmp.replace(path)
    print(f"wrote {len(texts)} documents to {path}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("megatron_prorl/assets/tiny"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--heldout-seed", type=int, default=12345)
    p.add_argument("--heldout", type=int, default=200)
    p.add_argument("--heldout-rg", type=int, default=50)
    p.add_argument("--rg-share", type=float, default=0.25)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--ffn", type=int, default=192)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--lr", type=float, default=4e-3)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--max-steps", type=int, default=2000)
    p.add_argument("--eval-every", type=int, default=25)
    p.add_argument("--samples", type=int, default=4)
    p.add_argument("--stop-at", type=float, default=0.2,
                   help=f"stop once held-out add pass@1 at T={ROLLOUT_TEMPERATURE} reaches this")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--corpus-only", type=Path, default=None, metavar="DIR",
                   help="write the warm-up's corpus to DIR/pretraining.jsonl and exit (no training)")
    args = p.parse_args(argv)
    if not 0 <= args.rg_share < 1:
        p.error(f"--rg-share={args.rg_share}: must be in [0, 1)")
    args.argv = argv if argv is not None else sys.argv[1:]

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    tokenizer = build_byte_tokenizer()
    model = build_model(len(tokenizer), tokenizer, args)

    train_pairs, heldout_pairs = split_additions(args.heldout_seed, args.heldout)
    heldout = {"add": [addition_row(a, b) for a, b in heldout_pairs]}
    train_add_rows = [addition_row(a, b) for a, b in train_pairs]
    train_rg_rows = []
    if args.rg_share > 0:
        heldout["chain_sum"] = chain_sum_rows(args.heldout_seed, args.heldout_rg)
        held_questions = {r.prompt for r in heldout["chain_sum"]}
        train_rg_rows = [r for r in chain_sum_rows(args.seed, 5000) if r.prompt not in held_questions]
    if args.corpus_only:
        write_corpus(args.corpus_only, tokenizer, train_add_rows + train_rg_rows)
        return
    train_add = [encode(tokenizer, r) for r in train_add_rows]
    train_rg = [encode(tokenizer, r) for r in train_rg_rows]
    n_rg = round(args.batch * args.rg_share)

    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"{n_params:,} parameters; {len(train_add)} train additions, {len(train_rg)} "
          f"{RG_TASK} rows; {n_rg}/{args.batch} {RG_TASK} per batch", flush=True)
    model.train()
    start, train_seconds = time.perf_counter(), 0.0
    for step in range(1, args.max_steps + 1):
        t0 = time.perf_counter()
        batch = collate(rng.choices(train_add, k=args.batch - n_rg) + rng.choices(train_rg, k=n_rg),
                        tokenizer.pad_token_id)
        loss = model(**batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        train_seconds += time.perf_counter() - t0
        if step % args.eval_every:
            continue
        scores = evaluate(model, tokenizer, heldout, args.samples)
        print(f"step {step} loss {loss.item():.4f} train {train_seconds:.0f}s wall "
              f"{time.perf_counter() - start:.0f}s " +
              " ".join(f"{k} {v:.3f}" for k, v in scores.items()), flush=True)
        if scores[f"add/pass@1_T{ROLLOUT_TEMPERATURE}"] >= args.stop_at:
            break
    else:
        raise SystemExit(f"never reached pass@1 {args.stop_at} in {args.max_steps} steps")

    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out, safe_serialization=True)
    GenerationConfig(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
                     ).save_pretrained(args.out)
    build_byte_tokenizer().save_pretrained(args.out)  # a fresh one: no padding state
    with open(args.out / "heldout.jsonl", "w") as f:
        for rows in heldout.values():
            f.writelines(json.dumps(r.to_dict()) + "\n" for r in rows)
    # The card reports what a user gets: the saved files, loaded back as users load them.
    torch.manual_seed(args.seed)
    scores = evaluate(AutoModelForCausalLM.from_pretrained(args.out),
                      AutoTokenizer.from_pretrained(args.out), heldout, args.samples)
    print("reloaded: " + " ".join(f"{k} {v:.3f}" for k, v in scores.items()))
    write_model_card(args.out, args, step, scores, n_params, train_seconds)
    print(f"saved step {step} to {args.out}")


if __name__ == "__main__":
    main()
