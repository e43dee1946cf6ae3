"""Check a sparse attention output against dense-mask SDPA on sampled query rows.

For layouts whose N x N mask is too big to build (every real video), a sample of query
tiles is enough: each sampled row is compared with ``F.scaled_dot_product_attention`` in
float32 under that row's dense mask (:meth:`SparsePlan.mask_rows`), which comes from the
mode's tile rule, not from the key lists the kernels walk.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..layout import FRAME_MAJOR

__all__ = ["sampled_error"]


def sampled_error(q, k, v, plan, out, *, num_tiles: int = 6, scale: float | None = None, seed: int = 0,
                  text_lengths=None) -> float:
    """Relative error ``||out - ref|| / ||ref||`` over the rows of a few sampled frame-major query tiles.

    Always samples the first, last video and last tile (partial tiles) besides random ones;
    SKIP heads must be zero. Raises if ``out`` holds NaN anywhere (unwritten rows). With
    ``text_lengths``, text keys past each batch item's length are masked, as the kernels do.
    """
    if out.isnan().any():
        raise AssertionError("the output has NaN rows: some tiles were never written")
    g = torch.Generator().manual_seed(seed)
    tiles = {0, plan.video_tiles - 1, plan.num_tiles - 1, *torch.randperm(plan.num_tiles, generator=g)[:num_tiles].tolist()}
    rows = plan.layout.row_map(FRAME_MAJOR, plan.tile_size).view(plan.num_tiles, -1)
    lengths = plan.tile_lengths.tolist()
    tokens = torch.cat([rows[t, : lengths[t]] for t in sorted(tiles)]).to(q.device)
    key_ok = plan.valid_keys(text_lengths)[:, None, :].to(q.device) if text_lengths is not None else True
    diff = ref_norm = 0.0
    for h in range(plan.num_heads):
        got = out[:, h, tokens].float()
        if h in plan.skip_heads:
            diff += float(got.square().sum())
            continue
        mask = plan.mask_rows(h, tokens.cpu()).to(q.device) & key_ok
        ref = F.scaled_dot_product_attention(q[:, h, tokens].float(), k[:, h].float(), v[:, h].float(),
                                             attn_mask=mask, scale=scale)
        diff += float((got - ref).square().sum())
        ref_norm += float(ref.square().sum())
    return (diff / ref_norm) ** 0.5
