"""ProRL's logic domain: the Reasoning Gym mix, in one place.

The paper trained on the Reasoning Gym tasks (96 of them at the time; 37k training problems,
9.6k validation) and held a few out as out-of-distribution tests: boxnet, and graph_color on
larger graphs than it trained on. This module lists the tasks, their weights and the held-out
ones; ``prorl data prepare`` generates from it the files configs/prorl_1p5b_4node.yaml reads
(logic.jsonl for training, logic_val.jsonl for validation). It generates once, offline, rather
than at each training start, because 37k problems take minutes (futoshiki alone ~0.4 s each)
and the files pin the problems whatever Reasoning Gym version a cluster has.

Which tasks generate offline was probed on reasoning_gym 0.1.25 (106 tasks) with
scripts/probe_reasoning_gym.py: each task in a child process with the network blocked,
32 problems on its default config, checking that the task's own scorer gives its own answer
(or, for tasks scored by validity, the example answer in its metadata) full marks, also after
the lossless JSON round trip of our files. ``python scripts/probe_reasoning_gym.py --check``
re-runs the probe against this module (e.g. after a Reasoning Gym upgrade). All but one
generate offline, none slower than the probe's 5 s per problem; the slowest, on an idle core,
are futoshiki (0.44 s), puzzle24 (0.22), knight_swap (0.18), sokoban (0.17) and zebra_puzzles
(0.15): the 37k training problems take several minutes.

Tasks are named ``TASK`` or ``TASK?key=value&...`` (a config, as in the ``reasoning_gym:``
generator paths of megatron_prorl/data/generators.py). Weights are relative: a split's
problems are shared among its tasks in proportion to them.
"""

from __future__ import annotations

import hashlib
import json
from importlib.metadata import version
from typing import Mapping

from megatron_prorl.data import generators
from megatron_prorl.data.loader import derive_seed
from megatron_prorl.data.schema import Row

TRAIN_SIZE = 37_000
# ASSUMPTION: the paper's 9.6k validation problems would cost 9.6k x trainer.val_samples (16)
# responses per validation; 480 (4 per trained task, 32 per held-out one) cost about two
# training steps of generation, every trainer.val_every (20) steps.
VAL_SIZE = 480

# Every task that generates offline, with its training weight. ASSUMPTION: the paper gives no
# per-task weights; all equal (about 356 problems each at TRAIN_SIZE).
TRAIN_WEIGHTS: dict[str, float] = dict.fromkeys((
    "ab", "acre", "advanced_geometry", "aiw", "arc_1d", "arc_agi", "base_conversion",
    "basic_arithmetic", "bf", "binary_alternation", "binary_matrix", "bitwise_arithmetic",
    "caesar_cipher", "calendar_arithmetic", "chain_sum", "circuit_logic", "codeio", "coin_flip",
    "color_cube_rotation", "complex_arithmetic", "count_bits", "count_primes", "countdown",
    "course_schedule", "cryptarithm", "decimal_arithmetic", "decimal_chain_sum", "dice",
    "emoji_mystery", "family_relationships", "figlet_font", "fraction_simplification", "futoshiki",
    "game_of_life", "game_of_life_halting", "gcd", "graph_color", "group_anagrams", "gsm_symbolic",
    "intermediate_integration", "isomorphic_strings", "jugs", "kakurasu", "knight_swap",
    "knights_knaves", "largest_island", "lcm", "leg_counting", "letter_counting", "letter_jumble",
    "list_functions", "mahjong_puzzle", "manipulate_matrix", "maze", "mini_sudoku", "modulo_grid",
    "n_queens", "needle_haystack", "number_filtering", "number_format", "number_sequence",
    "number_sorting", "palindrome_generation", "palindrome_partitioning", "path_star",
    "polynomial_equations", "polynomial_multiplication", "pool_matrix", "power_function",
    "prime_factorization", "products", "propositional_logic", "puzzle24", "quantum_lock",
    "ransom_note", "rearc", "rectangle_count", "rotate_matrix", "rotten_oranges", "rubiks_cube",
    "rush_hour", "self_reference", "sentence_reordering", "shortest_path", "simple_equations",
    "simple_geometry", "simple_integration", "sokoban", "spell_backward", "spiral_matrix",
    "string_insertion", "string_manipulation", "string_splitting", "string_synthesis", "sudoku",
    "survo", "syllogism", "time_intervals", "tower_of_hanoi", "tsumego", "word_ladder",
    "word_sequence_reversal", "word_sorting", "zebra_puzzles",
), 1.0)

# Out-of-distribution tests, in validation only, with their weight there. graph_color trains on
# its default 10-vertex graphs; ASSUMPTION: "larger" is 20 vertices (the paper shows no size).
HELD_OUT: dict[str, float] = {
    "boxnet": 8.0,
    "graph_color?min_num_vertices=20&max_num_vertices=20": 8.0,
}

# Tasks that do not generate offline on their own, and why (the probe's finding).
NOT_OFFLINE: dict[str, str] = {
    "composite": "a meta-task: it mixes other tasks and has no default config (AssertionError: "
                 "'Must specify at least one dataset'); the mix here is what it would make",
}


def offline_status(task: str) -> str:
    """'ok' for a task this mix uses (in training or held out), else why it is left out."""
    tasks = {spec.partition("?")[0] for spec in (*TRAIN_WEIGHTS, *HELD_OUT)}
    if task in tasks:
        return "ok"
    return NOT_OFFLINE.get(task, "not recorded in reasoning_gym_mix (new in this Reasoning Gym?)")


def split_weights(split: str) -> dict[str, float]:
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    return dict(TRAIN_WEIGHTS) if split == "train" else {**TRAIN_WEIGHTS, **HELD_OUT}


def task_sizes(weights: Mapping[str, float], total: int) -> dict[str, int]:
    """``total`` problems shared in proportion to ``weights`` (largest remainder; ties go to
    the earlier task), so the sizes sum to exactly ``total``. Tasks may get 0 when total is small."""
    whole = sum(weights.values())
    quotas = {task: total * w / whole for task, w in weights.items()}
    sizes = {task: int(q) for task, q in quotas.items()}
    by_remainder = sorted(quotas, key=lambda t: sizes[t] - quotas[t])  # stable: ties keep order
    for task in by_remainder[:total - sum(sizes.values())]:
        sizes[task] += 1
    return sizes


def generate(split: str, size: int, seed: int) -> list[Row]:
    """``size`` problems of ``split`` ('train' or 'val'), each task seeded from ``seed``, the
    split and its generator path (as ``load_data`` seeds generator sources)."""
    rows = []
    for spec, count in task_sizes(split_weights(split), size).items():
        if count:
            path = f"reasoning_gym:{spec}"
            rows += generators.generate(path, count, derive_seed(seed, split, path))
    return rows


def fingerprint() -> str:
    """A digest of what generated problems depend on: the tasks, weights and Reasoning Gym."""
    spec = {"train": TRAIN_WEIGHTS, "held_out": HELD_OUT, "reasoning_gym": version("reasoning_gym")}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]
