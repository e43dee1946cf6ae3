"""backend="fa4": the plan -> FA4 block-sparse tensors conversion, checked on CPU against the plan's oracle.

FA4 itself runs only on SM90/SM100 GPUs; here its semantics (full tiles computed whole, mask
tiles through the mask_mod's per-key table) are replayed in torch by ``fa4_kernel_mask``,
and a stand-in ``_flash_attn_fwd`` built on it drives the whole ``backend="fa4"`` call.
"""

import sys
import types

import pytest
import torch
import torch.nn.functional as F

from diffusers_sparse_vdit import ModeSpec, TokenLayout, build_plan, sparse_attention
from diffusers_sparse_vdit.kernels import fa4
from diffusers_sparse_vdit.kernels.fa4 import FA4Tensors, fa4_dense_mask, fa4_kernel_mask, fa4_tensors

from .gpu_cases import LAYOUTS, MIXED, rel_err

CASES = [
    (TokenLayout(3, 5, 7), None),  # no text, 105 tokens: a partial last video tile
    (TokenLayout(2, 4, 8), None),  # 64 tokens: whole tiles only at tile 16
    (TokenLayout(3, 5, 6, text_tokens=21, text_position="before"), None),
    (TokenLayout(3, 5, 6, text_tokens=21, text_position="after"), None),
    (TokenLayout(3, 5, 6, text_tokens=21, text_position="after"), [5, 21, 0]),  # padded text, one item with none
    (TokenLayout(3, 4, 5, text_tokens=32, text_position="before"), [17, 32]),  # whole text tiles, padded
]


@pytest.mark.parametrize("tile", [16, 32])
@pytest.mark.parametrize("layout,lengths", CASES, ids=lambda x: str(x))
def test_fa4_tensors_expand_to_the_plan_mask(layout, lengths, tile):
    plan = build_plan(MIXED, layout, tile_size=tile)  # every mode, MULTI_DIAGONAL reordered
    batch = len(lengths) if lengths else 2
    text_lengths = torch.tensor(lengths) if lengths else None
    tensors = fa4_tensors(plan, batch, "cpu", text_lengths)
    expected = plan.dense_mask(text_lengths) if lengths else plan.dense_mask()[None].expand(batch, -1, -1, -1)
    assert torch.equal(fa4_dense_mask(plan, tensors), expected)


def test_full_tiles_are_the_unmasked_ones():
    # equal work: only tiles holding padding go through the mask_mod
    layout = TokenLayout(3, 5, 6, text_tokens=21, text_position="after")  # 90 video + 21 text at tile 16
    plan = build_plan([ModeSpec.full()], layout, tile_size=16)
    t = fa4_tensors(plan, 1, "cpu")
    masked = set(t.mask_block_idx[0, 0, 0, : t.mask_block_cnt[0, 0, 0]].tolist())
    assert masked == {5, 7}  # the partial last video tile (90 = 5 x 16 + 10) and the partial text tile
    assert int(t.full_block_cnt[0, 0, 0]) == plan.num_tiles - 2


@pytest.mark.parametrize(
    "corrupt, message",
    [("both", "both FA4 lists"), ("padding", "padding keys")],
)
def test_dense_mask_catches_a_wrong_conversion(corrupt, message):
    plan = build_plan([ModeSpec.full()], TokenLayout(3, 5, 7), tile_size=16)  # last video tile partial
    t = fa4_tensors(plan, 1, "cpu")
    full_cnt, full_idx = t.full_block_cnt.clone(), t.full_block_idx.clone()
    last = plan.num_tiles - 1
    if corrupt == "both":  # a full tile listed again as a mask tile
        mask_idx = t.mask_block_idx.clone()
        mask_idx[..., 0] = 0
        t = t._replace(mask_block_idx=mask_idx)
    else:  # the partial tile moved to the full list
        full_idx[0, 0, :, full_cnt[0, 0, 0]] = last
        full_cnt += 1
        t = t._replace(full_block_cnt=full_cnt, full_block_idx=full_idx, mask_block_cnt=torch.zeros_like(full_cnt))
    with pytest.raises(ValueError, match=message):
        fa4_dense_mask(plan, t)


@pytest.mark.parametrize("layout,lengths", CASES, ids=lambda x: str(x))
def test_inputs_and_outputs_move_whole_rows_in_each_heads_order(layout, lengths):
    """fa4_inputs puts caller token rows[h][r] at kernel row r of head h; fa4_outputs brings every real row back
    (padding rows dropped, SKIP heads zero), with any strides of ``out``."""
    plan = build_plan(MIXED, layout, 16)
    q = torch.randn(2, layout.num_tokens, len(MIXED), 8).transpose(1, 2)  # diffusers' memory, (B, H, N, D) view
    rows = plan.row_maps().long()[plan.head_order.long()]  # (H, M * tile)
    (got,) = fa4.fa4_inputs(plan, q)
    assert got.shape == (2, plan.num_tiles * 16, len(MIXED), 8) and got.is_contiguous()
    for h in range(len(MIXED)):
        assert torch.equal(got[:, :, h], q[:, h, rows[h]]), h
    out = torch.full((2, len(MIXED), layout.num_tokens, 8), float("nan"))  # (B, H, N, D)-contiguous this time
    fa4.fa4_outputs(plan, got * 2, out)
    want = q * 2
    want[:, plan.skip_heads] = 0
    assert torch.equal(out, want)


def _fake_fa4(monkeypatch):
    """FA4's interface as torch code: attention under the mask its block-sparse tensors describe."""

    def _flash_attn_fwd(q, k, v, *, softmax_scale, block_sparse_tensors, mask_mod=None, aux_tensors=None):
        b = block_sparse_tensors
        key_ok = aux_tensors[0] if mask_mod is not None else torch.ones(q.shape[0], q.shape[1], dtype=torch.int32)
        tensors = FA4Tensors(b.full_block_cnt, b.full_block_idx, b.mask_block_cnt, b.mask_block_idx, key_ok,
                             b.block_size[0])
        mask = fa4_kernel_mask(tensors, q.shape[1] // b.block_size[0])
        out = F.scaled_dot_product_attention(*(x.transpose(1, 2).float() for x in (q, k, v)), attn_mask=mask,
                                             scale=softmax_scale)
        return out.transpose(1, 2).to(q.dtype), None

    interface = types.SimpleNamespace(_flash_attn_fwd=_flash_attn_fwd)
    sparsity = types.SimpleNamespace(BlockSparseTensorsTorch=lambda **kw: types.SimpleNamespace(**kw))
    monkeypatch.setitem(sys.modules, "flash_attn.cute.interface", interface)
    monkeypatch.setitem(sys.modules, "flash_attn.cute.block_sparsity", sparsity)
    monkeypatch.setattr(fa4, "fa4_unavailable_reason", lambda device: None)
    monkeypatch.setattr(fa4, "_key_mask_mod", lambda: "real_key")


@pytest.mark.parametrize("layout", LAYOUTS, ids=str)
def test_fa4_backend_call_matches_the_reference(monkeypatch, layout):
    _fake_fa4(monkeypatch)
    plan = build_plan(MIXED, layout, tile_size=64)
    q, k, v = (torch.randn(2, layout.num_tokens, len(MIXED), 32, dtype=torch.float16).transpose(1, 2) for _ in range(3))
    lengths = torch.tensor([layout.text_tokens // 3, layout.text_tokens]) if layout.text_tokens else None
    got = sparse_attention(q, k, v, plan, backend="fa4", out=torch.full_like(q, float("nan")), text_lengths=lengths)
    ref = sparse_attention(q, k, v, plan, backend="torch", text_lengths=lengths)
    assert not got.isnan().any()
    assert (got[:, plan.skip_heads] == 0).all()
    assert rel_err(got, ref.float()) < 2e-3


def test_fa4_backend_says_why_it_cannot_run_here():
    layout = TokenLayout(2, 4, 8)
    plan = build_plan([ModeSpec.full()], layout)
    q = torch.randn(1, 1, layout.num_tokens, 16)
    with pytest.raises(RuntimeError, match="FA4 runs on CUDA GPUs"):
        sparse_attention(q, q, q, plan, backend="fa4")


# GPU: the real FA4 kernel ---------------------------------------------------------------------
def _fa4_ready():
    return torch.cuda.is_available() and fa4.fa4_unavailable_reason(torch.device("cuda")) is None


@pytest.mark.gpu
@pytest.mark.skipif(not _fa4_ready(), reason="needs flash-attn-4 on an SM90/SM100 GPU")
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("layout", LAYOUTS, ids=str)
def test_fa4_bf16_matches_dense_mask_sdpa(layout, head_dim):
    plan = build_plan(MIXED, layout)  # 128-token tiles, as in production
    shape = (2, layout.num_tokens, len(MIXED), head_dim)
    q, k, v = (torch.randn(shape, device="cuda", dtype=torch.bfloat16).transpose(1, 2) for _ in range(3))
    lengths = torch.tensor([layout.text_tokens // 3, layout.text_tokens], device="cuda") if layout.text_tokens else None
    out = torch.full_like(q, float("nan"))
    sparse_attention(q, k, v, plan, backend="fa4", out=out, text_lengths=lengths)
    mask = plan.dense_mask(lengths.cpu()) if lengths is not None else plan.dense_mask()
    ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask.cuda())
    assert not out.isnan().any()
    assert (out[:, plan.skip_heads] == 0).all()
    keep = [h for h in range(len(MIXED)) if h not in plan.skip_heads]
    assert rel_err(out[:, keep], ref[:, keep]) < 1e-2
