"""Dense calls of a sparse model (warm-up steps, all-FULL layers under "auto") go where the dense choice says.

FA3 is replaced by torch code with its semantics, so the calls the processors make (layouts, key
counts of padded prompts) are checked on CPU against the stock forward.
"""

import sys
import types

import pytest
import torch
import torch.nn.functional as F

from diffusers_sparse_vdit.processors import apply_sparse_vdit, base
from diffusers_sparse_vdit.testing import tiny_transformer_inputs

from .common import ALL_FULL, forward, mode_map, twins


@pytest.fixture
def fake_fa3(monkeypatch):
    """Dense calls routed to a torch stand-in of ``fa3_fwd_interface``; yields the calls it saw."""
    calls = []

    def flash_attn_func(q, k, v):  # (B, N, H, D)
        calls.append(("dense", None))
        return F.scaled_dot_product_attention(*(x.transpose(1, 2) for x in (q, k, v))).transpose(1, 2), None

    def flash_attn_varlen_func(q, k, v, cu_q, cu_k, max_q, max_k, seqused_k=None):  # (total, H, D)
        calls.append(("varlen", seqused_k.tolist()))
        out = torch.empty_like(q)
        for b in range(len(cu_q) - 1):
            rows, keys = slice(cu_q[b], cu_q[b + 1]), slice(cu_k[b], cu_k[b] + seqused_k[b])
            out[rows] = F.scaled_dot_product_attention(q[rows].transpose(0, 1), k[keys].transpose(0, 1),
                                                       v[keys].transpose(0, 1)).transpose(0, 1)
        return out, None

    module = types.SimpleNamespace(flash_attn_func=flash_attn_func, flash_attn_varlen_func=flash_attn_varlen_func)
    monkeypatch.setitem(sys.modules, "fa3_fwd_interface", module)
    monkeypatch.setattr(
        base, "choose_dense_backend",
        lambda q, mask, key_lengths=None, stock_requested=False: "stock" if stock_requested else "fa3",
    )
    yield calls


def test_all_full_layers_take_the_fast_dense_kernel(fake_fa3):
    sparse, stock = twins("wan")
    inputs = tiny_transformer_inputs(stock)
    apply_sparse_vdit(sparse, mode_map(sparse, ALL_FULL))  # backend="auto"
    torch.testing.assert_close(forward(sparse, inputs), forward(stock, inputs), atol=1e-5, rtol=1e-5)
    assert fake_fa3 == [("dense", None)] * 2  # both target layers


def test_padded_prompts_become_key_counts(fake_fa3):
    sparse, stock = twins("hunyuan_video")
    inputs = tiny_transformer_inputs(stock, batch_size=2, text_lengths=[7, 4])
    apply_sparse_vdit(sparse, mode_map(sparse, ALL_FULL))
    torch.testing.assert_close(forward(sparse, inputs), forward(stock, inputs), atol=1e-5, rtol=1e-5)
    _, _, frames, height, width = inputs["hidden_states"].shape
    patch, patch_t = sparse.config.patch_size, sparse.config.patch_size_t
    video = (frames // patch_t) * (height // patch) * (width // patch)
    assert fake_fa3 and all(call == ("varlen", [video + 7, video + 4]) for call in fake_fa3)


def test_set_attention_backend_keeps_the_stock_path(fake_fa3):
    sparse, _ = twins("wan")
    apply_sparse_vdit(sparse, mode_map(sparse, ALL_FULL))
    sparse.set_attention_backend("native")
    forward(sparse, tiny_transformer_inputs(sparse))
    assert fake_fa3 == []
