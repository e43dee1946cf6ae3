"""Other sparse-attention rules at a target attention density, installed the way a map is.

The quality benchmark (``benchmarks/bench_quality.py``) compares the search's maps with these
baselines at equal attention FLOPs. :func:`apply_baseline` installs one on a pipeline's
transformer; :func:`~diffusers_sparse_vdit.remove_sparse_vdit` takes it off again.

* ``"diagonal"``, ``"multi_diagonal"``: every head in one band mode, an ordinary mode map
  (:func:`uniform_map`) whose band width is solved for the density.
* ``"svg"``: an online per-head choice in the manner of Sparse VideoGen. At every sparse call,
  each head scores a spatial (DIAGONAL) and a temporal (MULTI_DIAGONAL) band of the same
  density against full attention on a random sample of video query rows, and runs the one
  with the smaller error. The sampled rows' extra FLOPs are not counted (about
  ``3 * sample_rows / N``).
* ``"radial"``: a static token-level mask in the manner of Radial Attention: a key at frame
  distance ``d`` is kept when it lies in the square spatial window of side ``window / 2**d``
  tokens centred on the query (``2 * chebyshev + 1 <= window / 2**d``), so the window halves
  with each frame of distance and frames where it falls under one token are skipped (the
  query always keeps itself); ``window`` is solved for the density.
* ``"sliding_tile"``: a 3D window (sliding tile attention): queries are grouped in cubes of
  ``frames x rows x cols`` tokens and keep the keys within ``reach`` tokens of their cube
  along each axis; the reach grows one axis at a time, the one with the least relative reach
  first, until the density is met.

Text rows attend everything and video rows attend all text, as in every mode of ours.

Densities are fractions of dense attention FLOPs with text included, as our plans count them:
the band modes' tile masks at the map's tile size, expanded to the tokens they compute. A
token-level mask has two: its own (``token_density``) and the one a block-sparse kernel would
compute, every (query tile, key tile) pair holding one kept entry counted whole, in
frame-major order at the map's tile size (``attention_density``; 64 for the reference pipelines). Their knobs are solved for
the latter, so all methods spend the same kernel FLOPs; the masks themselves run through
SDPA with a boolean mask (built once per layout and cached).

Dense warm-up: any method may run its first ``w`` of ``S`` steps dense; the total density
``(w + (S - w) * d) / S`` is the target, and the in-map density ``d`` is solved from it
(:func:`in_map_density`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from .config import SparseVDiTConfig
from .kernels import sparse_attention
from .layout import TokenLayout
from .modes import Mode, ModeSpec
from .plan import build_plan, spec_density

__all__ = [
    "BASELINES",
    "DENSITY_TILE",
    "BaselineInfo",
    "SolvedMask",
    "apply_baseline",
    "band_width_for",
    "generation_layout",
    "in_map_density",
    "mask_densities",
    "radial_video_mask",
    "sliding_tile_video_mask",
    "solved_mask",
    "svg_choice",
    "total_density",
    "uniform_map",
]

BASELINES = ("diagonal", "multi_diagonal", "svg", "radial", "sliding_tile")
DENSITY_TILE = 64  # the tile at which a token mask's block-sparse cost is counted
SLIDING_TILE_CUBE = (1, 4, 4)  # (frames, rows, cols) of a query cube


# Warm-up ------------------------------------------------------------------------------------
def total_density(density: float, dense_warmup_steps: int, num_inference_steps: int) -> float:
    """Attention density of a whole run whose first ``dense_warmup_steps`` steps are dense."""
    w, s = dense_warmup_steps, num_inference_steps
    return (w + (s - w) * density) / s


def in_map_density(target: float, dense_warmup_steps: int, num_inference_steps: int) -> float:
    """The density the sparse steps may have so that the whole run meets ``target``."""
    w, s = dense_warmup_steps, num_inference_steps
    if not 0 <= w < s:
        raise ValueError(f"dense_warmup_steps must be in 0..{s - 1} for {s} steps, got {w}")
    if not 0 < target <= 1:
        raise ValueError(f"the target density must be in (0, 1], got {target}")
    density = (target * s - w) / (s - w)
    if density <= 0:
        raise ValueError(f"{w} dense warm-up steps of {s} already cost density {w / s:.3f} >= target {target:.3f}: "
                         "use fewer warm-up steps or a higher target")
    return density


# Uniform band maps ---------------------------------------------------------------------------
def band_width_for(mode: Mode, density: float, layout: TokenLayout, tile_size: int) -> float:
    """The band width (frames) whose plan density at ``layout`` is closest to ``density``.

    Widths are taken just under whole tiles (the mask rounds them up to exactly that many).
    """
    mode = Mode.parse(mode)
    if mode not in (Mode.DIAGONAL, Mode.MULTI_DIAGONAL):
        raise ValueError(f"band_width_for takes DIAGONAL or MULTI_DIAGONAL, got {mode.name}")
    widths = [math.floor(w * tile_size / layout.frame_tokens * 1e6) / 1e6 for w in range(layout.video_tiles(tile_size))]
    return min(widths, key=lambda w: abs(spec_density(ModeSpec(mode, width=w), layout, tile_size)[0] - density))


def uniform_map(transformer, mode: Mode | str, density: float, layout: TokenLayout, *, tile_size: int = 128,
                dense_warmup_steps: int = 0) -> SparseVDiTConfig:
    """A map that runs every head of every layer in one band ``mode`` at about ``density`` (sparse steps)."""
    spec = ModeSpec(Mode.parse(mode), width=band_width_for(mode, density, layout, tile_size))
    return _same_spec_map(transformer, spec, tile_size, dense_warmup_steps)


def _same_spec_map(transformer, spec: ModeSpec, tile_size: int, dense_warmup_steps: int) -> SparseVDiTConfig:
    from .processors import family_of, sparse_targets

    targets = sparse_targets(transformer)
    heads = transformer.get_submodule(targets[0]).heads
    return SparseVDiTConfig.from_specs([[spec] * heads] * len(targets), family=family_of(transformer).name,
                                       transformer_class=type(transformer).__name__, target_modules=targets,
                                       tile_size=tile_size, dense_warmup_steps=dense_warmup_steps)


# Token-level masks ----------------------------------------------------------------------------
def _video_coords(layout: TokenLayout) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(frame, row, col) of every video token, frame-major."""
    i = torch.arange(layout.video_tokens)
    return i // layout.frame_tokens, i % layout.frame_tokens // layout.width, i % layout.width


def radial_video_mask(layout: TokenLayout, window: float) -> torch.Tensor:
    """``(V, V)`` bool, frame-major: keys in the square of side ``window / 2**frame_distance`` around the query."""
    f, r, c = _video_coords(layout)
    frames = (f[:, None] - f[None, :]).abs()
    spatial = torch.maximum((r[:, None] - r[None, :]).abs(), (c[:, None] - c[None, :]).abs())
    # a window under one token keeps nothing, or every frame would keep its key at the query's
    # position and touch every key tile
    keep = (2 * spatial + 1) << frames <= window
    return keep | torch.eye(layout.video_tokens, dtype=torch.bool)


def sliding_tile_video_mask(layout: TokenLayout, reach: tuple[int, int, int],
                            cube: tuple[int, int, int] = SLIDING_TILE_CUBE) -> torch.Tensor:
    """``(V, V)`` bool, frame-major: keys within ``reach[axis]`` tokens of the query's cube on every axis."""
    keep = torch.ones(layout.video_tokens, layout.video_tokens, dtype=torch.bool)
    for coord, size, reach in zip(_video_coords(layout), cube, reach, strict=True):
        start = coord // size * size  # the query's cube spans [start, start + size)
        keep &= (coord[None, :] >= start[:, None] - reach) & (coord[None, :] < start[:, None] + size + reach)
    return keep


def mask_densities(video_mask: torch.Tensor, layout: TokenLayout, tile_size: int = DENSITY_TILE) -> tuple[float, float]:
    """(token-level, tile-level) attention density of a video mask with our text rules, text included.

    Tile-level: video tiles of ``tile_size`` tokens in frame-major order, text in tiles of its
    own (all computed); a tile pair is computed whole when any of its entries is kept.
    """
    n, v = layout.num_tokens, layout.video_tokens
    text_pairs = n * n - v * v  # text rows see every key, video rows every text key
    tiles = layout.video_tiles(tile_size)
    padded = F.pad(video_mask, (0, tiles * tile_size - v, 0, tiles * tile_size - v))
    kept_tiles = padded.view(tiles, tile_size, tiles, tile_size).any(3).any(1).double()
    lengths = layout.tile_lengths(tile_size)[:tiles].double()
    tile_pairs = float(lengths @ kept_tiles @ lengths)
    return (float(video_mask.sum()) + text_pairs) / n**2, (tile_pairs + text_pairs) / n**2


def _radial_windows(layout: TokenLayout) -> list[float]:
    """Every window at which the radial mask changes: a side ``2s + 1`` at frame distance ``d``."""
    sides = range(1, 2 * max(layout.height, layout.width), 2)
    return sorted({0.0} | {float(side << d) for side in sides for d in range(layout.frames)})


def _sliding_reaches(layout: TokenLayout) -> list[tuple[int, int, int]]:
    """Reaches from none to all: one axis grows a token at a time, the least reached (relative to its size) first."""
    sizes = (layout.frames, layout.height, layout.width)
    reach, chain = [0, 0, 0], [(0, 0, 0)]
    while any(r < n for r, n in zip(reach, sizes)):
        axis = min((a for a in range(3) if reach[a] < sizes[a]), key=lambda a: (reach[a] + 1) / sizes[a])
        reach[axis] += 1
        chain.append(tuple(reach))
    return chain


@dataclass(frozen=True)
class _MaskFamily:
    video_mask: Callable[[TokenLayout, Any], torch.Tensor]
    knobs: Callable[[TokenLayout], list]  # the density never falls along them


_MASK_FAMILIES = {
    "radial": _MaskFamily(radial_video_mask, _radial_windows),
    "sliding_tile": _MaskFamily(sliding_tile_video_mask, _sliding_reaches),
}


@dataclass(frozen=True)
class SolvedMask:
    """A token mask solved for a density at one layout."""

    knob: Any  # radial: the window (tokens); sliding_tile: the reach per axis (tokens)
    token_density: float
    tile_density: float  # what the methods are matched on
    mask: torch.Tensor = field(repr=False)  # (N, N) bool, caller order: True = attend


@functools.lru_cache(maxsize=16)
def solved_mask(name: str, layout: TokenLayout, density: float, tile_size: int = DENSITY_TILE) -> SolvedMask:
    """The ``name`` mask ("radial" or "sliding_tile") whose tile-level density is closest to ``density``.

    Bisection over the knob values where the mask changes (the density never falls as the
    knob grows); cached per layout.
    """
    if name not in _MASK_FAMILIES:
        raise ValueError(f"unknown token mask {name!r}; choose one of {sorted(_MASK_FAMILIES)}")
    family = _MASK_FAMILIES[name]
    knobs = family.knobs(layout)

    @functools.cache
    def tile_density(i: int) -> float:
        return mask_densities(family.video_mask(layout, knobs[i]), layout, tile_size)[1]

    lo, hi = 0, len(knobs) - 1  # bisection for the first knob reaching the density
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (mid + 1, hi) if tile_density(mid) < density else (lo, mid)
    best = min({max(lo - 1, 0), lo}, key=lambda i: abs(tile_density(i) - density))
    knob = knobs[best]
    video = family.video_mask(layout, knob)
    token, tile = mask_densities(video, layout, tile_size)
    mask = torch.ones(layout.num_tokens, layout.num_tokens, dtype=torch.bool)
    span = slice(layout.video_start, layout.video_start + layout.video_tokens)
    mask[span, span] = video
    return SolvedMask(knob, token, tile, mask)


def generation_layout(pipe, **call) -> TokenLayout:
    """The token layout of ``pipe``'s self-attention for a pipeline call (one denoising step is run)."""
    from .processors import family_of
    from .processors.hook import _forward_signature

    family = family_of(pipe.transformer)
    seen: list[TokenLayout] = []

    def record(module, args, kwargs):
        arguments = _forward_signature(type(module)).bind_partial(module, *args, **kwargs).arguments
        grid = family.latent_grid(module.config, arguments["hidden_states"])
        text, _ = family.call_text(arguments)
        seen.append(TokenLayout(*grid, text_tokens=text, text_position=family.processor_cls.text_position if text else "none"))

    handle = pipe.transformer.register_forward_pre_hook(record, with_kwargs=True)
    try:
        pipe(**{**call, "num_inference_steps": 1, "output_type": "latent"})
    finally:
        handle.remove()
    if not seen:
        raise RuntimeError("the pipeline call ran no transformer forward, so its token layout is unknown")
    return seen[0]


# Installing ------------------------------------------------------------------------------------
@dataclass
class BaselineInfo:
    """What a baseline computes: densities are totals over the run, warm-up included."""

    method: str
    target_density: float
    in_map_density: float  # the sparse steps' target
    dense_warmup_steps: int
    num_inference_steps: int
    attention_density: float  # at the generation layout; tile-level (what a block-sparse kernel computes)
    token_density: float | None = None  # token masks only
    knob: dict[str, Any] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)  # svg: how often each head chose what

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def apply_baseline(pipe, method: str, target_density: float, *, layout: TokenLayout, num_inference_steps: int,
                   dense_warmup_steps: int = 0, tile_size: int = 128, backend: str = "auto", sample_rows: int = 64,
                   seed: int = 0) -> BaselineInfo:
    """Install baseline ``method`` (one of :data:`BASELINES`) on ``pipe.transformer`` at ``target_density``.

    ``target_density`` counts the whole run of ``num_inference_steps``, the first
    ``dense_warmup_steps`` of them dense. ``layout`` is the generation's token layout (band
    widths are solved at it); ``tile_size`` is the band maps' tile. Remove with
    :func:`~diffusers_sparse_vdit.remove_sparse_vdit`.
    """
    from .processors import apply_sparse_vdit, family_of

    if method not in BASELINES:
        raise ValueError(f"unknown baseline {method!r}; choose one of {BASELINES}")
    density = in_map_density(target_density, dense_warmup_steps, num_inference_steps)
    info = BaselineInfo(method, target_density, density, dense_warmup_steps, num_inference_steps, math.nan)

    def total(d):
        return total_density(d, dense_warmup_steps, num_inference_steps)

    transformer = getattr(pipe, "transformer", pipe)
    if method in ("diagonal", "multi_diagonal"):
        config = uniform_map(transformer, method, density, layout, tile_size=tile_size,
                             dense_warmup_steps=dense_warmup_steps)
        apply_sparse_vdit(pipe, config, backend=backend)
        info.attention_density = total(config.density(layout, step=dense_warmup_steps))
        info.knob = {"width": float(config.widths.flatten()[0])}
        return info

    base = family_of(transformer).processor_cls
    # an all-FULL map carries the warm-up and the step counting; the processors replace its attention
    full = _same_spec_map(transformer, ModeSpec.full(), tile_size, dense_warmup_steps)
    if method == "svg":
        width = band_width_for(Mode.DIAGONAL, density, layout, tile_size)
        cls = _svg_processor(base, width, tile_size, sample_rows, seed, info.stats)
        apply_sparse_vdit(pipe, full, backend=backend, processor_cls=cls)
        spatial = spec_density(ModeSpec.diagonal(width), layout, tile_size)[0]
        temporal = spec_density(ModeSpec.multi_diagonal(width), layout, tile_size)[0]
        info.attention_density = total((spatial + temporal) / 2)  # the two differ by partial tiles only
        info.knob = {"width": width, "sample_rows": sample_rows, "spatial_density": total(spatial),
                     "temporal_density": total(temporal)}
        return info
    solved = solved_mask(method, layout, density, tile_size)
    apply_sparse_vdit(pipe, full, backend="auto", processor_cls=_masked_processor(base, method, density, tile_size))
    info.attention_density, info.token_density = total(solved.tile_density), total(solved.token_density)
    if method == "radial":
        info.knob = {"window": solved.knob}
    else:
        info.knob = {"cube": list(SLIDING_TILE_CUBE), "reach": list(solved.knob)}
    return info


def _dense_call(processor, layout) -> bool:
    # dense warm-up steps (phase None) and calls before the grid is known take the stock path
    return layout is None or processor.state.phase is None


def _masked_processor(base: type, name: str, density: float, tile_size: int) -> type:
    class MaskedProcessor(base):
        """The family processor attending through a static token mask (see :mod:`diffusers_sparse_vdit.baselines`)."""

        def attend(self, query, key, value, plan, *, layout=None, text_lengths=None, attention_mask=None):
            if _dense_call(self, layout):
                return super().attend(query, key, value, None, layout=layout, text_lengths=text_lengths,
                                      attention_mask=attention_mask)
            mask = _on_device(solved_mask(name, layout, density, tile_size).mask, query.device)
            if attention_mask is not None:  # HunyuanVideo's (B, 1, 1, N) text padding
                mask = mask & attention_mask
            return F.scaled_dot_product_attention(query, key, value, attn_mask=mask)

    MaskedProcessor.__name__ = f"{name.title().replace('_', '')}{base.__name__}"
    return MaskedProcessor


@functools.lru_cache(maxsize=8)
def _on_device(mask: torch.Tensor, device: torch.device) -> torch.Tensor:
    return mask.to(device)


def _svg_processor(base: type, width: float, tile_size: int, sample_rows: int, seed: int, stats: dict) -> type:
    specs = (ModeSpec.diagonal(width), ModeSpec.multi_diagonal(width))
    stats.update(calls=0, spatial=0, temporal=0)

    class SVGProcessor(base):
        """The family processor choosing spatial or temporal per head and call (see :mod:`diffusers_sparse_vdit.baselines`)."""

        def attend(self, query, key, value, plan, *, layout=None, text_lengths=None, attention_mask=None):
            if _dense_call(self, layout):
                return super().attend(query, key, value, None, layout=layout, text_lengths=text_lengths,
                                      attention_mask=attention_mask)
            if not hasattr(self, "_generator"):
                self._generator = torch.Generator().manual_seed(seed + self.layer)
            temporal = svg_choice(query, key, value, layout, specs, tile_size, sample_rows, self._generator,
                                  attention_mask)
            stats["calls"] += 1
            stats["temporal"] += int(temporal.sum())
            stats["spatial"] += int((~temporal).sum())
            head_specs = tuple(specs[int(t)] for t in temporal.tolist())
            return sparse_attention(query, key, value, build_plan(head_specs, layout, tile_size), backend=self.backend,
                                    text_lengths=text_lengths)

    SVGProcessor.__name__ = f"SVG{base.__name__}"
    return SVGProcessor


def svg_choice(query, key, value, layout: TokenLayout, specs: tuple[ModeSpec, ModeSpec], tile_size: int,
               sample_rows: int, generator: torch.Generator, attention_mask=None) -> torch.Tensor:
    """Per head, bool ``(H,)``: whether ``specs[1]`` (temporal) errs less than ``specs[0]`` (spatial)
    against full attention on ``sample_rows`` random video query rows (all batch items summed)."""
    count = min(sample_rows, layout.video_tokens)
    rows = layout.video_start + torch.randperm(layout.video_tokens, generator=generator)[:count]
    rows = rows.to(query.device)
    q = query[:, :, rows].float()
    scores = q @ key.float().transpose(-1, -2) * query.shape[-1] ** -0.5  # (B, H, s, N)
    if attention_mask is not None:
        scores = scores.masked_fill(~attention_mask, float("-inf"))
    v = value.float()
    full = torch.softmax(scores, -1) @ v
    errors = []
    for spec in specs:
        allowed = build_plan((spec,), layout, tile_size).mask_rows(0, rows.cpu()).to(query.device)
        out = torch.softmax(scores.masked_fill(~allowed, float("-inf")), -1) @ v
        errors.append((out - full).square().sum(dim=(0, 2, 3)))
    return errors[1] < errors[0]
