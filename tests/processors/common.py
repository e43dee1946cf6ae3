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
