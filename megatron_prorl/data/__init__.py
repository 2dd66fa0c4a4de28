"""Data: one row schema for every domain, loaders and converters for ProRL's public sources,
procedural generators (Reasoning Gym, arithmetic), prompt construction, and the mixed sampler."""

from megatron_prorl.data.formats import FORMATS
from megatron_prorl.data.loader import BadRowWarning, Data, Source, load_data, load_source, save_rows
from megatron_prorl.data.prompts import encode_prompt, render_prompt, user_message
from megatron_prorl.data.sampler import MixedSampler, domain_mix_weights
from megatron_prorl.data.schema import BadRow, Row, check_row

__all__ = [
    "BadRow", "BadRowWarning", "Data", "FORMATS", "MixedSampler", "Row", "Source", "check_row",
    "domain_mix_weights", "encode_prompt", "load_data", "load_source", "render_prompt", "save_rows", "user_message",
]
