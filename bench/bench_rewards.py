"""Reward throughput: items verified per second per domain, measured side by side in one run:

- in-process: ``score_detailed`` called item by item in this process (what a user would write
  first: the verifier inside the training process);
- RewardPool with 1 worker, and with one worker per core (scaling should be near-linear);
- the code sandbox's start-up cost per program (a trivial program), per sandbox mode, next to
  a bare ``python3`` start.

Also the CPU time per item of each path (this process, the pool's workers and every sandbox
they ran): on a machine shared with other work the wall-clock scaling is bounded by the free
cores, while the CPU cost per item shows what the pool itself adds.

Throughputs are the best of 3 timed passes (each over new items), after a warm-up.

Usage: python bench/bench_rewards.py [--scale 1.0] [--workers N] [--domains math,code,...]
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import statistics
import subprocess
import time

import psutil

from megatron_prorl.config import RewardsConfig
from megatron_prorl.rewards import RewardItem, RewardPool, score_detailed
from megatron_prorl.sandbox.sandbox import Limits, Sandbox, SandboxUnavailable

THINK = "<think>" + "Let me reason about this carefully. " * 60 + "</think>"


def math_items(n: int, rng: random.Random) -> list[RewardItem]:
    """Distinct problems (no cache helps): equivalent forms of many kinds, and wrong answers."""
    def pair() -> tuple[str, str]:
        a, b, c = rng.randint(1, 99), rng.choice([2, 4, 5, 8, 10, 20, 25]), rng.choice([2, 3, 5, 6, 7])
        return rng.choice([
            (f"\\frac{{{a}}}{{{b}}}", f"{a / b:g}"), (f"{a}\\sqrt{{{c}}}", f"\\sqrt{{{a * a * c}}}"),
            (f"x^2+{2 * a}x+{a * a}", f"(x+{a})^2"), (f"{a}\\%", f"{a / 100:g}"), (f"[{a},{a + b})", f"[{a}, {a + b})"),
            (f"{a}", f"{a}\\text{{ cm}}"), (f"{a}", f"{a + 1}"), (f"\\frac{{{a}}}{{{c}}}", f"{a / c + 0.01:.3f}")])
    return [RewardItem("math", f"{THINK}So the answer is \\boxed{{{answer}}}.", gold)
            for gold, answer in (pair() for _ in range(n))]


def stem_items(n: int, rng: random.Random) -> list[RewardItem]:
    def pair() -> tuple[str, str]:
        letter, value = rng.choice("ABCD"), round(rng.uniform(1, 100), 2)
        return rng.choice([(letter, f"\\boxed{{{letter}}}"), (letter, f"the answer is ({rng.choice('ABCD')})"),
                           (f"{value}", f"\\boxed{{{value}\\text{{ m/s}}^2}}"),
                           (f"{value}e23", f"\\boxed{{{value}\\times10^{{23}}}}")])
    return [RewardItem("stem", THINK + answer, gold) for gold, answer in (pair() for _ in range(n))]


def logic_items(n: int, rng: random.Random) -> list[RewardItem]:
    import reasoning_gym

    out = []
    tasks = ["basic_arithmetic", "word_sorting", "spell_backward", "letter_counting", "chain_sum"]
    entries = {t: list(reasoning_gym.create_dataset(t, size=32, seed=1)) for t in tasks}
    for _ in range(n):
        task = rng.choice(tasks)
        entry = rng.choice(entries[task])
        answer = entry["answer"] if rng.random() < 0.5 else "wrong"
        out.append(RewardItem("logic", f"{THINK}<answer>{answer}</answer>", {"task": task, "entry": entry}))
    return out


def ifeval_items(n: int, rng: random.Random) -> list[RewardItem]:
    gt = {"instruction_id_list": ["punctuation:no_comma", "length_constraints:number_words",
                                  "change_case:english_lowercase", "detectable_format:number_bullet_lists"],
          "kwargs": [{}, {"num_words": 50, "relation": "at least"}, {}, {"num_bullets": 3}]}
    words = ["the", "model", "writes", "a", "short", "answer", "about", "rivers", "and", "lakes"]

    def response() -> str:
        body = " ".join(rng.choice(words) for _ in range(rng.randint(30, 150)))
        return rng.choice([f"{THINK}* {body}\n* second point\n* third", f"{THINK}Hello, {body}"])
    return [RewardItem("ifeval", response(), gt) for _ in range(n)]


def code_items(n: int, rng: random.Random) -> list[RewardItem]:
    """A correct or a wrong program against 5 stdin/stdout tests each."""
    good = "```python\nimport sys\na, b = map(int, sys.stdin.read().split())\nprint(a + b)\n```"
    bad = "```python\na, b = map(int, input().split())\nprint(a - b)\n```"
    out = []
    for _ in range(n):
        pairs = [(rng.randint(-999, 999), rng.randint(-999, 999)) for _ in range(5)]
        tests = {"inputs": [f"{a} {b}\n" for a, b in pairs], "outputs": [f"{a + b}\n" for a, b in pairs]}
        out.append(RewardItem("code", THINK + rng.choice([good, bad]), tests))
    return out


# Item counts sized for a few seconds per measurement on one core.
BUILDERS = {"math": (math_items, 600), "stem": (stem_items, 3000), "logic": (logic_items, 6000),
            "ifeval": (ifeval_items, 3000), "code": (code_items, 100)}
REPEATS = 3  # passes, each on new items; best of: other processes only ever slow a pass down


def _cpu_s(pids: list[int]) -> float:
    """CPU seconds used so far by this process, its reaped children (sandboxes) and ``pids``
    (pool workers) with their reaped children."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    total = own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime
    for pid in pids:
        t = psutil.Process(pid).cpu_times()
        total += t.user + t.system + t.children_user + t.children_system
    return total


def _timed(run, passes: list[list[RewardItem]], pids: list[int]) -> tuple[float, float]:
    """(best items/s over the passes, CPU ms per item over all of them). Each pass has its own
    items: repeating items would time sympy's caches, not the verifiers."""
    best, cpu0 = 0.0, _cpu_s(pids)
    for items in passes:
        start = time.perf_counter()
        run(items)
        best = max(best, len(items) / (time.perf_counter() - start))
    return best, 1000 * (_cpu_s(pids) - cpu0) / sum(len(p) for p in passes)


def in_process(warmup: list[RewardItem], passes: list[list[RewardItem]], cfg: RewardsConfig) -> tuple[float, float]:
    def run(items: list[RewardItem]) -> None:
        for it in items:
            score_detailed(it.domain, it.response, it.ground_truth, finished=it.finished, cfg=cfg)

    run(warmup)  # imports, first-call costs
    return _timed(run, passes, [])


def pooled(warmup: list[RewardItem], passes: list[list[RewardItem]], cfg: RewardsConfig,
           workers: int) -> tuple[float, float]:
    with RewardPool(cfg, num_workers=workers, preload=(warmup[0].domain,)) as pool:
        pool.map(warmup)  # every worker started and warm
        return _timed(pool.map, passes, pool.worker_pids)


def sandbox_startup(repeats: int) -> None:
    bare = []
    for _ in range(repeats):
        t = time.perf_counter()
        subprocess.run(["/usr/bin/python3", "-I", "-S", "-c", "print(1)"], capture_output=True, check=True)
        bare.append(time.perf_counter() - t)
    print(f"  bare python3 start (no sandbox)      {1000 * statistics.median(bare):7.1f} ms")
    for mode in ("bwrap", "rlimit"):
        try:
            box = Sandbox(mode)
        except SandboxUnavailable as exc:
            print(f"  {mode:6s} sandbox: unavailable ({exc})")
            continue
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            result = box.run(["/usr/bin/python3", "-I", "-S", "-c", "print(1)"], b"", Limits())
            times.append(time.perf_counter() - t)
            assert result.stdout == b"1\n", result
        med = statistics.median(times)
        print(f"  {mode:6s} sandbox, trivial program        {1000 * med:7.1f} ms  "
              f"(overhead {1000 * (med - statistics.median(bare)):+.1f} ms)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=1.0, help="multiply the item counts")
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--domains", default=",".join(BUILDERS))
    args = parser.parse_args()
    cfg = RewardsConfig()
    rng = random.Random(0)
    print(f"cores available: {len(os.sched_getaffinity(0))}, pool workers: {args.workers}, "
          f"load average at start: {os.getloadavg()[0]:.2f}")
    pool_n = f"pool({args.workers})/s"
    print("items/s: best of 3 passes (wall clock); CPU ms/item: all processes involved, all passes")
    print(f"{'domain':8s} {'items':>6s} {'in-proc/s':>10s} {'pool(1)/s':>10s} {pool_n:>11s} "
          f"{'N/in-proc':>10s} {'N/1':>6s} {'CPU ms/item in-proc':>20s} {'pool(N)':>8s}")
    for domain in args.domains.split(","):
        build, count = BUILDERS[domain]
        count = max(8, int(count * args.scale))
        warmup = build(8 * args.workers, rng)
        passes = [build(count, rng) for _ in range(REPEATS)]
        base, base_cpu = in_process(warmup, passes, cfg)
        one, _ = pooled(warmup, passes, cfg, 1)
        many, many_cpu = pooled(warmup, passes, cfg, args.workers)
        print(f"{domain:8s} {count:6d} {base:10.1f} {one:10.1f} {many:11.1f} "
              f"{many / base:10.2f} {many / one:6.2f} {base_cpu:20.3f} {many_cpu:8.3f}")
    print("sandbox start-up per program (median of 30):")
    sandbox_startup(30)


if __name__ == "__main__":
    main()
