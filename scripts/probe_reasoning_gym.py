"""Probe every Reasoning Gym task: does it generate offline, how fast, and does its own scorer
give its own answer full marks (also after the lossless JSON round trip our files use)?

Each task runs in a child process with the network blocked (sockets refuse to connect,
HF_HUB_OFFLINE=1) and a time limit, on its default config. The result is what
megatron_prorl/data/reasoning_gym_mix.py records: this script prints a table and, with
--check, the tasks whose probe disagrees with the mix (exit 1 if any).

    python scripts/probe_reasoning_gym.py [--items 32] [--timeout 60] [--check] [TASK ...]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import time

# A task slower than this per problem is excluded: its ~356 training problems would take half
# an hour on one core. Generous on purpose: timings vary 3x with the machine's load (futoshiki,
# the slowest task, took 0.44 s idle and 1.3 s on a loaded 2-core machine).
MAX_SECONDS_PER_ITEM = 5.0


def _block_network() -> None:
    import socket

    def refuse(*args, **kwargs):
        raise OSError("network blocked by probe_reasoning_gym")

    socket.socket.connect = refuse
    socket.socket.connect_ex = refuse
    socket.create_connection = refuse


def reference_answer(entry: dict):
    """The entry's answer; for tasks scored by validity (answer None), the example answer some
    keep in their metadata, as the JSON text a model would write; None if there is none."""
    if entry.get("answer") is not None:
        return entry["answer"]
    for key in ("possible_answer", "example_answer", "example_correct_answer"):
        example = entry["metadata"].get(key)
        if example is not None:
            return example if isinstance(example, str) else json.dumps(example)
    return None


def _probe(task: str, items: int, out) -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"
    _block_network()
    try:
        import reasoning_gym

        from megatron_prorl.data import jsoncodec

        start = time.perf_counter()
        dataset = reasoning_gym.create_dataset(task, seed=1234, size=items)
        score = reasoning_gym.get_score_answer_fn(task)
        init_s = time.perf_counter() - start
        start = time.perf_counter()
        entries = [dataset[i] for i in range(items)]
        per_item = (time.perf_counter() - start) / items
        worst = None  # stays None for tasks with no reference answer to check
        for entry in entries:
            if not isinstance(entry.get("question"), str) or not entry["question"].strip():
                raise ValueError("entry has no question text")
            stored = jsoncodec.decode(json.loads(json.dumps(jsoncodec.encode(entry))))
            answer = reference_answer(entry)
            if answer is not None:
                scores = (float(score(answer, entry)), float(score(answer, stored)))
                worst = min(scores + ((worst,) if worst is not None else ()))
        out.put({"task": task, "ok": True, "init_s": round(init_s, 3), "s_per_item": round(per_item, 4),
                 "gold_score": worst})
    except BaseException as exc:  # the probe reports every failure, whatever it is
        first_line = str(exc).splitlines()[0][:160] if str(exc) else ""
        out.put({"task": task, "ok": False, "error": f"{type(exc).__name__}: {first_line}"})


def probe(task: str, items: int, timeout: float) -> dict:
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    child = ctx.Process(target=_probe, args=(task, items, out))
    child.start()
    child.join(timeout)
    if child.is_alive():
        child.kill()
        child.join()
        return {"task": task, "ok": False, "error": f"timed out after {timeout:.0f} s for {items} items"}
    if out.empty():
        return {"task": task, "ok": False, "error": f"child exited with code {child.exitcode}"}
    return out.get()


def verdict(result: dict) -> str:
    """'ok', or the reason the task cannot be in the offline training mix."""
    if not result["ok"]:
        return result["error"]
    if result["s_per_item"] > MAX_SECONDS_PER_ITEM:
        return f"slow: {result['s_per_item']:.2f} s per problem"
    if result["gold_score"] is not None and result["gold_score"] < 1.0:
        return f"its scorer gives its own answer {result['gold_score']:.2f}, not 1.0"
    return "ok"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tasks", nargs="*", help="tasks to probe (default: all)")
    # 32: gsm_symbolic puts a Fraction (which our files must store) in about 1 entry in 20.
    parser.add_argument("--items", type=int, default=32)
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--check", action="store_true", help="compare with reasoning_gym_mix; exit 1 on a difference")
    args = parser.parse_args(argv)
    from reasoning_gym.factory import DATASETS

    from megatron_prorl.data import reasoning_gym_mix as mix

    differ = []
    for task in args.tasks or sorted(DATASETS):
        result = probe(task, args.items, args.timeout)
        why = verdict(result)
        timing = f"{result['s_per_item'] * 1000:8.1f} ms/item  init {result['init_s']:.2f} s" if result["ok"] else ""
        print(f"{task:28s} {why if why != 'ok' else 'ok':60.60s} {timing}", flush=True)
        recorded = mix.offline_status(task)
        if (why == "ok") != (recorded == "ok"):
            differ.append(f"{task}: probe says {why!r}, the mix records {recorded!r}")
    if args.check:
        print("\n".join(differ) if differ else "the mix agrees with the probe")
        return 1 if differ else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
