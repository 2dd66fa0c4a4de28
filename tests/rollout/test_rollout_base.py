"""What every engine shares: the ids that end a response."""

import json

import pytest

from megatron_prorl.rollout.base import eos_token_ids, generation_config_eos


def test_generation_config_eos_ids(tmp_path):
    assert generation_config_eos(None) == () and generation_config_eos(tmp_path) == ()
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [151643, 151645]}))
    assert generation_config_eos(tmp_path) == (151643, 151645)
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": 2, "temperature": 0.6}))
    assert generation_config_eos(tmp_path) == (2,)
    (tmp_path / "generation_config.json").write_text(json.dumps({"do_sample": True}))
    assert generation_config_eos(tmp_path) == ()
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": "</s>"}))
    with pytest.raises(ValueError, match=r"generation_config.json: eos_token_id='</s>' is neither"):
        generation_config_eos(tmp_path)


def test_eos_ids_are_the_tokenizers_then_the_generation_configs(tmp_path):
    assert eos_token_ids(tmp_path, 1) == (1,)
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [1, 7]}))
    assert eos_token_ids(tmp_path, 1) == (1, 7) and eos_token_ids(tmp_path, None) == (1, 7)
    (tmp_path / "generation_config.json").unlink()
    with pytest.raises(ValueError, match="no EOS token"):
        eos_token_ids(tmp_path, None)
