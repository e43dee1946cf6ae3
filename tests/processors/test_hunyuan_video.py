"""HunyuanVideo specifics: padded prompts through text_lengths, refused masks, the refiner stays stock."""

import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor2_0

from diffusers_sparse_vdit.processors import apply_sparse_vdit
from diffusers_sparse_vdit.processors.hunyuan_video import text_lengths_from_mask
from diffusers_sparse_vdit.testing import tiny_transformer_inputs

from .common import ALL_FULL, forward, mode_map, twins


def _mask(rows, video=6):
    keys = torch.tensor([[True] * video + row for row in rows])
    return keys[:, None, None, :]


def test_text_lengths_from_mask():
    lengths = text_lengths_from_mask(_mask([[True, True, False], [True, False, False]]), 6, 3)
    assert lengths.dtype == torch.int32 and lengths.tolist() == [2, 1]
    assert text_lengths_from_mask(_mask([[True] * 3, [True] * 3]), 6, 3) is None  # no padding


@pytest.mark.parametrize(
    "mask, match",
    [
        (_mask([[False, True, True]]), "Left-padded"),  # padding before the prompt
        (_mask([[True, True, True]]).float(), "boolean key-padding mask"),
        (_mask([[True, True, True]])[:, :, :, :-1], "boolean key-padding mask"),  # wrong length
        (torch.ones(1, 1, 9, 9, dtype=torch.bool), "boolean key-padding mask"),  # a full (query, key) mask
    ],
)
def test_masks_of_another_form_are_refused(mask, match):
    with pytest.raises(ValueError, match=match):
        text_lengths_from_mask(mask, 6, 3)


def test_padded_prompts_match_stock_and_refiner_stays_stock():
    sparse, stock = twins("hunyuan_video")
    inputs = tiny_transformer_inputs(stock, batch_size=2, text_lengths=[7, 3])
    expected = forward(stock, inputs)
    refiner = sparse.context_embedder.token_refiner.refiner_blocks[0].attn
    apply_sparse_vdit(sparse, mode_map(sparse, ALL_FULL), backend="torch")
    assert isinstance(refiner.processor, AttnProcessor2_0)
    torch.testing.assert_close(forward(sparse, inputs), expected, atol=1e-5, rtol=1e-5)


def test_padding_changes_the_sparse_output():
    # text_lengths reach the kernel: the same prompt with fewer valid tokens gives another output
    sparse, _ = twins("hunyuan_video")
    apply_sparse_vdit(sparse, mode_map(sparse), backend="torch")
    full = forward(sparse, tiny_transformer_inputs(sparse, batch_size=2, text_lengths=[7, 7]))
    padded = forward(sparse, tiny_transformer_inputs(sparse, batch_size=2, text_lengths=[7, 3]))
    torch.testing.assert_close(padded[0], full[0])
    assert (padded[1] - full[1]).abs().max() > 1e-3
