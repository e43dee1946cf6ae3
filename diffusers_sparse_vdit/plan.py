"""Sparse attention plans: per-head mode specs + token layout + tile size -> tile lists.

A :class:`SparsePlan` says, for every head and every query tile (in kernel order, see
:mod:`.layout`), which key tiles to compute. It is what the kernels consume and what the
tests expand into a dense boolean mask (:meth:`SparsePlan.dense_mask`).

Storage. Each query tile's key list is sorted with the tiles that need a mask last: full
video tiles first (``n_full`` of them), then the partly filled last video tile, then the
text tiles (whose valid length may change per batch item through ``text_lengths``). Lists
live in one int32 pool per (layout, tile size) shared by every plan, so a map of 60 layers
that reuses a handful of specs stores each spec's lists once; the "all tiles" list that
FULL heads and every text row use is stored a single time.

Building. A spec's lists are built once per (layout, tile size), however many layers and
plans use it, from the mode's padded per-row key lists (:mod:`.masks`) with whole-tensor ops:
no per-tile Python loop and no ``num_tiles x num_tiles`` mask, so the first call of a
60-layer map at a new resolution takes well under a second (``benchmarks/bench_plan.py``).
Plans are cached: every layer of every step with the same specs reuses the same object.
"""

from __future__ import annotations

import functools
import itertools
import threading
import weakref
from dataclasses import dataclass, field
from typing import NamedTuple, Sequence

import torch

from .layout import FRAME_MAJOR, TOKEN_MAJOR, TokenLayout
from .masks import video_key_tiles, video_tile_mask
from .modes import Mode, ModeSpec

__all__ = ["SparsePlan", "build_plan", "spec_density", "spec_tile_mask", "MIN_TILE_SIZE", "PRECISIONS"]

#: How a head's products are computed: ``"native"`` in the inputs' dtype, ``"fp8"`` with Q, K, P and V
#: quantized to float8 e4m3 on Hopper's FP8 tensor cores (:mod:`.kernels.quantize` says how)
PRECISIONS = ("native", "fp8")

MIN_TILE_SIZE = 16
_WEIGHT_CLASSES = 4
_UIDS = itertools.count()
_LIVE_PLANS: "weakref.WeakValueDictionary[int, SparsePlan]" = weakref.WeakValueDictionary()


def plan_by_uid(uid: int) -> "SparsePlan":
    """The live plan with this ``uid`` (plans are cached, so the ones in use stay alive)."""
    try:
        return _LIVE_PLANS[uid]
    except KeyError:
        raise RuntimeError(f"sparse plan {uid} no longer exists; keep a reference to plans passed to compiled code") from None
_ALL = "all tiles"


class _SpecRows(NamedTuple):
    """One spec's key lists at one (layout, tile size): per query tile, and its cost."""

    starts: torch.Tensor  # int32 (num_tiles,): where the tile's list starts in the pool
    n_full: torch.Tensor  # int32 (num_tiles,): leading full video tiles of the list
    n_total: torch.Tensor  # int32 (num_tiles,): length of the list
    token_pairs: int  # (query, key) token pairs one head computes
    tile_pairs: int  # (query tile, key tile) pairs


class _TilePool:
    """Append-only int32 storage of key-tile lists for one (layout, tile size), and each spec's rows in it.

    Every spec's rows are built once per layout (however many layers and plans use the spec)
    and kept as long as the pool, like the lists they point into.
    """

    def __init__(self, layout: TokenLayout, tile_size: int):
        self.layout, self.tile_size = layout, tile_size
        self._chunks: list[torch.Tensor] = []
        self._size = 0
        self._offsets: dict[object, int] = {}
        self._rows: dict[ModeSpec, _SpecRows] = {}
        self._device_cache: dict[torch.device, torch.Tensor] = {}
        self._lock = threading.RLock()

    def offset(self, key: object, make) -> int:
        with self._lock:
            if key not in self._offsets:
                values = make().to(torch.int32)
                self._offsets[key] = self._size
                self._chunks.append(values)
                self._size += values.numel()
                self._device_cache.clear()
            return self._offsets[key]

    def spec_rows(self, spec: ModeSpec) -> _SpecRows:
        with self._lock:
            rows = self._rows.get(spec)
            if rows is None:
                rows = self._rows[spec] = _build_spec_rows(spec, self)
            return rows

    def tensor(self, device: torch.device) -> torch.Tensor:
        # Plans fetch the pool at call time: a pool that grew since the plan was built is a
        # superset with the same offsets.
        with self._lock:
            cached = self._device_cache.get(device)
            if cached is None or cached.numel() != max(self._size, 1):
                host = torch.cat(self._chunks) if self._chunks else torch.zeros(1, dtype=torch.int32)
                cached = self._device_cache[device] = host.to(device)
            return cached


@functools.lru_cache(maxsize=None)
def _pool(layout: TokenLayout, tile_size: int) -> _TilePool:
    return _TilePool(layout, tile_size)


def spec_tile_mask(spec: ModeSpec, layout: TokenLayout, tile_size: int) -> torch.Tensor:
    """Boolean ``(num_tiles, num_tiles)`` query tile -> key tile of one spec, kernel order, text rules included."""
    nvt, nt = layout.video_tiles(tile_size), layout.num_tiles(tile_size)
    mask = torch.zeros(nt, nt, dtype=torch.bool)
    if spec.mode is Mode.SKIP:
        return mask
    mask[:nvt, :nvt] = video_tile_mask(spec, layout, tile_size)
    mask[:, nvt:] = True  # every video query sees all text keys
    mask[nvt:, :] = True  # text queries see everything
    return mask


def spec_density(spec: ModeSpec, layout: TokenLayout, tile_size: int) -> tuple[float, float]:
    """(fraction of query-key token pairs, fraction of tile pairs) one head of this spec computes."""
    rows = _pool(layout, tile_size).spec_rows(spec)
    return rows.token_pairs / layout.num_tokens**2, rows.tile_pairs / layout.num_tiles(tile_size) ** 2


def _build_spec_rows(spec: ModeSpec, pool: _TilePool) -> _SpecRows:
    """Pool one spec's key lists: each query tile's keys in ascending kernel-order tile index.

    Ascending is the visiting order the kernel needs: the full video tiles, then the partly
    filled last video tile, then the text tiles.
    """
    layout, tile_size = pool.layout, pool.tile_size
    nvt, nt = layout.video_tiles(tile_size), layout.num_tiles(tile_size)
    zeros = torch.zeros(nt, dtype=torch.int32)
    if spec.mode is Mode.SKIP:
        return _SpecRows(zeros, zeros, zeros, 0, 0)
    ntt, partial = nt - nvt, layout.video_tokens % tile_size
    full_cols = nvt - (partial != 0)  # every video tile but a partly filled last one
    keys, valid = video_key_tiles(spec, layout, tile_size)
    n_video = valid.sum(1)
    n_full_video = (valid & (keys < full_cols)).sum(1) if partial else n_video
    # video rows: their video keys plus every text tile; text rows: every tile
    n_total = torch.cat([n_video + ntt, torch.full((ntt,), nt)]).to(torch.int32)
    n_full = torch.cat([n_full_video, torch.full((ntt,), full_cols)]).to(torch.int32)
    video_row_keys = n_full_video * tile_size + (n_video - n_full_video) * partial + layout.text_tokens
    row_keys = torch.cat([video_row_keys, torch.full((ntt,), layout.num_tokens)])
    lengths = layout.tile_lengths(tile_size).long()
    token_pairs, tile_pairs = int((lengths * row_keys).sum()), int(n_total.sum())

    starts = zeros.clone()
    dense = n_total == nt  # FULL heads and every text row share one pooled list
    starts[dense] = pool.offset(_ALL, lambda: torch.arange(nt))
    own = (~dense).nonzero().flatten()  # video rows only: text rows are always dense
    if own.numel():

        def lists():
            text = torch.arange(nvt, nt).expand(len(own), ntt)
            keep = torch.cat([valid.index_select(0, own), torch.ones_like(text, dtype=torch.bool)], dim=1)
            return torch.masked_select(torch.cat([keys.index_select(0, own), text], dim=1), keep)  # row-major: rows in order

        base = pool.offset((spec, "rows"), lists)
        counts = n_total[own].to(torch.int64)
        starts[own] = (base + torch.cumsum(counts, 0) - counts).to(torch.int32)
    return _SpecRows(starts, n_full, n_total, token_pairs, tile_pairs)


@functools.lru_cache(maxsize=None)
def _row_maps(layout: TokenLayout, tile_size: int) -> torch.Tensor:
    return torch.stack([layout.row_map(FRAME_MAJOR, tile_size), layout.row_map(TOKEN_MAJOR, tile_size)]).to(torch.int32)


@dataclass(frozen=True, eq=False)
class SparsePlan:
    """Per-head key-tile lists for one attention call. Build with :func:`build_plan`."""

    specs: tuple[ModeSpec, ...]
    layout: TokenLayout
    tile_size: int
    work: torch.Tensor  # int32 (n_work, 5): head, query tile, pool start, n_full, n_total; heaviest first
    head_order: torch.Tensor  # int32 (H,): FRAME_MAJOR or TOKEN_MAJOR
    tile_lengths: torch.Tensor  # int32 (num_tiles,)
    precision: tuple[str, ...] = ()  # one of PRECISIONS per head; () means all "native"
    _device: dict = field(default_factory=dict, repr=False)
    # a process-wide id, so a compiled graph can name the plan as an int (see kernels/attention.py)
    uid: int = field(default_factory=lambda: next(_UIDS), repr=False)

    def __post_init__(self):
        if not self.precision:
            object.__setattr__(self, "precision", ("native",) * len(self.specs))
        _LIVE_PLANS[self.uid] = self

    # Shape ------------------------------------------------------------------------------
    @property
    def num_heads(self) -> int:
        return len(self.specs)

    @property
    def num_tokens(self) -> int:
        return self.layout.num_tokens

    @property
    def num_tiles(self) -> int:
        return self.layout.num_tiles(self.tile_size)

    @property
    def video_tiles(self) -> int:
        return self.layout.video_tiles(self.tile_size)

    @property
    def has_reordered_heads(self) -> bool:
        return any(s.reordered for s in self.specs)

    @property
    def reordered_heads(self) -> torch.Tensor:
        """int64 indices of the token-major (MULTI_DIAGONAL) heads."""
        return torch.tensor([h for h, s in enumerate(self.specs) if s.reordered], dtype=torch.long)

    @property
    def head_slot(self) -> torch.Tensor:
        """int32 ``(H,)``: each head's index in :attr:`reordered_heads` (0 for the other heads)."""
        slot = torch.zeros(self.num_heads, dtype=torch.int32)
        heads = self.reordered_heads
        slot[heads] = torch.arange(len(heads), dtype=torch.int32)
        return slot

    @property
    def skip_heads(self) -> list[int]:
        return [h for h, s in enumerate(self.specs) if s.mode is Mode.SKIP]

    @property
    def fp8_heads(self) -> list[int]:
        """Heads computed in FP8 (:data:`PRECISIONS`); SKIP heads compute nothing, so they are never listed."""
        return [h for h, (p, s) in enumerate(zip(self.precision, self.specs)) if p == "fp8" and s.mode is not Mode.SKIP]

    @property
    def computed_heads(self) -> list[int]:
        """Heads with key tiles to compute: not SKIP (whose programs only write zeros), not left out by
        :meth:`restrict_heads`."""
        if "computed_heads" not in self._device:
            self._device["computed_heads"] = sorted(set(self.work[self.work[:, 4] > 0, 0].tolist()))
        return self._device["computed_heads"]

    # Tile lists -------------------------------------------------------------------------
    def row_maps(self) -> torch.Tensor:
        """int32 ``(2, num_tiles * tile_size)``: caller token of each kernel row, per order."""
        return _row_maps(self.layout, self.tile_size)

    def key_tiles(self, head: int, query_tile: int) -> torch.Tensor:
        """Key tiles (kernel order, in the kernel's visiting order) of one query tile of one head."""
        pool = _pool(self.layout, self.tile_size)
        rows = pool.spec_rows(self.specs[head])
        start = int(rows.starts[query_tile])
        return pool.tensor(torch.device("cpu"))[start : start + int(rows.n_total[query_tile])]

    def tile_mask(self, head: int) -> torch.Tensor:
        """Boolean ``(num_tiles, num_tiles)``: query tile -> key tile, in the head's kernel order."""
        return spec_tile_mask(self.specs[head], self.layout, self.tile_size)

    def device_tensors(self, device: torch.device) -> dict[str, torch.Tensor]:
        device = torch.device(device)
        if device not in self._device:
            self._device[device] = {
                "work": self.work.to(device),
                "head_order": self.head_order.to(device),
                "tile_lengths": self.tile_lengths.to(device),
                "row_maps": self.row_maps().to(device),
                # token-major heads and each head's slot among them (the
                # kernel reads those heads' K/V from a copy in kernel order, see kernels/triton_sparse.py)
                "reordered_heads": self.reordered_heads.to(device),
                "head_slot": self.head_slot.to(device),
                "computed_heads": torch.tensor(self.computed_heads, dtype=torch.int32, device=device),
            }
        tensors = dict(self._device[device])
        tensors["kv_tiles"] = _pool(self.layout, self.tile_size).tensor(device)
        return tensors

    def restrict_queries(self, query_tiles: Sequence[int] | torch.Tensor, head_order: int | None = None) -> "SparsePlan":
        """The same plan computing only the given query tiles (kernel order); other rows are left unwritten.

        The search scores candidate modes on a sample of query rows this way. With
        ``head_order`` given, only heads running in that order are restricted (the others keep
        all their tiles), so a sample of frame-major tiles can be matched for token-major heads.
        """
        keep = torch.zeros(self.num_tiles, dtype=torch.bool)
        keep[torch.as_tensor(query_tiles, dtype=torch.long)] = True
        rows = keep[self.work[:, 1].long()]
        if head_order is not None:
            rows |= self.head_order[self.work[:, 0].long()] != head_order
        return self._with_work(rows)

    def restrict_heads(self, heads: Sequence[int]) -> "SparsePlan":
        """The same plan computing only ``heads``; the other heads' outputs are left unwritten.

        A plan whose heads differ in precision runs as two launches of this kind, one per precision.
        """
        heads = tuple(sorted(set(int(h) for h in heads)))
        key = ("restrict_heads", heads)  # cached: a mixed plan splits on every call
        if key not in self._device:
            keep = torch.zeros(self.num_heads, dtype=torch.bool)
            keep[torch.as_tensor(heads, dtype=torch.long)] = True
            self._device[key] = self._with_work(keep[self.work[:, 0].long()])
        return self._device[key]

    def with_precision(self, precision: str | Sequence[str]) -> "SparsePlan":
        """The same plan (the same work) with other precisions: one of :data:`PRECISIONS`, or one per head."""
        precision = _as_precision(precision, self.num_heads)
        return self if precision == self.precision else _with_precision(self, precision)

    def _with_work(self, rows: torch.Tensor) -> "SparsePlan":
        return SparsePlan(self.specs, self.layout, self.tile_size, self.work[rows].contiguous(), self.head_order,
                          self.tile_lengths, self.precision)

    # Oracle -----------------------------------------------------------------------------
    def mask_rows(self, head: int, query_tokens: torch.Tensor) -> torch.Tensor:
        """Rows of head ``head``'s dense mask for the given caller query tokens: ``(len, N)`` bool.

        Built from the mode's tile rule (not from the kernel's key lists), so large layouts can be
        checked on sampled rows.
        """
        order = TOKEN_MAJOR if self.specs[head].reordered else FRAME_MAJOR
        tiles = self.layout.tile_of_token(order, self.tile_size)
        return self.tile_mask(head)[tiles[query_tokens][:, None], tiles[None, :]]

    def dense_mask(self, text_lengths: torch.Tensor | Sequence[int] | None = None) -> torch.Tensor:
        """The plan as a token-level boolean mask in the caller's order.

        Returns ``(H, N, N)``, or ``(B, H, N, N)`` when ``text_lengths`` (valid text tokens per
        batch item; text keys past them are masked) is given. SKIP heads are all False.
        For tests and small sizes only: it is N x N.
        """
        n = self.num_tokens
        if n > 16384:
            raise ValueError(f"dense_mask() is N x N; refusing N={n} > 16384 (it is a test oracle; see mask_rows)")
        masks = [self.mask_rows(h, torch.arange(n)) for h in range(self.num_heads)]
        mask = torch.stack(masks)
        if text_lengths is None:
            return mask
        return mask[None] & self.valid_keys(text_lengths)[:, None, None, :]

    def valid_keys(self, text_lengths: torch.Tensor | Sequence[int]) -> torch.Tensor:
        """``(B, N)`` bool: the keys batch item ``b`` may attend, text keys past ``text_lengths[b]`` masked."""
        text_lengths = torch.as_tensor(text_lengths).cpu().reshape(-1)
        key_ok = torch.ones(len(text_lengths), self.num_tokens, dtype=torch.bool)
        text_pos = torch.arange(self.layout.text_tokens)
        key_ok[:, self.layout.text_start : self.layout.text_start + self.layout.text_tokens] = (
            text_pos[None, :] < text_lengths[:, None]
        )
        return key_ok

    # Cost -------------------------------------------------------------------------------
    def head_density(self) -> torch.Tensor:
        """Fraction of (query, key) token pairs each head computes, ``(H,)`` float64."""
        return torch.tensor([spec_density(s, self.layout, self.tile_size)[0] for s in self.specs], dtype=torch.float64)

    def head_tile_density(self) -> torch.Tensor:
        """Fraction of (query tile, key tile) pairs each head computes, ``(H,)`` float64."""
        return torch.tensor([spec_density(s, self.layout, self.tile_size)[1] for s in self.specs], dtype=torch.float64)

    @property
    def density(self) -> float:
        """Fraction of the dense attention FLOPs this plan computes (all heads)."""
        return float(self.head_density().mean())

    @property
    def tile_density(self) -> float:
        return float(self.head_tile_density().mean())

    def flops(self, head_dim: int, batch: int = 1) -> int:
        """Attention FLOPs computed (4 * D per query-key pair: QK^T and PV)."""
        pairs = round(float(self.head_density().sum()) * self.num_tokens**2)
        return pairs * 4 * head_dim * batch

    def dense_flops(self, head_dim: int, batch: int = 1) -> int:
        return self.num_heads * self.num_tokens**2 * 4 * head_dim * batch

    def summary(self) -> str:
        counts = {}
        for spec in self.specs:
            counts[spec.mode.name] = counts.get(spec.mode.name, 0) + 1
        modes = ", ".join(f"{k} x{v}" for k, v in counts.items())
        fp8 = f", {len(self.fp8_heads)} in fp8" if self.fp8_heads else ""
        return (
            f"SparsePlan({self.num_heads} heads: {modes}{fp8}; {self.layout}; tile {self.tile_size}; "
            f"density {self.density:.3f}, tile density {self.tile_density:.3f})"
        )

    __str__ = summary


def build_plan(
    specs: Sequence[ModeSpec | Mode | str], layout: TokenLayout, tile_size: int = 128, *,
    precision: str | Sequence[str] = "native",
) -> SparsePlan:
    """Plan for one attention call: one spec per head (a bare mode means its default knob).

    ``precision``: one of :data:`PRECISIONS` for every head, or one per head.
    """
    specs = tuple(_as_spec(s) for s in specs)
    if not specs:
        raise ValueError("build_plan needs at least one head spec")
    precision = _as_precision(precision, len(specs))
    if not isinstance(layout, TokenLayout):
        raise TypeError(f"layout must be a TokenLayout, got {type(layout).__name__}")
    if not isinstance(tile_size, int) or tile_size < MIN_TILE_SIZE or tile_size & (tile_size - 1):
        raise ValueError(f"tile_size must be a power of two >= {MIN_TILE_SIZE}, got {tile_size!r}")
    plan = _build_plan(specs, layout, tile_size)
    return plan if precision == plan.precision else _with_precision(plan, precision)


def _as_precision(precision, heads: int) -> tuple[str, ...]:
    per_head = (precision,) * heads if isinstance(precision, str) else tuple(precision)
    if len(per_head) != heads:
        raise ValueError(f"precision needs one entry per head ({heads}), got {len(per_head)}")
    bad = sorted({p for p in per_head if p not in PRECISIONS}, key=str)
    if bad:
        raise ValueError(f"unknown precision {bad[0]!r}; choose one of {PRECISIONS} (per head or for all heads)")
    return per_head


@functools.lru_cache(maxsize=1024)
def _with_precision(plan: SparsePlan, precision: tuple[str, ...]) -> SparsePlan:
    """``plan`` with other precisions, cached like the plans themselves (the tile lists are shared)."""
    return SparsePlan(plan.specs, plan.layout, plan.tile_size, plan.work, plan.head_order, plan.tile_lengths, precision)


def _as_spec(spec) -> ModeSpec:
    if isinstance(spec, ModeSpec):
        return spec
    mode = Mode.parse(spec)
    defaults = {
        Mode.FULL: ModeSpec.full,
        Mode.SKIP: ModeSpec.skip,
        Mode.DIAGONAL: ModeSpec.diagonal,
        Mode.MULTI_DIAGONAL: ModeSpec.multi_diagonal,
        Mode.VERTICAL_STRIPE: ModeSpec.vertical_stripe,
    }
    return defaults[mode]()


@functools.lru_cache(maxsize=1024)
def _build_plan(specs: tuple[ModeSpec, ...], layout: TokenLayout, tile_size: int) -> SparsePlan:
    pool = _pool(layout, tile_size)
    rows = [pool.spec_rows(s) for s in specs]  # built once per distinct spec, whatever the layer
    heads, nt = len(specs), layout.num_tiles(tile_size)
    work = torch.stack(
        [
            torch.arange(heads, dtype=torch.int32).repeat_interleave(nt),
            torch.arange(nt, dtype=torch.int32).repeat(heads),
            torch.cat([r.starts for r in rows]),
            torch.cat([r.n_full for r in rows]),
            torch.cat([r.n_total for r in rows]),
        ],
        dim=1,
    )
    # Heavy query tiles first (dense text rows, FULL heads) so they form no tail at the end of
    # the launch, but only by coarse weight class: within a class the order stays head-major,
    # so the programs in flight read one head's K/V and share it in L2. (A strict
    # longest-first sort interleaves every head's band-edge rows and thrashes L2.)
    weight_class = work[:, 4].long() * _WEIGHT_CLASSES // (int(work[:, 4].max()) + 1)
    work = work[torch.argsort(weight_class, descending=True, stable=True)].contiguous()
    head_order = torch.tensor([TOKEN_MAJOR if s.reordered else FRAME_MAJOR for s in specs], dtype=torch.int32)
    return SparsePlan(specs, layout, tile_size, work, head_order, layout.tile_lengths(tile_size))
