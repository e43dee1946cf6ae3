"""Shared helpers for the processor tests: tiny transformers, maps and no-grad forwards."""

import torch

from diffusers_sparse_vdit import ModeSpec
from diffusers_sparse_vdit.testing import tiny_mode_map, tiny_transformer

# Two target layers of three heads: all five modes, with knobs that drop key tiles at the
# tiny grids (e.g. 3 x 4 x 5 tokens in tiles of 16).
MIXED = [
    [ModeSpec.full(), ModeSpec.diagonal(0.5), ModeSpec.multi_diagonal(0.5)],
    [ModeSpec.vertical_stripe((0.8,), sink_frames=1), ModeSpec.skip(), ModeSpec.diagonal(1.0)],
]
ALL_FULL = [[ModeSpec.full()] * 3] * 2


def forward(transformer, inputs) -> torch.Tensor:
    with torch.no_grad():
        return transformer(**inputs)[0]


def twins(variant, **overrides):
    """Two transformers with the same random weights: one to make sparse, one to stay stock."""
    return tiny_transformer(variant, **overrides), tiny_transformer(variant, **overrides)


def mode_map(transformer, layers=MIXED, **kwargs):
    return tiny_mode_map(transformer, layers, **kwargs)


class DenseMaskReference:
    """Mixed into a family processor: sparse calls attend through the plan's token-level boolean mask.

    An oracle independent of the kernels: plain softmax attention under ``plan.dense_mask()``
    (text padding included), rows with no key (SKIP heads) set to zero.
    """

    def attend(self, query, key, value, plan, **kwargs):
        if plan is None:
            return super().attend(query, key, value, plan, **kwargs)
        lengths = kwargs.get("text_lengths")
        mask = plan.dense_mask(lengths) if lengths is not None else plan.dense_mask()[None]
        scores = (query.float() @ key.float().transpose(-1, -2)) * query.shape[-1] ** -0.5
        probs = scores.masked_fill(~mask, float("-inf")).softmax(dim=-1).nan_to_num(0.0)
        return (probs @ value.float()).to(query.dtype)


def with_reference(processor_cls):
    return type(f"Reference{processor_cls.__name__}", (DenseMaskReference, processor_cls), {})
