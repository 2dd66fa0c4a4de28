import pytest

from megatron_prorl.config import ConfigError, StageConfig
from megatron_prorl.train.validate import load_run_config
from megatron_prorl.train.stages import resolve_stages, stage_of, total_steps


def test_stages_inherit_and_override():
    cfg = load_run_config(overrides=["rollout.n=16", "rollout.max_response_length=8192", "algo.kl_beta=0.001"])
    cfg.trainer.stages = [StageConfig(name="8k", steps=3),
                          StageConfig(name="16k", steps=2, max_response_length=16384, n=32, kl_beta=0.0,
                                      reset_reference_at_start=True, no_eos_penalty=0.5, data_mix={"math": 1.0})]
    a, b = resolve_stages(cfg)
    assert (a.first_step, a.last_step, a.n, a.max_response_length, a.kl_beta) == (1, 3, 16, 8192, 0.001)
    assert (b.first_step, b.last_step, b.n, b.max_response_length, b.kl_beta) == (4, 5, 32, 16384, 0.0)
    assert b.reset_reference_at_start and b.no_eos_penalty == 0.5 and b.data_mix == {"math": 1.0}
    assert a.temperature == b.temperature == cfg.rollout.temperature
    assert [stage_of([a, b], s).name for s in range(1, 6)] == ["8k"] * 3 + ["16k"] * 2
    assert total_steps([a, b]) == 5
    with pytest.raises(ValueError, match="step 6 is outside the schedule"):
        stage_of([a, b], 6)


@pytest.mark.parametrize("stages, message", [
    ([], "trainer.stages is empty"),
    ([StageConfig(name="x", steps=0)], r"trainer.stages\[0\] \('x'\): steps=0"),
    ([StageConfig(name="x", steps=2, n=1)], "n=1: GRPO needs at least 2"),
])
def test_bad_stages(stages, message):
    cfg = load_run_config()
    cfg.trainer.stages = stages
    with pytest.raises(ConfigError, match=message):
        resolve_stages(cfg)
