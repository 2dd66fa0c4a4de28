"""HF config.json -> the architecture the converter and the model builder share: supported
families, rejected features, rope scaling, vocabulary padding."""

import pytest

from checkpoint_convert.arch import hf_arch, padded_vocab_size
from checkpoint_convert.errors import ConversionError
from helpers.hf_models import LLAMA3, QWEN2


def test_qwen2_and_llama_facts():
    q, l = hf_arch(QWEN2), hf_arch(LLAMA3)
    assert (q.family, q.qkv_bias, q.tie_embeddings, q.head_dim, q.num_query_groups) == ("qwen2", True, True, 16, 2)
    assert (l.family, l.qkv_bias, l.tie_embeddings, l.rope_scaling) == ("llama", False, False, (8.0, 1.0, 4.0, 64))
    with pytest.raises(ConversionError, match="attention_bias=true is not supported for llama"):
        hf_arch({**LLAMA3, "attention_bias": True})


@pytest.mark.parametrize("change, message", [
    ({"model_type": "mistral"}, "model_type='mistral'"),
    ({"hidden_act": "gelu"}, "hidden_act='gelu'"),
    ({"use_sliding_window": True}, "use_sliding_window=true"),
    ({"mlp_bias": True}, "mlp_bias=true"),
    ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "rope_scaling.rope_type='yarn'"),
])
def test_unsupported_features_name_the_field(change, message):
    with pytest.raises(ConversionError, match=message.replace("(", r"\(")):
        hf_arch({**LLAMA3, **change}, source="m/config.json")


def test_missing_field():
    cfg = dict(QWEN2)
    del cfg["intermediate_size"]
    with pytest.raises(ConversionError, match="m/config.json: missing field 'intermediate_size'"):
        hf_arch(cfg, source="m/config.json")


def test_vocab_padding():
    assert padded_vocab_size(100, 1) == 128 and padded_vocab_size(100, 2) == 256
    assert padded_vocab_size(151936, 1) == 151936 and padded_vocab_size(151936, 2) == 152064
