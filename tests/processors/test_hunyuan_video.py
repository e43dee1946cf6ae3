"""HunyuanVideo specifics: padded prompts through text lengths, refused masks, the refiner stays stock."""

import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor2_0

from diffusers_sparse_vdit.processors import apply_sparse_vdit
from diffusers_sparse_vdit.processors.hunyuan_video import call_text, check_key_padding_mask
from diffusers_sparse_vdit.testing import tiny_transformer_inputs

from .common import ALL_FULL, forward, mode_map, twins


def _mask(rows, video=6):
    keys = torch.tensor([[True] * video + row for row in rows])
    return keys[:, None, None, :]


def test_text_lengths_come_from_the_prompt_mask_like_the_transformer_builds_them():
    text = torch.zeros(2, 3, 4)
    lengths = call_text({"encoder_attention_mask": torch.tensor([[1, 1, 0], [1, 0, 0]]), "encoder_hidden_states": text})
    assert lengths[0] == 3 and lengths[1].dtype == torch.int32 and lengths[1].tolist() == [2, 1]
    assert call_text({"encoder_attention_mask": torch.ones(2, 3), "encoder_hidden_states": text}) == (3, None)


@pytest.mark.parametrize(
    "mask",
    [
        _mask([[True, True, True]]).float(),
        _mask([[True, True, True]])[:, :, :, :-1],  # wrong length
        torch.ones(1, 1, 9, 9, dtype=torch.bool),  # a full (query, key) mask
    ],
)
def test_masks_of_another_form_are_refused(mask):
    with pytest.raises(ValueError, match="boolean key-padding mask"):
        check_key_padding_mask(mask, 9)


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
