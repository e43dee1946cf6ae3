"""Head balance across context-parallel ranks: which rank attends which heads of a layer.

Under Ulysses (diffusers' ``ContextParallelConfig(ulysses_degree=W)``) rank ``r`` attends the
``r``-th contiguous slice of ``H / W`` heads over the whole sequence. A mode map's heads cost
very different amounts (FULL vs a thin band vs SKIP), and the slowest rank sets the pace of
every layer. Balancing permutes the heads of a layer before diffusers' all-to-all (and undoes
it after), so that each rank's slice costs about the same: exact (it only moves heads), and
cheap (one gather of q, k, v and of the output per layer).

A head's cost is what the block-sparse kernel computes for it: its (query tile, key tile)
pairs at the call's layout (:func:`~.plan.spec_density`); SKIP costs nothing. The assignment is
greedy longest-first with ``H / W`` heads per rank, deterministic, so every rank derives the
same permutation from the map alone.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

from .layout import TokenLayout
from .modes import ModeSpec
from .plan import spec_density

__all__ = ["RankShares", "head_costs", "balanced_head_order", "rank_shares"]


def head_costs(specs: Sequence[ModeSpec], layout: TokenLayout, tile_size: int) -> tuple[float, ...]:
    """Each head's fraction of the dense layer's tile pairs (1.0 for FULL, 0.0 for SKIP)."""
    return tuple(spec_density(spec, layout, tile_size)[1] for spec in specs)


@functools.lru_cache(maxsize=4096)
def balanced_head_order(
    specs: tuple[ModeSpec, ...], layout: TokenLayout, tile_size: int, world_size: int
) -> tuple[int, ...] | None:
    """Heads in rank order (rank ``r`` attends entries ``r*H/W`` to ``(r+1)*H/W``), or None to keep the model's order.

    None when the model's own contiguous slices are already as even as the balanced ones, so
    an even map costs no extra copies.
    """
    _check_divisible(len(specs), world_size)
    costs = head_costs(specs, layout, tile_size)
    per_rank = len(specs) // world_size
    ranks: list[list[int]] = [[] for _ in range(world_size)]
    loads = [0.0] * world_size
    for head in sorted(range(len(specs)), key=lambda h: (-costs[h], h)):  # longest first
        rank = min((r for r in range(world_size) if len(ranks[r]) < per_rank), key=lambda r: (loads[r], r))
        ranks[rank].append(head)
        loads[rank] += costs[head]
    order = tuple(h for heads in ranks for h in sorted(heads))
    if max(_loads(costs, order, world_size)) >= max(_loads(costs, tuple(range(len(specs))), world_size)):
        return None
    return order


@dataclass(frozen=True)
class RankShares:
    """Each rank's share of a map's attention work under Ulysses, summed over the layers."""

    world_size: int
    balanced: bool
    shares: tuple[float, ...]  # fraction of the total work per rank (sums to 1)

    @property
    def imbalance(self) -> float:
        """Slowest rank's work over the mean (1.0 is perfectly even; W when one rank does everything)."""
        return max(self.shares) * self.world_size if any(self.shares) else 1.0

    def __str__(self) -> str:
        shares = " / ".join(f"{100 * s:.1f}%" for s in self.shares)
        return f"{shares} (heads {'balanced' if self.balanced else 'in model order'}; slowest rank {self.imbalance:.2f}x the mean)"


def rank_shares(
    config, layout: TokenLayout, world_size: int, *, step: int | None = None, balance: bool = True
) -> RankShares:
    """How a :class:`~.config.SparseVDiTConfig`'s attention work splits over ``world_size`` Ulysses ranks.

    ``layout`` is the call's token layout (e.g. ``TokenLayout(21, 45, 80)`` for Wan2.1 at 720p),
    ``step`` a denoising step (its step range's modes are used; dense warm-up steps split evenly
    anyway), ``balance`` whether heads are balanced as ``apply_sparse_vdit(..., balance_heads=True)`` does.
    """
    loads = [0.0] * world_size
    for layer in range(config.num_layers):
        specs = config.head_specs(layer, step)
        order = balanced_head_order(specs, layout, config.tile_size, world_size) if balance else None
        costs = head_costs(specs, layout, config.tile_size)
        for rank, load in enumerate(_loads(costs, order or tuple(range(len(specs))), world_size)):
            loads[rank] += load
    total = sum(loads)
    return RankShares(world_size, balance, tuple(load / total if total else 0.0 for load in loads))


def _loads(costs: Sequence[float], order: Sequence[int], world_size: int) -> list[float]:
    per_rank = len(order) // world_size
    return [sum(costs[h] for h in order[r * per_rank : (r + 1) * per_rank]) for r in range(world_size)]


def _check_divisible(num_heads: int, world_size: int) -> None:
    if world_size < 1 or num_heads % world_size:
        raise ValueError(
            f"Ulysses splits the {num_heads} attention heads of a layer evenly over ulysses_degree ranks; "
            f"{world_size} does not divide {num_heads}: choose a ulysses_degree that divides the head count"
        )
