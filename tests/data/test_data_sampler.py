"""The mixed-domain sampler: weights, epochs without replacement, determinism, exact resume."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from megatron_prorl.data import MixedSampler, Row, domain_mix_weights


def pool(name: str, n: int, domain: str = "math") -> list[Row]:
    return [Row(f"{name} problem {i}", domain, str(i), name, f"{name}-{i}") for i in range(n)]


POOLS = {"math": pool("math", 7), "code": pool("code", 5, "code"), "logic": pool("logic", 11, "logic")}
WEIGHTS = {"math": 2.0, "code": 1.0, "logic": 1.0}


def ids(batch):
    return [r.id for r in batch]


def test_same_seed_same_batches_other_seed_other_batches():
    a, b, c = (MixedSampler(POOLS, WEIGHTS, seed=s) for s in (3, 3, 4))
    batches = [ids(a.next_batch(8)) for _ in range(5)]
    assert batches == [ids(b.next_batch(8)) for _ in range(5)]
    assert batches != [ids(c.next_batch(8)) for _ in range(5)]
    reordered = MixedSampler(dict(reversed(list(POOLS.items()))), WEIGHTS, seed=3)
    assert batches == [ids(reordered.next_batch(8)) for _ in range(5)]  # pool order does not matter


def test_resume_continues_exactly():
    sampler = MixedSampler(POOLS, WEIGHTS, seed=11)
    batches = [ids(sampler.next_batch(6)) for _ in range(2)]
    state = json.loads(json.dumps(sampler.state_dict()))  # plain JSON, as stored in a checkpoint
    batches += [ids(sampler.next_batch(6)) for _ in range(3)]
    resumed = MixedSampler(POOLS, WEIGHTS, seed=0)  # the state carries the seed
    resumed.load_state_dict(state)
    assert [ids(resumed.next_batch(6)) for _ in range(3)] == batches[2:]


def test_resume_keeps_weights_set_between_stages():
    sampler = MixedSampler(POOLS, WEIGHTS, seed=1)
    sampler.next_batch(10)
    sampler.set_weights({"code": 1.0})  # a stage that trains on code only
    state = sampler.state_dict()
    after = ids(sampler.next_batch(10))
    assert all(i.startswith("code-") for i in after)
    resumed = MixedSampler(POOLS, WEIGHTS, seed=1)
    resumed.load_state_dict(state)
    assert ids(resumed.next_batch(10)) == after


def test_each_epoch_visits_every_row_once_in_a_new_order():
    sampler = MixedSampler({"only": pool("only", 7)}, seed=2)
    epochs = [ids(sampler.next_batch(7)) for _ in range(3)]
    assert all(sorted(e) == sorted(ids(pool("only", 7))) for e in epochs)
    assert len({tuple(e) for e in epochs}) == 3
    assert sampler.epochs() == {"only": 3.0}


def test_weights_set_the_mixture():
    sampler = MixedSampler(POOLS, {"math": 3.0, "code": 1.0, "logic": 0.0}, seed=0)
    counts = Counter(r.source for r in sampler.next_batch(4000))
    assert counts["logic"] == 0
    assert abs(counts["math"] / 4000 - 0.75) < 0.03  # 4 standard deviations


def test_bad_weights_and_states():
    with pytest.raises(ValueError, match="unknown pools"):
        MixedSampler(POOLS, {"mathh": 1.0})
    with pytest.raises(ValueError, match="positive sum"):
        MixedSampler(POOLS, {"math": 0.0})
    with pytest.raises(ValueError, match="empty pools"):
        MixedSampler({"math": []})
    state = MixedSampler(POOLS, seed=0).state_dict()
    with pytest.raises(ValueError, match="state is for pools"):
        MixedSampler({"math": POOLS["math"]}).load_state_dict(state)


def test_rows_reordered_or_edited_since_the_state_was_saved_are_named():
    """Pools of the same sizes, other rows: the digest of each pool (its rows in order) is part
    of the state, and a resume onto other rows is refused naming where they came from."""
    state = json.loads(json.dumps(MixedSampler(POOLS, seed=0).state_dict()))
    origins = {"code": "data/code.jsonl"}
    with pytest.raises(ValueError, match=r"^data changed since the checkpoint: data/code.jsonl: the same 5 rows, "
                                         r"in another order or with other content; resuming"):
        MixedSampler(dict(POOLS, code=POOLS["code"][::-1]), origins=origins).load_state_dict(state)
    edited = [Row(r.prompt, r.domain, "42" if i == 3 else r.ground_truth, r.source, r.id)
              for i, r in enumerate(POOLS["logic"])]
    with pytest.raises(ValueError, match=r"data changed since the checkpoint: logic: the same 11 rows"):
        MixedSampler(dict(POOLS, logic=edited), origins=origins).load_state_dict(state)
    with pytest.raises(ValueError, match=r"data changed since the checkpoint: math: 7 rows then, 8 now"):
        MixedSampler(dict(POOLS, math=pool("math", 8))).load_state_dict(state)
    # equal rows (new objects, keys in another order) are the same data
    copies = {n: [Row(**dict(reversed(list(r.to_dict().items())))) for r in rows] for n, rows in POOLS.items()}
    MixedSampler(copies).load_state_dict(state)
    # a state from before digests existed still loads
    for entry in state["pools"].values():
        del entry["digest"]
    MixedSampler(dict(POOLS, code=POOLS["code"][::-1])).load_state_dict(state)


def test_domain_mix_weights():
    pools = {"deepscaler": pool("a", 3), "eurus_math": pool("b", 3), "taco": pool("c", 3, "code")}
    base = {"deepscaler": 3.0, "eurus_math": 1.0, "taco": 1.0}
    # The math total becomes 2, shared 3:1 as in the base weights; code keeps its base weight.
    assert domain_mix_weights(pools, base, {"math": 2.0}) == {"deepscaler": 1.5, "eurus_math": 0.5, "taco": 1.0}
    with pytest.raises(ValueError, match="no data: \\['ifeval'\\]"):
        domain_mix_weights(pools, base, {"ifeval": 1.0})
    with pytest.raises(ValueError, match="holds domains \\['code', 'math'\\]"):
        domain_mix_weights({"mixed": pool("a", 2) + pool("c", 2, "code")}, {"mixed": 1.0}, {"math": 1.0})
