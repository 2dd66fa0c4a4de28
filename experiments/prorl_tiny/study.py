"""What the study runs: the budgets, the training runs, the evaluation sets, and the units
(one public command each) that produce every result the report reads.

Every unit is a command line: ``prorl train``, ``prorl eval``, ``prorl eval compare``,
``prorl eval creativity`` or ``scripts/make_tiny_model.py --corpus-only``. Commands run in
the study's output directory with paths relative to it (the directory can be moved), so a
unit is identified by its command alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parents[2]
CONFIG = "{REPO}/configs/tiny_cpu.yaml"  # the embedded default: the full ProRL recipe
MAKE_MODEL = "{REPO}/scripts/make_tiny_model.py"
REPORT_NAME = "study-prorl-tiny"
MAX_NEW_TOKENS = 24  # the tiny model's answers are at most 20 tokens (its model card)


@dataclass(frozen=True)
class Cost:
    """CPU seconds of one thread on this project's 2-core machine: the plan's estimate and the
    progress ETA (which rescales them by what finished units actually took)."""

    train_start: float = 20.0  # imports, data generation, validation before the first step
    train_step: float = 2.3  # one step of the recipe (16 prompts x 8 samples), validation amortised
    eval_start: float = 8.0
    eval_response: float = 1.0e-3  # one sampled and verified response of <= 24 tokens
    creativity_response: float = 1.0e-4
    small: float = 10.0  # corpus, compare, report
    measured: str = (
        "`/usr/bin/time prorl train configs/tiny_cpu.yaml` (the 120-step default) took 260 CPU s, about 20 of "
        "them before the first step: 2.0 s per step, validation included; 2.3 s allows for more "
        "dynamic-sampling rounds as accuracy grows (1.8 rounds per step on average in those 120 steps). "
        "`prorl eval` of the base model on this study's evaluation sets at 256 samples (750 problems, "
        "192,000 responses) took 200 CPU s: 1.0 ms per response. `prorl eval creativity` scored 115,000 "
        "responses in 11 CPU s, index included.")


@dataclass(frozen=True)
class Budget:
    name: str
    steps: int  # the prolonged runs (full recipe and ablations)
    short_steps: int  # the default run (configs/tiny_cpu.yaml as shipped)
    seeds: tuple[int, ...]  # trainer.seed of the full recipe; the ablations use the first
    checkpoint_every: int
    regime_steps: tuple[int, ...]  # checkpoints of the first seed evaluated for the regimes
    val_every: int
    samples: int  # responses per problem: pass@1..samples
    size: int  # problems per generator source (the held-out file is used whole)
    regime_k: int  # the large k of the regimes (the paper: 128)
    train_overrides: tuple[str, ...] = ()
    creativity_limit: Optional[int] = None  # responses per file scored (None: all)
    cost: Cost = field(default_factory=Cost)


BUDGETS = {
    # 6 prolonged runs x 500 steps + the 120-step default: see the report's budget section.
    "full": Budget("full", steps=500, short_steps=120, seeds=(42, 43, 44), checkpoint_every=25,
                   regime_steps=(125, 250, 375), val_every=20, samples=256, size=100, regime_k=128),
    # The same pipeline in minutes (CI): tiny data pools, a few steps, a few samples.
    "smoke": Budget("smoke", steps=4, short_steps=2, seeds=(42,), checkpoint_every=2, regime_steps=(2,),
                    val_every=2, samples=8, size=4, regime_k=4,
                    train_overrides=("data.train.0.size=2000", "data.train.1.size=500",
                                     "batch.prompts_per_step=8", "batch.prompts_per_mini_batch=4"),
                    creativity_limit=2000, cost=Cost(train_start=15.0, train_step=1.5, eval_start=10.0,
                              measured="the smoke runs' own starts and steps (smaller data pools and batches)")),
}


def default_out(budget: str) -> str:
    """The study directory when --out is not given, relative to the checkout."""
    return "runs/study" if budget == "full" else f"runs/study-{budget}"


@dataclass(frozen=True)
class EvalSet:
    source: str  # a `prorl eval --data` SOURCE
    label: str  # short, for tables and figures
    kind: str  # in-distribution, harder, never trained
    what: str


HELDOUT = "builtin:tiny/heldout.jsonl"
EVAL_SETS = (
    EvalSet(HELDOUT, "held-out", "in-distribution", "the model's own held-out problems of both training tasks "
            "(200 two-digit additions, 50 one-digit chain sums), never trained on"),
    EvalSet("arithmetic:add?low=100&high=999", "add 3-digit", "harder", "addition of 3-digit terms (trained: 2 digits)"),
    EvalSet("arithmetic:add?terms=3", "add 3 terms", "harder", "addition of 3 two-digit terms (trained: 2 terms)"),
    EvalSet("reasoning_gym:chain_sum?min_terms=2&max_terms=2&min_digits=2&max_digits=2", "chain_sum 2-digit",
            "harder", "chain_sum with 2-digit terms (trained: 1 digit)"),
    EvalSet("reasoning_gym:chain_sum?min_terms=3&max_terms=3&min_digits=1&max_digits=1", "chain_sum 3 terms",
            "harder", "chain_sum of 3 one-digit terms (trained: 2)"),
    EvalSet("arithmetic:sub", "sub", "never trained", "subtraction, \"What is a-b?\" with 2-digit terms "
            "(in neither the warm-up nor RL)"),
)
HELDOUT_FILE = "heldout.jsonl"  # how `prorl eval` labels the builtin held-out file
HELDOUT_DOMAINS = {"math": "held-out add", "logic": "held-out chain_sum"}


def benchmark_set(name: str) -> EvalSet:
    """The evaluation set a benchmark of results.json comes from (the held-out file splits into
    one benchmark per domain, `heldout.jsonl[math]` and `heldout.jsonl[logic]`)."""
    if name.split("[")[0] == HELDOUT_FILE:
        return EVAL_SETS[0]
    for s in EVAL_SETS:
        if s.source == name:
            return s
    raise KeyError(f"benchmark {name!r} is not one of the study's evaluation sets")


def benchmark_label(name: str) -> str:
    if name.split("[")[0] == HELDOUT_FILE:
        return HELDOUT_DOMAINS.get(name.split("[")[-1].rstrip("]"), name)
    return benchmark_set(name).label


@dataclass(frozen=True)
class Run:
    name: str
    role: str  # "full", "short" or an ablation's name
    seed: int
    steps: int
    overrides: tuple[str, ...]
    what: str


ABLATIONS = (
    ("no-kl", ("algo.kl_beta=0",), "no KL penalty (algo.kl_beta=0)"),
    ("no-reset", ("reset.every_n_steps=0",), "no reference resets (reset.every_n_steps=0)"),
    ("no-ds", ("algo.dynamic_sampling=false",), "no dynamic sampling (algo.dynamic_sampling=false)"),
)


def training_runs(b: Budget) -> list[Run]:
    seed = b.seeds[0]
    runs = [Run(f"full-s{seed}", "full", seed, b.steps, (), "full ProRL recipe, prolonged")]
    runs += [Run(name, name, seed, b.steps, over, what) for name, over, what in ABLATIONS]
    runs += [Run(f"full-s{s}", "full", s, b.steps, (), "full ProRL recipe, prolonged") for s in b.seeds[1:]]
    runs.append(Run("short", "short", seed, b.short_steps, (), "the default run: configs/tiny_cpu.yaml as shipped"))
    return runs


@dataclass(frozen=True)
class Unit:
    name: str  # kind/label: train/full-s42, eval/base, compare/regimes, creativity, corpus
    argv: tuple[str, ...]  # "prorl" and "python" are resolved when run; {REPO} is the repository
    deps: tuple[str, ...]
    cost: float  # estimated CPU seconds
    expect: int = 0  # train: steps; eval: responses (for progress)

    @property
    def kind(self) -> str:
        return self.name.split("/")[0]

    @property
    def out(self) -> str:
        """Its output directory, relative to the study's."""
        return self.name


def train_argv(b: Budget, run: Run) -> tuple[str, ...]:
    keep = run.steps // b.checkpoint_every + 2  # every checkpoint stays: the regimes evaluate them
    return ("prorl", "train", CONFIG, f"trainer.output_dir=train/{run.name}", f"trainer.seed={run.seed}",
            f"trainer.stages.0.steps={run.steps}", f"trainer.val_every={b.val_every}",
            f"checkpoint.every={b.checkpoint_every}", f"checkpoint.keep_last={keep}",
            "logging.tensorboard=false", "logging.progress=false", *b.train_overrides, *run.overrides)


HELDOUT_PROBLEMS = 250


def eval_problems(b: Budget) -> int:
    return HELDOUT_PROBLEMS + b.size * (len(EVAL_SETS) - 1)


def eval_argv(b: Budget, name: str, model: str) -> tuple[str, ...]:
    return ("prorl", "eval", "--model", model, "--data", *(s.source for s in EVAL_SETS), "--samples", str(b.samples),
            "--size", str(b.size), "--max-new-tokens", str(MAX_NEW_TOKENS), "--temperature", "0.6",
            "--top-p", "0.95", "--out", f"eval/{name}", "--quiet")


def checkpoint_dir(run: Run, step: int) -> str:
    return f"train/{run.name}/checkpoints/step_{step:08d}"


def regime_evals(b: Budget) -> list[str]:
    """The evaluations along the first seed's run, in training order (base first, final last)."""
    first = training_runs(b)[0]
    return ["base", *(f"{first.name}-step{s:04d}" for s in b.regime_steps), first.name]


def creativity_files(b: Budget) -> list[str]:
    return ["base", *(f"full-s{s}" for s in b.seeds)]


CREATIVITY_NGRAMS = (3, 5)  # see the report: responses are 5-15 words, not the paper's paragraphs


def plan(b: Budget) -> list[Unit]:
    """Every unit, in the order a single worker runs them (a run's evaluations follow it)."""
    c = b.cost
    responses = eval_problems(b) * b.samples
    eval_cost = c.eval_start + responses * c.eval_response

    def evaluation(name: str, model: str, deps: tuple[str, ...]) -> Unit:
        return Unit(f"eval/{name}", eval_argv(b, name, model), deps, eval_cost, responses)

    units = [Unit("corpus", ("python", MAKE_MODEL, "--corpus-only", "corpus"), (), c.small),
             evaluation("base", "builtin:tiny", ())]
    for i, run in enumerate(training_runs(b)):
        train = Unit(f"train/{run.name}", train_argv(b, run), (), c.train_start + run.steps * c.train_step,
                     run.steps)
        units += [train, evaluation(run.name, f"train/{run.name}", (train.name,))]
        if i == 0:
            units += [evaluation(f"{run.name}-step{s:04d}", checkpoint_dir(run, s), (train.name,))
                      for s in b.regime_steps]
    compares = [("regimes", regime_evals(b))] + [(f"base-vs-full-s{s}", ["base", f"full-s{s}"]) for s in b.seeds]
    for name, evals in compares:
        units.append(Unit(f"compare/{name}", ("prorl", "eval", "compare", *(f"eval/{e}" for e in evals),
                                              "--out", f"compare/{name}", "--k", str(b.regime_k)),
                          tuple(f"eval/{e}" for e in evals), c.small))
    files = creativity_files(b)
    limit = ("--limit", str(b.creativity_limit)) if b.creativity_limit else ()
    scored = min(responses, b.creativity_limit or responses) * len(files)
    units.append(Unit("creativity", ("prorl", "eval", "creativity", "--corpus", "corpus", "--responses",
                                     *(f"eval/{f}/samples.jsonl" for f in files), "--out", "creativity",
                                     "--min-ngram", str(CREATIVITY_NGRAMS[0]), "--max-ngram",
                                     str(CREATIVITY_NGRAMS[1]), *limit, "--quiet"),
                      ("corpus", *(f"eval/{f}" for f in files)), c.eval_start + scored * c.creativity_response))
    return units


# Measured: a line of samples.jsonl (tiny model, <= 24 tokens); a checkpoint of the tiny run
# (policy, reference, optimizer).
SAMPLE_BYTES, CHECKPOINT_BYTES = 265, 2.2e6


def disk_estimate(b: Budget) -> float:
    evals = sum(u.kind == "eval" for u in plan(b))
    checkpoints = sum(r.steps // b.checkpoint_every + 1 for r in training_runs(b))
    return evals * eval_problems(b) * b.samples * SAMPLE_BYTES + checkpoints * CHECKPOINT_BYTES


def total_cost(b: Budget) -> float:
    return sum(u.cost for u in plan(b)) + b.cost.small  # + the report


def hours(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes = math.ceil(seconds / 60)
    return f"{minutes} min" if minutes < 90 else f"{minutes // 60} h {minutes % 60:02d} min"
