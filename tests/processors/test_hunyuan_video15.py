"""HunyuanVideo-1.5 specifics: the conditioning (image, ByT5, MLLM tokens) after video, its padding, the refiner."""

import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor2_0

from diffusers_sparse_vdit import TokenLayout
from diffusers_sparse_vdit.processors import HunyuanVideo15SparseAttnProcessor, apply_sparse_vdit, family_of
from diffusers_sparse_vdit.processors.hunyuan_video15 import call_text
from diffusers_sparse_vdit.testing import tiny_transformer_inputs

from .common import ALL_FULL, forward, mode_map, twins, with_reference


def _arguments(image, masks=((1, 1, 1),), masks_2=((1, 1),)):
    batch = len(masks)
    return {
        "encoder_hidden_states": torch.zeros(batch, 3, 4),
        "encoder_attention_mask": torch.tensor(masks),
        "encoder_hidden_states_2": torch.zeros(batch, 2, 4),
        "encoder_attention_mask_2": torch.tensor(masks_2),
        "image_embeds": image.expand(batch, 2, 4),
    }


def test_conditioning_lengths_count_image_tokens_only_for_image_to_video():
    i2v, t2v = torch.ones(1, 2, 4), torch.zeros(1, 2, 4)
    assert call_text(_arguments(i2v)) == (7, None)
    text_tokens, lengths = call_text(_arguments(t2v))  # all-zero image_embeds: the transformer masks them
    assert text_tokens == 7 and lengths.tolist() == [5] and lengths.dtype == torch.int32
    _, lengths = call_text(_arguments(i2v, masks=((1, 1, 1), (1, 0, 0)), masks_2=((1, 1), (1, 0))))
    assert lengths.tolist() == [7, 4]
    with pytest.raises(ValueError, match="encoder_hidden_states_2"):
        call_text({**_arguments(i2v), "image_embeds": None})


@pytest.mark.parametrize("image", [True, False], ids=["i2v", "t2v"])
def test_all_full_map_reproduces_stock_with_padding(image):
    sparse, stock = twins("hunyuan_video15")
    inputs = tiny_transformer_inputs(stock, batch_size=2, text_lengths=[7, 4], image=image)
    expected = forward(stock, inputs)
    refiner = sparse.context_embedder.token_refiner.refiner_blocks[0].attn
    apply_sparse_vdit(sparse, mode_map(sparse, ALL_FULL), backend="torch")
    assert isinstance(refiner.processor, AttnProcessor2_0)
    torch.testing.assert_close(forward(sparse, inputs), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("image", [True, False], ids=["i2v", "t2v"])
def test_mixed_map_matches_the_dense_mask_reference(image):
    sparse, reference = twins("hunyuan_video15")
    inputs = tiny_transformer_inputs(sparse, batch_size=2, text_lengths=[7, 5], image=image)
    stock = forward(sparse, inputs)
    apply_sparse_vdit(sparse, mode_map(sparse), backend="torch")
    apply_sparse_vdit(reference, mode_map(reference), backend="torch",
                      processor_cls=with_reference(HunyuanVideo15SparseAttnProcessor))
    out = forward(sparse, inputs)
    torch.testing.assert_close(out, forward(reference, inputs), atol=1e-5, rtol=1e-5)
    assert (out - stock).abs().max() > 1e-3


def test_image_tokens_are_conditioning_rows_after_video():
    sparse, _ = twins("hunyuan_video15")
    seen = []
    recorder = type("Recorder", (family_of(sparse).processor_cls,), {
        "attend": lambda self, q, k, v, plan, **kw: seen.append(kw["layout"])
        or HunyuanVideo15SparseAttnProcessor.attend(self, q, k, v, plan, **kw)
    })  # fmt: skip
    apply_sparse_vdit(sparse, mode_map(sparse), backend="torch", processor_cls=recorder)
    forward(sparse, tiny_transformer_inputs(sparse, grid=(2, 3, 4), text_tokens=9))
    assert seen == [TokenLayout(2, 3, 4, text_tokens=9, text_position="after")] * 2


def test_a_block_called_without_the_conditioning_mask_is_refused():
    sparse, _ = twins("hunyuan_video15")
    apply_sparse_vdit(sparse, mode_map(sparse), backend="torch")
    attn = sparse.transformer_blocks[0].attn
    with pytest.raises(ValueError, match="conditioning tokens"):
        attn(torch.randn(1, 6, 48), torch.randn(1, 3, 48), attention_mask=None)
