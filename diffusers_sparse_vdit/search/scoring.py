"""``HeadScorer``: how much each candidate mode changes each head's contribution to the layer.

Metric
------
For one attention call with dense per-head outputs ``O_h`` (rows x D), a candidate's
outputs ``O'_h`` and the layer's output projection ``W = [W_1 .. W_H]`` (C x H*D):

    err(h, c) = sum_rows || (O'_h - O_h) W_h^T ||^2  /  sum_rows || Y ||^2,   Y = sum_h O_h W_h^T

the change in what head ``h`` adds to the layer output, as a fraction of that output's
energy (bias left out: it is no head's doing). Projecting is what makes SKIP fair: a head
whose output the projection all but cancels costs nothing to skip, however large its raw
values. Normalizing by the layer's energy makes heads comparable across layers and steps
(the paper's plain MSE is in each layer's own units) and the errors of one layer roughly
add up: ``sum_h err(h, c_h)`` is the layer's relative error when cross-terms between heads
average out. HunyuanVideo's dual-stream layers project text rows with another matrix, so
``out_proj`` may be a list of ``(rows, weight)`` pairs; rows no pair covers are left out of
both sums. ``metric="mse"`` gives the paper's plain ``mean((O'_h - O_h)^2)`` over rows and
channels instead, with no projection.

Errors are averaged over calls (prompts x steps x batch items: each call counts once,
whatever its scale), per step range when ``step_ranges`` is given.

Cost and sampling
-----------------
Nothing is N x N. Candidate outputs come from :func:`sparse_attention` with one plan per
candidate covering all heads of the layer, restricted (:meth:`SparsePlan.restrict_queries`)
to a stratified random sample of ``sample_tiles`` video query tiles per call: the video
tiles are cut into that many equal strata and one tile is drawn from each, weighted by its
stratum's size, so sums over sampled rows are unbiased estimates of sums over all rows (the
error and the energy use the same rows, a ratio estimator). Text rows are always scored in
full: they attend densely in every mode but SKIP, where they count (padded text rows past
``text_lengths`` count nowhere: no video token sees them). A fresh sample each
call means the sampling noise averages out over calls. ``tests/search`` measures it on a
32-tile layout sampled 8 tiles a call: the single-call estimate is off by a median 4%
(the worst entries by ~60%), and the mean by at most 14% over 12 calls, 9% over 24 and 6%
over 48, shrinking as 1/sqrt(calls). A calibration gives every layer hundreds of calls.

MULTI_DIAGONAL candidates run in token-major order, where a frame-major tile's rows are
spread over many tiles, so they get their own stratified sample of token-major tiles (with
the layer energy measured on those rows). The dense output on all rows is computed once per
call (or passed in as ``dense``) and sampled rows are read from it.

On the ``torch`` backend (the CPU), one reference-kernel call per candidate would walk the
tiles in Python nine times a call. Instead each order's sampled rows make one pass over the
keys that keeps every key tile's softmax partials (:mod:`.partials`), and every candidate's
output, and the stripe mass, are combined from them: the same numbers (the tests compare the
two paths' ScoreSets), at about the cost of one dense attention over the sampled rows per
order. The dense output is then PyTorch's fused attention.

FP8. The first ``fp8_calls`` calls of each (step range, layer) also measure, per head, the relative
L2 error of dense FP8 attention (Q, K, P, V in float8 e4m3, :func:`..kernels.quantize.fp8_attention_error`)
on the call's first batch item, so the solver can keep the heads FP8 hurts in native precision.
One call is enough: like the modes' errors, the error is a property of the head's q, k, v
statistics, which the paper finds input-invariant; it costs one dense attention per range and layer.
Padded text keys (HunyuanVideo) are included: the error compares FP8 and exact attention over the
same keys.

VERTICAL_STRIPE stripes are per head (:mod:`.stripes`): the mass each key tile receives
from the sampled frame-major rows is accumulated per (step range, layer, head), and each
call scores its stripe candidates with the heaviest tiles of the mass accumulated so far,
this call included. The final stripes come from the total mass (:meth:`ScoreSet.stripes`),
so they match the scored ones once the ranking settles, which it does within a few calls
when attention is input-invariant (the paper's premise); the saved mass lets you check.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence, Union

import torch
import torch.nn.functional as F

from ..kernels import sparse_attention
from ..kernels.attention import resolve_backend
from ..layout import FRAME_MAJOR, TOKEN_MAJOR, TokenLayout
from ..modes import Mode, ModeSpec
from ..plan import build_plan, spec_tile_mask
from .candidates import Candidate, candidate_densities, default_candidates
from .partials import combine, tile_mass, tile_partials
from .scores import METRICS, ScoreSet, as_step_ranges
from .solver import DEFAULT_LAMBDA, default_epsilon, paper_choice, rule_units
from .stripes import (StripePermutation, frame_major_tile_of_token, key_tile_mass, selectable_tiles, tile_positions,
                      top_stripe_tiles, weighted_row_mass)

__all__ = ["HeadScorer", "OutProj"]

#: query rows of a call on which the FP8 error is measured (evenly spaced; all when fewer)
FP8_SAMPLE_ROWS = 512

Rows = Union[slice, torch.Tensor, Sequence[int]]
OutProj = Union[torch.Tensor, Sequence[tuple[Rows, torch.Tensor]], None]


@dataclass
class _Sample:
    tiles: torch.Tensor  # sampled video tiles, in the sample's kernel order (CPU)
    rows: torch.Tensor  # caller rows: sampled video rows, then every text row
    weights: torch.Tensor  # float64 (B, rows): stratum size for video rows, 1 (0 if padding) for text rows
    n_video: int


@dataclass
class _Projection:
    pair_of_token: torch.Tensor  # (N,) on the device: which (rows, weight) pair projects each token, -1 for none
    weights: list[torch.Tensor]  # float32 (C, H*D) per pair
    grams: list[torch.Tensor]  # float32 (H, D, D) per pair: W_h^T W_h


class HeadScorer:
    """Scores every candidate mode for every head of a model, one attention call at a time.

    Bound to one token layout (the calibration resolution). Call :meth:`attend` (score, then
    return the output to carry on) or :meth:`score` (score only) for every target attention
    call, and :meth:`scores` at the end.

    ``propagate``: ``"dense"`` (default) carries the dense output, so every layer is scored
    on the model's true activations; ``"greedy"`` carries, per head, the candidate the
    paper's rule picks from this call's errors (Algorithm 1's greedy propagation), so later
    layers and steps are scored on the accumulated sparse error, as at inference.
    """

    def __init__(
        self,
        layout: TokenLayout,
        num_layers: int,
        num_heads: int,
        *,
        candidates: Sequence[Candidate] | None = None,
        tile_size: int = 128,
        metric: str = "projected",
        sample_tiles: int = 32,
        step_ranges: Sequence[Sequence[int]] | None = None,
        backend: str = "auto",
        propagate: str = "dense",
        lam: float = DEFAULT_LAMBDA,
        epsilon: float | None = None,
        seed: int = 0,
        max_chunk_elements: int = 1 << 28,
        metadata: dict[str, Any] | None = None,
        fp8_calls: int = 1,
    ):
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
        if propagate not in ("dense", "greedy"):
            raise ValueError(f"propagate must be 'dense' or 'greedy', got {propagate!r}")
        if sample_tiles < 1:
            raise ValueError(f"sample_tiles must be >= 1, got {sample_tiles}")
        if not isinstance(fp8_calls, int) or fp8_calls < 0:
            raise ValueError(f"fp8_calls must be an integer >= 0 (0: do not measure FP8 errors), got {fp8_calls!r}")
        self.layout, self.tile_size = layout, tile_size
        self.num_layers, self.num_heads = int(num_layers), int(num_heads)
        self.candidates = tuple(candidates) if candidates is not None else default_candidates(layout, tile_size)
        if sum(c.mode is Mode.FULL for c in self.candidates) != 1 or len(set(self.candidates)) != len(self.candidates):
            raise ValueError("candidates must be distinct and include FULL exactly once")
        self.metric, self.sample_tiles, self.backend = metric, int(sample_tiles), backend
        self.step_ranges = as_step_ranges(step_ranges)
        self.propagate, self.lam = propagate, float(lam)
        self.epsilon = default_epsilon(metric) if epsilon is None else float(epsilon)
        self.max_chunk_elements = int(max_chunk_elements)
        self.metadata = dict(metadata or {})
        self.densities = candidate_densities(self.candidates, layout, tile_size)
        self.full_index = next(i for i, c in enumerate(self.candidates) if c.mode is Mode.FULL)

        stripe_cands = [c for c in self.candidates if c.mode is Mode.VERTICAL_STRIPE]
        if len({c.sink_frames for c in stripe_cands}) > 1:
            raise ValueError("all VERTICAL_STRIPE candidates must share one sink_frames (one canonical layout)")
        self._sink_frames = stripe_cands[0].sink_frames if stripe_cands else 1
        self._max_stripes = max((c.stripes for c in stripe_cands), default=0)
        self._selectable = selectable_tiles(layout, tile_size, self._sink_frames)

        ranges, nvt, c = len(self.step_ranges), layout.video_tiles(tile_size), len(self.candidates)
        self._err_sum = torch.zeros(ranges, self.num_layers, self.num_heads, c, dtype=torch.float64)
        self._counts = torch.zeros(ranges, self.num_layers, dtype=torch.int64)
        self._mass_sum = torch.zeros(ranges, self.num_layers, self.num_heads, nvt, dtype=torch.float64)
        self.fp8_calls = fp8_calls
        self._fp8_sum = torch.zeros(ranges, self.num_layers, self.num_heads, dtype=torch.float64)
        self._fp8_counts = torch.zeros(ranges, self.num_layers, dtype=torch.int64)
        self._generator = torch.Generator().manual_seed(seed)
        self._tile_rows = {o: layout.row_map(o, tile_size).view(-1, tile_size) for o in (FRAME_MAJOR, TOKEN_MAJOR)}
        self._tile_lengths = layout.tile_lengths(tile_size).long()
        self._text_rows = torch.arange(layout.text_tokens) + layout.text_start
        self._plans = [build_plan([cand.scoring_spec(layout, tile_size)] * self.num_heads, layout, tile_size)
                       for cand in self.candidates]
        # for the torch backend's shared-partials path (:mod:`.partials`)
        self._tile_masks = [spec_tile_mask(cand.scoring_spec(layout, tile_size), layout, tile_size)[None]
                            for cand in self.candidates]
        self._tile_of = {o: layout.tile_of_token(o, tile_size) for o in (FRAME_MAJOR, TOKEN_MAJOR)}
        padded = torch.arange(tile_size)[None, :] < self._tile_lengths[:, None]
        self._key_rows = {o: (rows.flatten(), padded.flatten()) for o, rows in self._tile_rows.items()}

    # Public -------------------------------------------------------------------------------
    def reseed(self, seed: int) -> None:
        """Restart the tile sampling from ``seed`` (the runner does per prompt, so that how prompts
        are split across processes does not change what each contributes)."""
        self._generator.manual_seed(int(seed))

    def attend(self, layer: int, q, k, v, *, out_proj: OutProj = None, step: int | None = None,
               text_lengths=None, scale: float | None = None, dense: torch.Tensor | None = None) -> torch.Tensor:
        """Score this call and return the attention output to carry on (see ``propagate``)."""
        scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
        if dense is None:
            dense = self._dense(q, k, v, scale, text_lengths)
        errors = self.score(layer, q, k, v, out_proj=out_proj, step=step, text_lengths=text_lengths, scale=scale, dense=dense)
        if self.propagate == "dense":
            return dense
        units = rule_units(errors, self.metric, self.num_heads)
        choice = paper_choice(units, self.densities, lam=self.lam, epsilon=self.epsilon, full_index=self.full_index)
        return self._run_choice(choice.tolist(), layer, self._range_index(step), q, k, v, scale, text_lengths)

    def score(self, layer: int, q, k, v, *, out_proj: OutProj = None, step: int | None = None,
              text_lengths=None, scale: float | None = None, dense: torch.Tensor | None = None) -> torch.Tensor:
        """Score every candidate for every head on this call; returns this call's errors ``(H, C)``
        (mean over batch items) and adds them to the running averages."""
        self._check(layer, q, k, v, dense)
        r = self._range_index(step)
        batch, heads, _, head_dim = q.shape
        scale = 1.0 / math.sqrt(head_dim) if scale is None else float(scale)
        if text_lengths is not None:
            text_lengths = torch.as_tensor(text_lengths, device=q.device).reshape(-1)
        if dense is None:
            dense = self._dense(q, k, v, scale, text_lengths)
        proj = self._projection(out_proj, heads, head_dim, q.device)
        orders = {self._order(c) for c in self.candidates} | {FRAME_MAJOR}
        samples = {o: self._sample(o, batch, q.device, text_lengths) for o in sorted(orders)}
        energy = {o: self._energy(dense, s, proj) for o, s in samples.items()}
        outputs = striped = buffer = None
        if self._shared_partials(q.device):  # every candidate (and the stripe mass) from one pass over the keys
            outputs = self._outputs_from_partials(r, layer, q, k, v, samples, scale, text_lengths)
        else:  # one kernel call per candidate
            self._measure_stripes(r, layer, q, k, samples[FRAME_MAJOR], scale, text_lengths)
            striped = self._striped_inputs(r, layer, q, k, v)
            buffer = torch.empty_like(q)
        dense_rows = {o: dense[:, :, s.rows].float() for o, s in samples.items()}

        errors = torch.zeros(batch, heads, len(self.candidates), dtype=torch.float64, device=q.device)
        for c, cand in enumerate(self.candidates):
            if cand.mode is Mode.FULL:  # exact by definition
                continue
            order = self._order(cand)
            s = samples[order]
            if cand.mode is Mode.SKIP:  # zero on every row, text rows included
                delta = -dense_rows[order]
            else:  # text rows attend densely in every other mode: only video rows can differ
                rows = s.rows[: s.n_video]
                got = outputs[c] if outputs is not None else self._sampled_rows(c, q, k, v, rows, s.tiles, striped,
                                                                                scale, text_lengths, buffer)
                delta = got.float() - dense_rows[order][:, :, : s.n_video]
            errors[..., c] = self._error(delta, s, proj) / energy[order][:, None]

        errors = errors.cpu()
        self._err_sum[r, layer] += errors.sum(0)
        self._counts[r, layer] += batch
        if self._fp8_counts[r, layer] < self.fp8_calls:
            self._measure_fp8(r, layer, q, k, v, scale)
        return errors.mean(0)

    def scores(self, **metadata) -> ScoreSet:
        """The averages so far as a :class:`ScoreSet` (``metadata`` is added to the scorer's)."""
        counts = self._counts.clamp(min=1).double()
        fp8 = None
        if self.fp8_calls:
            fp8 = self._fp8_sum / self._fp8_counts.clamp(min=1).double()[..., None]
        return ScoreSet(
            layout=self.layout,
            tile_size=self.tile_size,
            candidates=self.candidates,
            errors=self._err_sum / counts[..., None, None],
            counts=self._counts.clone(),
            densities=self.densities.clone(),
            stripe_mass=self._mass_sum / counts[..., None, None],
            metric=self.metric,
            step_ranges=self.step_ranges,
            sample_tiles=self.sample_tiles,
            metadata={**self.metadata, **metadata},
            fp8_errors=fp8,
        )

    # Internals ----------------------------------------------------------------------------
    def _check(self, layer, q, k, v, dense):
        if not 0 <= layer < self.num_layers:
            raise ValueError(f"layer {layer} is outside 0..{self.num_layers - 1}")
        for name, x in (("q", q), ("k", k), ("v", v), ("dense", dense)):
            if x is not None and (x.dim() != 4 or tuple(x.shape) != tuple(q.shape)):
                raise ValueError(f"{name} must be (B, H, N, D) like q {tuple(q.shape)}, got {tuple(x.shape)}")
        if q.shape[1] != self.num_heads or q.shape[2] != self.layout.num_tokens:
            raise ValueError(f"the scorer is for {self.num_heads} heads over {self.layout}; q is {tuple(q.shape)}")

    def _range_index(self, step: int | None) -> int:
        if step is None:
            if len(self.step_ranges) > 1:
                raise ValueError("this scorer keeps scores per step range: pass the denoising step")
            return 0
        for i, (start, end) in enumerate(self.step_ranges):
            if start <= step and (end < 0 or step < end):
                return i
        raise ValueError(f"step {step} is in no step range of {self.step_ranges}")

    @staticmethod
    def _order(cand: Candidate) -> int:
        """The kernel order a candidate runs in."""
        return TOKEN_MAJOR if cand.mode is Mode.MULTI_DIAGONAL else FRAME_MAJOR

    def _shared_partials(self, device) -> bool:
        # The torch reference walks tiles in Python, one kernel call per candidate; sharing tile
        # partials computes the same outputs for all candidates at about the cost of one.
        return resolve_backend(self.backend, device) == "torch"

    def _dense(self, q, k, v, scale, text_lengths):
        if self._shared_partials(q.device):  # FULL is plain attention: PyTorch's fused kernel
            valid = self._key_valid(q.shape[0], q.device, text_lengths)
            return F.scaled_dot_product_attention(q, k, v, attn_mask=None if valid is None else valid[:, None, None, :],
                                                  scale=scale)
        full = build_plan([ModeSpec.full()] * self.num_heads, self.layout, self.tile_size)
        return sparse_attention(q, k, v, full, scale=scale, backend=self.backend, text_lengths=text_lengths)

    def _key_valid(self, batch, device, text_lengths):
        if text_lengths is None:
            return None
        valid = torch.ones(batch, self.layout.num_tokens, dtype=torch.bool, device=device)
        pos = torch.arange(self.layout.text_tokens, device=device)
        valid[:, self._text_rows.to(device)] = pos[None, :] < text_lengths[:, None]
        return valid

    def _sample(self, order: int, batch: int, device, text_lengths) -> _Sample:
        """One video tile per stratum of equal size, weighted by the stratum size, plus the text rows.

        Padded text rows (past ``text_lengths``) get weight 0: they never reach a video token.
        """
        nvt = self.layout.video_tiles(self.tile_size)
        k = min(self.sample_tiles, nvt)
        edges = torch.arange(k + 1) * nvt // k
        sizes = edges[1:] - edges[:-1]
        tiles = edges[:-1] + (torch.rand(k, generator=self._generator) * sizes).long().clamp(max=sizes - 1)
        valid = torch.arange(self.tile_size)[None, :] < self._tile_lengths[tiles][:, None]
        video = self._tile_rows[order][tiles][valid]
        weights = torch.ones(batch, len(video) + len(self._text_rows), dtype=torch.float64)
        weights[:, : len(video)] = sizes[:, None].expand(-1, self.tile_size)[valid].double()
        if text_lengths is not None:
            weights[:, len(video) :] = (torch.arange(len(self._text_rows))[None, :] < text_lengths.cpu()[:, None]).double()
        rows = torch.cat([video, self._text_rows])
        return _Sample(tiles, rows.to(device), weights.to(device), len(video))

    def _projection(self, out_proj: OutProj, heads: int, head_dim: int, device) -> _Projection | None:
        if self.metric == "mse":
            return None
        if out_proj is None:
            raise ValueError("metric 'projected' needs the layer's output projection weight (C, H*D), e.g. "
                             "out_proj=attn.to_out[0].weight, or a list of (rows, weight) pairs; or use metric='mse'")
        pairs = [(slice(None), out_proj)] if isinstance(out_proj, torch.Tensor) else list(out_proj)
        n = self.layout.num_tokens
        pair_of = torch.full((n,), -1, dtype=torch.int64)
        weights, grams = [], []
        for p, (rows, weight) in enumerate(pairs):
            if weight.dim() != 2 or weight.shape[1] != heads * head_dim:
                raise ValueError(f"out_proj weight {p} must be (C, H*D) = (C, {heads * head_dim}), got {tuple(weight.shape)}")
            idx = torch.arange(n)[rows] if isinstance(rows, slice) else torch.as_tensor(rows).cpu().long().reshape(-1)
            if (pair_of[idx] >= 0).any():
                raise ValueError("out_proj pairs overlap: each token row may be projected by one weight only")
            pair_of[idx] = p
            w = weight.detach().to(device, torch.float32)
            per_head = w.view(w.shape[0], heads, head_dim)
            weights.append(w)
            grams.append(torch.einsum("chd,che->hde", per_head, per_head))
        return _Projection(pair_of.to(device), weights, grams)

    def _energy(self, dense, s: _Sample, proj: _Projection | None) -> torch.Tensor:
        """(B,) float64: the estimated total the errors are divided by (see the module docstring)."""
        if proj is None:  # plain MSE: a weighted mean over rows and channels
            return s.weights.sum(-1) * dense.shape[-1]
        total = torch.zeros(dense.shape[0], dtype=torch.float64, device=dense.device)
        which = proj.pair_of_token[s.rows]
        for p, weight in enumerate(proj.weights):
            for sel in (which == p).nonzero().flatten().split(4096):
                y = dense[:, :, s.rows[sel]].float().transpose(1, 2).flatten(2) @ weight.T  # (B, r, C)
                total += (y.square().sum(-1).double() * s.weights[:, sel]).sum(-1)
        return total.clamp(min=torch.finfo(torch.float64).tiny)

    def _error(self, delta, s: _Sample, proj: _Projection | None) -> torch.Tensor:
        """(B, H) float64 weighted error sums over the first ``delta.shape[2]`` rows of the sample."""
        n = delta.shape[2]
        w = s.weights[:, :n]
        if proj is None:
            return (delta.square().sum(-1).double() * w[:, None, :]).sum(-1)
        total = torch.zeros(delta.shape[:2], dtype=torch.float64, device=delta.device)
        which = proj.pair_of_token[s.rows[:n]]
        for p, gram in enumerate(proj.grams):
            sel = (which == p).nonzero().flatten()
            if len(sel) == n:  # one projection for every row (Wan, CogVideoX): no gather
                d, ws = delta, w
            elif len(sel):
                d, ws = delta[:, :, sel], w[:, sel]
            else:
                continue
            per_row = (torch.matmul(d, gram) * d).sum(-1)  # (B, H, r): d_r^T W_h^T W_h d_r
            total += torch.einsum("bhr,br->bh", per_row.double(), ws)
        return total

    def _measure_fp8(self, r, layer, q, k, v, scale) -> None:
        """Add this call's per-head FP8 attention error (first batch item, see the module docstring).

        Every query row's error is a sample of the head's, so evenly spaced rows (at most
        :data:`FP8_SAMPLE_ROWS`) against all keys estimate it at a fraction of a dense call.
        """
        from ..kernels.quantize import fp8_attention_error

        step = max(1, -(-q.shape[2] // FP8_SAMPLE_ROWS))
        error = fp8_attention_error(q[:1, :, ::step], k[:1], v[:1], scale=scale, tile_size=self.tile_size)
        self._fp8_sum[r, layer] += error.detach().double().cpu()
        self._fp8_counts[r, layer] += 1

    def _measure_stripes(self, r, layer, q, k, fm: _Sample, scale, text_lengths) -> None:
        """Add this call's stripe mass, measured on the frame-major sample, to the running total."""
        if not self._max_stripes:
            return
        video = fm.rows[: fm.n_video]
        mass = key_tile_mass(q, k, video, fm.weights[0, : fm.n_video], self.layout, self.tile_size, scale=scale,
                             key_valid=self._key_valid(q.shape[0], q.device, text_lengths),
                             max_elements=self.max_chunk_elements)
        self._mass_sum[r, layer] += mass.sum(0).cpu()

    def _striped_inputs(self, r, layer, q, k, v):
        """q, k, v permuted so every head's heaviest tiles sit at the canonical stripe positions
        (:class:`StripePermutation`): one shared plan then scores every head's own stripes."""
        if not self._max_stripes:
            return None
        perm = StripePermutation(self._stripe_tiles(r, layer), self.layout, self.tile_size, self._sink_frames)
        return perm, *(perm.apply(x) for x in (q, k, v))

    def _candidate_tile_mask(self, c: int, r: int, layer: int) -> torch.Tensor:
        """Bool ``(H or 1, num_tiles, num_tiles)``: candidate ``c``'s tile mask, per head for VERTICAL_STRIPE
        (each head's own stripes, as :meth:`_striped_inputs` scores them)."""
        cand = self.candidates[c]
        if cand.mode is not Mode.VERTICAL_STRIPE:
            return self._tile_masks[c]
        nvt = self.layout.video_tiles(self.tile_size)
        tiles = self._stripe_tiles(r, layer, cand.stripes).tolist()
        return torch.stack([spec_tile_mask(cand.spec(tile_positions(sorted(t), nvt)), self.layout, self.tile_size)
                            for t in tiles])

    def _outputs_from_partials(self, r, layer, q, k, v, samples, scale, text_lengths) -> dict[int, torch.Tensor]:
        """Every sparse candidate's output on its sample's video rows, ``(B, H, R, D)`` float32 by candidate,
        combined from one set of tile partials per order (:mod:`.partials`), rows in bounded chunks.

        The frame-major partials also give this call's stripe mass, added to the running total
        before VERTICAL_STRIPE is combined (it scores the tiles the total ranks first).
        """
        batch, heads, _, head_dim = q.shape
        key_valid = self._key_valid(batch, q.device, text_lengths)
        outputs = {}
        for order, s in samples.items():
            cands = [c for c, cand in enumerate(self.candidates)
                     if cand.mode not in (Mode.FULL, Mode.SKIP) and self._order(cand) == order]
            measure = order == FRAME_MAJOR and self._max_stripes > 0
            if not cands and not measure:
                continue
            key_rows, key_ok = (x.to(q.device) for x in self._key_rows[order])
            key_ok = key_ok[None] if key_valid is None else key_ok & key_valid[:, key_rows]
            key_ok = None if key_ok.all() else key_ok
            k_tiles, v_tiles = k[:, :, key_rows], v[:, :, key_rows]
            rows = s.rows[: s.n_video]
            query_tiles = self._tile_of[order].to(q.device)[rows]
            per_row = batch * heads * max(len(key_rows), len(self._tile_lengths) * head_dim)
            step = max(1, self.max_chunk_elements // per_row)
            chunks = [slice(i, i + step) for i in range(0, len(rows), step)]
            if measure and len(chunks) > 1:  # the whole sample's partials would not fit: a pass of its own
                self._measure_stripes(r, layer, q, k, s, scale, text_lengths)
                measure = False
            keep = None
            for c in cands:
                outputs[c] = torch.empty(batch, heads, len(rows), head_dim, device=q.device)
            for chunk in chunks:
                partials = tile_partials(q[:, :, rows[chunk]], k_tiles, v_tiles, key_ok,
                                         tile_size=self.tile_size, scale=scale)
                if measure:  # one chunk: the whole sample
                    self._add_stripe_mass(r, layer, partials, rows, s.weights[0, : s.n_video])
                if not cands:
                    continue
                if keep is None:  # after the mass: VERTICAL_STRIPE's tiles depend on it
                    keep = torch.stack([self._candidate_tile_mask(c, r, layer).expand(heads, -1, -1) for c in cands])
                    keep = keep.to(q.device)
                for c, out in zip(cands, combine(partials, keep[:, :, query_tiles[chunk]])):
                    outputs[c][:, :, chunk] = out
        return outputs

    def _add_stripe_mass(self, r, layer, partials, rows, weights) -> None:
        """:func:`.key_tile_mass` of the sampled rows, from their tile partials."""
        per_tile = tile_mass(partials)[..., : self.layout.video_tiles(self.tile_size)]
        own = frame_major_tile_of_token(self.layout, self.tile_size).to(rows.device)[rows]
        mass = weighted_row_mass(per_tile, own, weights) / weights.sum()
        self._mass_sum[r, layer] += mass.sum(0).cpu()

    def _sampled_rows(self, c, q, k, v, rows, tiles, striped, scale, text_lengths, buffer) -> torch.Tensor:
        """Candidate ``c``'s output on the sampled caller ``rows``, all heads: ``(B, H, R, D)``."""
        kwargs = {"scale": scale, "backend": self.backend, "text_lengths": text_lengths, "out": buffer}
        if self.candidates[c].mode is Mode.VERTICAL_STRIPE:
            perm, qp, kp, vp = striped
            out = sparse_attention(qp, kp, vp, self._plans[c].restrict_queries(perm.query_tiles(rows)), **kwargs)
            return perm.gather_rows(out, rows)
        out = sparse_attention(q, k, v, self._plans[c].restrict_queries(tiles), **kwargs)
        return out[:, :, rows]

    def _stripe_tiles(self, r: int, layer: int, count: int | None = None) -> torch.Tensor:
        count = self._max_stripes if count is None else count
        return top_stripe_tiles(self._mass_sum[r, layer], count, self._selectable)

    def _run_choice(self, choice: list[int], layer: int, r: int, q, k, v, scale, text_lengths) -> torch.Tensor:
        """All rows of the layer with head ``h`` in candidate ``choice[h]`` (greedy propagation)."""
        cands = [self.candidates[c] for c in choice]
        plan = build_plan([c.scoring_spec(self.layout, self.tile_size) for c in cands], self.layout, self.tile_size)
        striped = [c.mode is Mode.VERTICAL_STRIPE for c in cands]
        if not any(striped):
            return sparse_attention(q, k, v, plan, scale=scale, backend=self.backend, text_lengths=text_lengths)
        tiles = self._stripe_tiles(r, layer)
        tiles[~torch.tensor(striped)] = -1  # other heads stay in caller order
        perm = StripePermutation(tiles, self.layout, self.tile_size, self._sink_frames)
        qp, kp, vp = (perm.apply(x) for x in (q, k, v))
        out = sparse_attention(qp, kp, vp, plan, scale=scale, backend=self.backend, text_lengths=text_lengths)
        return perm.restore(out)
