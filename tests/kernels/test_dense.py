"""Dense calls take the fastest correct kernel installed: the choice, faked on CPU."""

import logging

import pytest
import torch
from diffusers.utils import logging as diffusers_logging

from diffusers_sparse_vdit.kernels import dense
from diffusers_sparse_vdit.logs import log_once


@pytest.fixture
def gpu_with(monkeypatch):
    """Pretend the tensors are on a GPU where the given dense kernels are installed."""

    def install(*names):
        monkeypatch.setattr(dense, "_on_gpu", lambda query: True)
        monkeypatch.setattr(dense, "_AVAILABLE", {n: (lambda device, n=n: n in names) for n in dense.DENSE_BACKENDS})
        log_once.cache_clear()

    yield install
    log_once.cache_clear()


Q16 = torch.empty(1, 2, 8, 64, dtype=torch.bfloat16)


@pytest.mark.parametrize("installed, expected", [(("fa3", "fa4"), "fa3"), (("fa4",), "fa4"), ((), "stock")])
def test_fastest_installed_kernel_wins(gpu_with, installed, expected):
    gpu_with(*installed)
    assert dense.choose_dense_backend(Q16, None) == expected


@pytest.mark.parametrize(
    "query, mask, stock_requested",
    [
        (Q16, torch.ones(1, 1, 1, 8, dtype=torch.bool), False),  # a mask not known to keep a key prefix
        (Q16.float(), None, False),  # 32-bit
        (Q16, None, True),  # set_attention_backend() asked for diffusers' own path
    ],
)
def test_stock_path_where_the_fast_kernels_do_not_apply(gpu_with, query, mask, stock_requested):
    gpu_with("fa3", "fa4")
    assert dense.choose_dense_backend(query, mask, stock_requested=stock_requested) == "stock"


def test_a_key_prefix_mask_takes_the_fast_kernel(gpu_with):
    gpu_with("fa3")
    mask = torch.ones(1, 1, 1, 8, dtype=torch.bool)
    assert dense.choose_dense_backend(Q16, mask, key_lengths=torch.tensor([6])) == "fa3"


def test_cpu_keeps_the_stock_path():
    assert dense.choose_dense_backend(Q16, None) == "stock"


def test_choice_is_logged_once(gpu_with):
    gpu_with("fa4")
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    level = diffusers_logging.get_verbosity()
    diffusers_logging.add_handler(handler)
    diffusers_logging.set_verbosity_info()
    try:
        for _ in range(3):
            dense.choose_dense_backend(Q16, None)
    finally:
        diffusers_logging.remove_handler(handler)
        diffusers_logging.set_verbosity(level)
    messages = [r.getMessage() for r in records if "dense attention" in r.getMessage()]
    assert messages == ["Sparse-vDiT dense attention: fa4 (the fastest dense kernel installed)"]


@pytest.mark.gpu
@pytest.mark.parametrize("backend", dense.DENSE_BACKENDS)
@pytest.mark.parametrize("head_dim", [64, 128])
def test_fast_dense_kernel_matches_sdpa_on_gpu(backend, head_dim):
    device = torch.device("cuda")
    if not dense._AVAILABLE[backend](device):
        pytest.skip(f"{backend} is not installed for this GPU")
    q, k, v = (torch.randn(2, 1000, 6, head_dim, device=device, dtype=torch.bfloat16).transpose(1, 2) for _ in range(3))
    lengths = torch.tensor([1000, 613], device=device)
    keep = torch.arange(1000, device=device)[None, :] < lengths[:, None]  # (B, keys)
    ref = torch.nn.functional.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=keep[:, None, None])
    for out in (dense.dense_attention_fast(backend, q, k, v), dense.dense_attention_fast(backend, q, k, v, lengths)):
        assert out.shape == q.shape and not out.isnan().any()
    full = torch.nn.functional.scaled_dot_product_attention(q.float(), k.float(), v.float())
    assert ((dense.dense_attention_fast(backend, q, k, v).float() - full).norm() / full.norm()).item() < 1e-2
    assert ((out.float() - ref).norm() / ref.norm()).item() < 1e-2
