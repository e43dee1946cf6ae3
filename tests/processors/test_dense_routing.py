"""Dense calls of a sparse model (warm-up steps, all-FULL layers under "auto") go where the dense choice says."""

import torch
import torch.nn.functional as F

from diffusers_sparse_vdit.processors import apply_sparse_vdit, base
from diffusers_sparse_vdit.testing import tiny_transformer_inputs

from .common import ALL_FULL, forward, mode_map, twins


def _fake_fast_kernel(monkeypatch, calls):
    def fast(backend, q, k, v):
        calls.append(backend)
        return F.scaled_dot_product_attention(q, k, v)

    monkeypatch.setattr(base, "choose_dense_backend", lambda q, mask, stock_requested: "stock" if stock_requested else "fa3")
    monkeypatch.setattr(base, "dense_attention_fast", fast)


def test_all_full_layers_take_the_fast_dense_kernel(monkeypatch):
    calls = []
    _fake_fast_kernel(monkeypatch, calls)
    sparse, stock = twins("wan")
    inputs = tiny_transformer_inputs(stock)
    apply_sparse_vdit(sparse, mode_map(sparse, ALL_FULL))  # backend="auto"
    torch.testing.assert_close(forward(sparse, inputs), forward(stock, inputs), atol=1e-5, rtol=1e-5)
    assert calls == ["fa3", "fa3"]  # both target layers


def test_set_attention_backend_keeps_the_stock_path(monkeypatch):
    calls = []
    _fake_fast_kernel(monkeypatch, calls)
    sparse, _ = twins("wan")
    apply_sparse_vdit(sparse, mode_map(sparse, ALL_FULL))
    sparse.set_attention_backend("native")
    forward(sparse, tiny_transformer_inputs(sparse))
    assert calls == []
