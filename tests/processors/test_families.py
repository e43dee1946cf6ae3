"""Each family's sparse processor against its stock diffusers processor, through both kernels."""

import pytest
import torch

from diffusers_sparse_vdit import TokenLayout
from diffusers_sparse_vdit.processors import apply_sparse_vdit, family_of
from diffusers_sparse_vdit.testing import VARIANTS, tiny_transformer_inputs

from .common import ALL_FULL, forward, mode_map, twins

TEXT_POSITION = {
    "wan": "none", "hunyuan_video": "after", "cogvideox": "before", "cogvideox1.5": "before", "hunyuan_video15": "after",
}  # fmt: skip


def _inputs(transformer, variant, **kwargs):
    if variant in ("hunyuan_video", "hunyuan_video15") and kwargs.get("batch_size", 1) == 2:
        kwargs.setdefault("text_lengths", [7, 4])  # the second prompt is padded
    return tiny_transformer_inputs(transformer, **kwargs)


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_all_full_map_reproduces_stock(variant, backend):
    sparse, stock = twins(variant)
    inputs = _inputs(stock, variant)
    expected = forward(stock, inputs)
    apply_sparse_vdit(sparse, mode_map(sparse, ALL_FULL), backend=backend)
    torch.testing.assert_close(forward(sparse, inputs), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("variant", VARIANTS)
def test_mixed_map_same_through_torch_and_triton(variant):
    via_torch, via_triton = twins(variant)
    inputs = _inputs(via_torch, variant, batch_size=2)
    stock = forward(via_torch, inputs)
    apply_sparse_vdit(via_torch, mode_map(via_torch), backend="torch")
    apply_sparse_vdit(via_triton, mode_map(via_triton), backend="triton")
    out = forward(via_torch, inputs)
    torch.testing.assert_close(forward(via_triton, inputs), out, atol=1e-5, rtol=1e-5)
    assert (out - stock).abs().max() > 1e-3, "a map with SKIP and banded heads must change the output"


class Recorder:
    """Mixed into a family processor: records what reaches the ``attend`` seam."""

    calls: list

    def attend(self, query, key, value, plan, **kwargs):
        type(self).calls.append((self.layer, tuple(query.shape), plan, kwargs["layout"]))
        return super().attend(query, key, value, plan, **kwargs)


# token counts that are not multiples of the 16-token tile, a single frame, batch 2
@pytest.mark.parametrize("grid", [(1, 3, 3), (2, 5, 3), (3, 3, 7)], ids=str)
@pytest.mark.parametrize("variant", VARIANTS)
def test_odd_grids_and_batch_2(variant, grid):
    sparse, stock = twins(variant)
    inputs = _inputs(stock, variant, grid=grid, batch_size=2)
    expected = forward(stock, inputs)
    recorder = type("Recording", (Recorder, family_of(sparse).processor_cls), {"calls": []})
    apply_sparse_vdit(sparse, mode_map(sparse, ALL_FULL), backend="torch", processor_cls=recorder)
    torch.testing.assert_close(forward(sparse, inputs), expected, atol=1e-5, rtol=1e-5)

    text = 0 if variant == "wan" else 7
    layout = TokenLayout(*grid, text_tokens=text, text_position=TEXT_POSITION[variant])
    assert [(layer, shape, plan.layout, seen) for layer, shape, plan, seen in recorder.calls] == [
        (layer, (2, 3, layout.num_tokens, 16), layout, layout) for layer in (0, 1)
    ]
