"""Turn per-head scores into a mode map: the paper's rule, or the least error under a FLOP budget.

Paper's rule (Eq. 2, Algorithm 1), per head: ``L_c = e_c + lambda * d_c`` for every sparse
candidate ``c`` (``d`` its density, the paper's ``1 - S``); the head takes ``argmin L`` unless
no ``L_c`` is under ``epsilon``, then FULL. The scores' errors are fractions of the layer's
output energy (:mod:`.scoring`), which shrink as a layer has more heads, so the rule reads
them in *head units*, ``e = H * err``: the error as a fraction of an average head's share
of the layer output. A threshold then means the same in a 12-head and a 48-head model, and
for SKIP ``e`` is simply the head's share relative to the average head.

``lambda = 0.5`` is the paper's default. The paper's ``epsilon = 1`` is in its own units
(raw MSE of each model's attention output) and does not carry over. Our default is
``epsilon = lambda``: FULL is itself a candidate with ``e = 0`` and ``d = 1``, so its loss is
exactly ``lambda``, and with ``epsilon = lambda`` the rule becomes "the argmin over all five
modes, FULL included": a head goes sparse only when the error it adds is worth less than
the FLOPs it saves at the same exchange rate (``e < lambda * (1 - d)``). Larger ``epsilon``
accepts worse heads (the paper's sweep, Table 3, trades PSNR for speed the same way).
With ``metric="mse"`` the errors are the paper's own and its ``epsilon = 1`` is kept.

Budget mode: the least total error with the mean attention density (over heads, layers and
steps, dense warm-up steps counted dense) at or under a target, a multiple-choice knapsack
(:func:`solve_mckp`).

Dense steps: ``dense_warmup_steps`` (or ``dense_warmup_fraction`` of the schedule, rounded up)
at the start, ``dense_last_steps`` at the end. The last ones become a step range of the map whose
heads are all FULL (the range is split off the scores' last one if needed), which runs the
stock attention. Few-step checkpoints (4-8 steps) are solved the same way, step ranges keyed by
the step index of the short schedule.

Precision: with ``precision="fp8"``, every head of the sparse steps whose FP8 attention error,
measured at calibration (:attr:`.ScoreSet.fp8_errors`), is at most ``fp8_max_error`` computes in FP8;
the others, the dense layers and the dense steps stay native. FP8 changes the speed of a FLOP,
not the FLOPs, so the budget is counted in attention FLOPs either way.

Two experts (Wan2.2 A14B): the scores of each (``{"transformer": ..., "transformer_2": ...}``, as
:func:`~.runner.calibrate` returns them) cover the steps that expert ran (``expert_steps`` in
their metadata). The budget is solved jointly: every (range, layer, head) of either expert weighs
the steps it runs, so the target holds over the whole run; the paper's rule solves each head on
its own. The result's map is ``transformer``'s with ``transformer_2``'s nested in it. The end-to-end speedup is predicted with Amdahl's law from the share
of a dense forward spent in attention (DESIGN §6, measured on one H100 with cuDNN).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from collections.abc import Mapping
from typing import Any, Sequence

import numpy as np
import torch

from ..config import FAMILIES, SparseVDiTConfig
from ..logs import get_logger
from ..modes import Mode
from ..plan import PRECISIONS
from .candidates import Candidate
from .stripes import tile_positions

__all__ = [
    "DEFAULT_LAMBDA",
    "ATTENTION_SHARE",
    "default_epsilon",
    "default_attention_share",
    "rule_units",
    "paper_choice",
    "solve_mckp",
    "solve_paper",
    "split_at_step",
    "solve_budget",
    "solve_choices",
    "range_steps",
    "dense_step_counts",
    "SearchResult",
    "DEFAULT_FP8_MAX_ERROR",
    "check_precision_args",
]

logger = get_logger(__name__)

DEFAULT_LAMBDA = 0.5

# Largest relative L2 error of a head's dense FP8 attention (against exact attention) that still runs
# in FP8. Measured on the CPU reference Wan (reference_models/wan: 3 step ranges x 6 layers x 6 heads,
# 2 calibration prompts, torch simulation): per-entry errors have median 0.0065, 90th percentile 0.030,
# max 0.086. On a 2x map and one held-out prompt, 0.05 keeps the tail (5% of entries) native and puts
# 100 of 108 heads in FP8, at 30.5 dB PSNR against the native map's video; every head in FP8 gives
# 27.5 dB, 0.02 (90 heads) 31.2 dB. Both are well above the sparse map's own 20.4 dB against dense.
DEFAULT_FP8_MAX_ERROR = 0.05

# Share of a dense transformer forward spent in attention (cuDNN SDPA, one H100, DESIGN §6).
ATTENTION_SHARE = {"wan-1.3b": 0.56, "wan-14b": 0.67, "cogvideox1.5": 0.72, "hunyuan_video": 0.85}


def default_epsilon(metric: str) -> float:
    """``lambda`` (0.5) in head units for the projected metric; the paper's 1 for its plain MSE."""
    return DEFAULT_LAMBDA if metric == "projected" else 1.0


def default_attention_share(family: str | None, base_model: str | None = None) -> float | None:
    """The measured share for a model family (Wan by size from ``base_model``), or None."""
    name = (base_model or "").lower()
    if family == "wan":
        return ATTENTION_SHARE["wan-14b" if "14b" in name else "wan-1.3b"]
    return {"cogvideox": ATTENTION_SHARE["cogvideox1.5"], "hunyuan_video": ATTENTION_SHARE["hunyuan_video"]}.get(family)


def rule_units(errors: torch.Tensor, metric: str, num_heads: int) -> torch.Tensor:
    """Scores' errors in the units the paper's rule reads (head units for ``projected``)."""
    return errors * num_heads if metric == "projected" else errors


def paper_choice(errors: torch.Tensor, densities: torch.Tensor, *, lam: float = DEFAULT_LAMBDA,
                 epsilon: float, full_index: int) -> torch.Tensor:
    """The paper's per-head rule on errors ``(..., C)`` in rule units: a candidate index per head."""
    loss = errors.double() + lam * densities.to(errors.device, torch.float64)
    loss[..., full_index] = math.inf  # FULL is the fallback, not a contestant
    best = loss.min(dim=-1)
    return torch.where(best.values < epsilon, best.indices, torch.full_like(best.indices, full_index))


def check_precision_args(precision: str, fp8_max_error: float) -> None:
    """Refuse an unknown precision or a threshold that is not a finite number >= 0."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {PRECISIONS}")
    if isinstance(fp8_max_error, bool) or not isinstance(fp8_max_error, (int, float)) or not 0 <= fp8_max_error < math.inf:
        raise ValueError(f"fp8_max_error must be a finite number >= 0 (0.05 = 5% relative L2 error), got {fp8_max_error!r}")


def _check_fp8_scores(experts: dict, precision: str, fp8_max_error: float) -> None:
    check_precision_args(precision, fp8_max_error)
    if precision != "fp8":
        return
    missing = [name for name, scores in experts.items() if scores.fp8_errors is None]
    if missing:
        raise ValueError(
            f"precision='fp8' needs the FP8 attention errors of the calibration, and the scores of {missing} have none "
            "(scores of an earlier version, or calibrated with fp8_calls=0): re-run the calibration "
            "(`sparse-vdit search ...`), or solve with precision='native'"
        )


def _fp8_heads(scores, eligible: torch.Tensor, precision: str, fp8_max_error: float) -> torch.Tensor | None:
    """Bool ``(R, L, H)``: the entries that run in FP8 (None: all native). ``eligible``: those of sparse steps
    and layers not kept dense; the others run as stock as the dense warm-up does."""
    if precision != "fp8":
        return None
    return eligible & (scores.fp8_errors <= fp8_max_error)


# Budget ------------------------------------------------------------------------------------
def solve_mckp(errors: torch.Tensor, costs: torch.Tensor, budget: float, weights: torch.Tensor | None = None,
               allowed: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """One candidate per item, least ``sum w*err`` with ``sum w*cost <= budget``.

    ``errors`` is ``(n, C)``, ``costs`` ``(n, C)`` or ``(C,)``, ``weights`` ``(n,)``, ``allowed``
    an optional boolean ``(n, C)``. First the Lagrangian relaxation, solved exactly: every
    item's lower convex hull of (cost, error) is walked in order of error removed per unit of
    cost, taking upgrades while they fit (optimal whenever the budget lands on a hull
    vertex). Then the leftover budget is filled greedily with the best-ratio upgrades that
    still fit, and single swaps (one head up, another down) are applied while one lowers
    the error. Returns the choice and ``{"error", "cost", "lower_bound"}``; ``lower_bound`` is
    the LP relaxation's optimum, so no choice has less error: it certifies the gap.
    """
    err = errors.double().numpy().copy()
    n, c = err.shape
    cost = np.broadcast_to(costs.double().numpy(), (n, c)).copy()
    w = np.ones(n) if weights is None else weights.double().numpy()
    if allowed is not None:
        err[~allowed.numpy()] = np.inf
        cost[~allowed.numpy()] = np.inf
    rows = np.arange(n)
    tol = 1e-12 * max(1.0, abs(budget))
    # start at the cheapest candidate, the least error among equally cheap ones
    choice = np.where(cost <= cost.min(1, keepdims=True), err, np.inf).argmin(1)
    used = float((w * cost[rows, choice]).sum())
    if used > budget + tol:
        raise ValueError(f"infeasible: even the cheapest candidates cost {used:.6g} > budget {budget:.6g}")

    upgrades = []  # (slope, item, to): lower hull edges; slopes strictly increase along an item's hull
    for i in range(n):
        cur = choice[i]
        while True:
            better = np.isfinite(err[i]) & (cost[i] > cost[i, cur]) & (err[i] < err[i, cur])
            if not better.any():
                break
            slope = np.full(c, np.inf)
            slope[better] = (err[i, better] - err[i, cur]) / (cost[i, better] - cost[i, cur])
            ties = np.flatnonzero(slope <= slope.min() + 1e-15 * abs(slope.min()))
            nxt = ties[cost[i, ties].argmax()]  # the farthest of collinear points
            upgrades.append((slope.min(), i, nxt))
            cur = nxt
    upgrades.sort(key=lambda u: u[0])

    lower = float((w * err[rows, choice]).sum())
    for _, i, to in upgrades:
        extra = w[i] * (cost[i, to] - cost[i, choice[i]])
        gain = w[i] * (err[i, to] - err[i, choice[i]])
        if used + extra > budget + tol:
            lower += (budget - used) / extra * gain  # the LP takes this upgrade in part
            break
        lower += gain
        choice[i], used = to, used + extra

    used = _fill(err, cost, w, choice, budget, used, tol)
    for _ in range(64):  # polish: an upgrade paid for by a downgrade elsewhere, while one helps
        if not _swap(err, cost, w, choice, budget, used, tol):
            break
        used = _fill(err, cost, w, choice, budget, float((w * cost[rows, choice]).sum()), tol)
    error = float((w * err[rows, choice]).sum())
    return torch.from_numpy(choice).long(), {"error": error, "cost": float(used), "lower_bound": min(lower, error)}


def _moves(err, cost, w, choice):
    rows = np.arange(len(choice))
    d_cost = w[:, None] * (cost - cost[rows, choice][:, None])
    d_err = w[:, None] * (err - err[rows, choice][:, None])
    return d_cost, d_err, np.isfinite(d_err) & np.isfinite(d_cost)


def _fill(err, cost, w, choice, budget, used, tol) -> float:
    """Spend leftover budget on the upgrades with the most error removed per unit of cost."""
    c = err.shape[1]
    while True:
        d_cost, d_err, finite = _moves(err, cost, w, choice)
        ok = finite & (d_err < 0) & (d_cost <= budget - used + tol)
        if not ok.any():
            return used
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(ok, np.where(d_cost > 0, d_err / d_cost, -np.inf), np.inf)
        i, to = divmod(int(ratio.argmin()), c)
        used += d_cost[i, to]
        choice[i] = to


def _swap(err, cost, w, choice, budget, used, tol, top: int = 256) -> bool:
    """Apply the best (upgrade i, downgrade j != i) pair that fits and lowers the error, if any."""
    c = err.shape[1]
    d_cost, d_err, finite = _moves(err, cost, w, choice)
    up = np.flatnonzero((finite & (d_err < 0) & (d_cost > budget - used + tol)).ravel())
    down = np.flatnonzero((finite & (d_cost < 0)).ravel())
    if not len(up) or not len(down):
        return False
    up = up[np.argsort(d_err.ravel()[up])[:top]]  # the largest possible gains first
    freed, raised, down_item = -d_cost.ravel()[down], d_err.ravel()[down], down // c
    best, move = -1e-15 * max(1.0, float(np.abs(err[np.isfinite(err)]).max())), None
    for flat in up:
        i = flat // c
        fits = (freed >= d_cost.ravel()[flat] - (budget - used) - tol) & (down_item != i)
        if fits.any():
            k = np.flatnonzero(fits)[raised[fits].argmin()]
            gain = d_err.ravel()[flat] + raised[k]
            if gain < best:
                best, move = gain, (i, flat % c, down_item[k], down[k] % c)
    if move is None:
        return False
    i, to, j, to_j = move
    choice[i], choice[j] = to, to_j
    return True


# Results -----------------------------------------------------------------------------------
@dataclass
class SearchResult:
    """A solved mode map with what it is predicted to cost and gain."""

    config: SparseVDiTConfig
    choices: torch.Tensor  # int64 (ranges, layers, heads): candidate index
    candidates: tuple[Candidate, ...]
    densities: torch.Tensor  # (C,)
    error: float  # mean per-head error of the choice (scores' units), step-weighted
    attention_density: float  # attention FLOPs vs dense, whole run, warm-up included
    attention_share: float | None
    kernel_efficiency: float
    settings: dict[str, Any] = field(default_factory=dict)
    # two experts: each one's result (its own choices, density over its own steps); this one is for
    # the whole run, its choices and candidates transformer's
    experts: dict[str, "SearchResult"] = field(default_factory=dict)

    @property
    def attention_speedup(self) -> float:
        """Predicted attention FLOP reduction (x)."""
        return 1.0 / self.attention_density if self.attention_density > 0 else math.inf

    @property
    def end_to_end_speedup(self) -> float | None:
        """Amdahl's law: ``1 / ((1 - share) + share * density / kernel_efficiency)``."""
        if self.attention_share is None:
            return None
        return 1.0 / ((1 - self.attention_share) + self.attention_share * self.attention_density / self.kernel_efficiency)

    def mode_counts(self) -> dict[str, int]:
        return {m.name: sum(int((self.choices == i).sum()) for i, c in enumerate(self.candidates) if c.mode is m) for m in Mode}

    def summary(self) -> str:
        total = self.choices.numel()
        lines = [f"Sparse-vDiT search ({self.settings.get('rule')}): {self.config!r}",
                 f"{'candidate':<44} {'heads':>6} {'share':>7} {'density':>8}"]
        for i, (cand, dens) in enumerate(zip(self.candidates, self.densities.tolist())):
            count = int((self.choices == i).sum())
            if count:
                lines.append(f"{str(cand):<44} {count:>6} {count / total:>7.1%} {dens:>8.3f}")
        e2e = self.end_to_end_speedup
        lines.append(f"attention density {self.attention_density:.3f} ({self.attention_speedup:.2f}x fewer attention FLOPs)"
                     + (f"; end-to-end {e2e:.2f}x at attention share {self.attention_share:.2f}, "
                        f"kernel efficiency {self.kernel_efficiency:.2f}" if e2e else ""))
        lines.append(f"mean head error {self.error:.3e}"
                     + (f" (no better than {self.settings['lower_bound']:.3e} exists)" if "lower_bound" in self.settings else ""))
        for name, expert in self.experts.items():
            lo, hi = expert.settings["expert_steps"]
            lines.append(f"  {name} (steps {lo} to {hi - 1}): attention density {expert.attention_density:.3f}, "
                         f"mean head error {expert.error:.3e}, {expert.config!r}")
        return "\n".join(lines)

    __str__ = summary


def dense_step_counts(num_steps: int, dense_warmup_steps: int = 0, dense_warmup_fraction: float | None = None,
                      dense_last_steps: int = 0) -> tuple[int, int]:
    """``(warm-up steps, last steps)`` that run dense in a schedule of ``num_steps``, checked.

    ``dense_warmup_fraction`` (instead of ``dense_warmup_steps``) is a share of the schedule, rounded
    up: 0.25 of 4 steps is 1, of 50 steps 13.
    """
    if dense_warmup_fraction is not None:
        if dense_warmup_steps:
            raise ValueError("give dense_warmup_steps or dense_warmup_fraction, not both")
        if not 0 <= dense_warmup_fraction < 1:  # also refuses nan
            raise ValueError(f"dense_warmup_fraction must be in [0, 1) (0.25 = the first quarter of the steps), "
                             f"got {dense_warmup_fraction}")
        dense_warmup_steps = math.ceil(dense_warmup_fraction * num_steps - 1e-9)
    for name, value in (("dense_warmup_steps", dense_warmup_steps), ("dense_last_steps", dense_last_steps)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
    if dense_warmup_steps + dense_last_steps > num_steps:
        raise ValueError(f"{dense_warmup_steps} dense warm-up steps and {dense_last_steps} dense last steps are more "
                         f"dense steps than the schedule's {num_steps} steps")
    return dense_warmup_steps, dense_last_steps


def _expert_window(scores, num_steps: int) -> tuple[int, int]:
    """The steps ``[lo, hi)`` the scored transformer ran: all of them, or one expert's share."""
    window = scores.metadata.get("expert_steps")
    if window is None:
        return 0, num_steps
    lo, hi = window
    if not 0 <= lo < hi <= num_steps:
        raise ValueError(f"the scores' expert_steps {window} do not fit a schedule of {num_steps} steps")
    return lo, hi


def _step_weights(scores, num_steps: int | None, warmup: int, last: int) -> tuple[torch.Tensor, float]:
    """Sparse steps in each step range, and the dense steps, of the steps this transformer runs."""
    if num_steps is None:
        if scores.num_ranges > 1 or warmup or last or "expert_steps" in scores.metadata:
            raise ValueError("pass num_inference_steps (or keep it in the scores' metadata) to weigh step ranges "
                             "and dense steps")
        return torch.ones(1, dtype=torch.float64), 0.0
    lo, hi = _expert_window(scores, num_steps)
    first, stop = max(lo, warmup), min(hi, num_steps - last)  # the sparse steps
    steps = []
    for start, end in scores.step_ranges:
        end = hi if end < 0 else min(end, hi)
        steps.append(max(0, min(end, stop) - max(start, first)))
    return torch.tensor(steps, dtype=torch.float64), float(hi - lo - sum(steps))


def range_steps(scores, *, dense_warmup_steps: int = 0, dense_last_steps: int = 0,
                num_inference_steps: int | None = None) -> torch.Tensor:
    """float64 ``(R,)``: the sparse (not dense) steps each of the scores' step ranges covers."""
    num_steps = num_inference_steps if num_inference_steps is not None else scores.metadata.get("num_inference_steps")
    return _step_weights(scores, num_steps, dense_warmup_steps, dense_last_steps)[0]


def split_at_step(scores, step: int):
    """The scores with a step-range boundary at ``step``: the range holding it split in two, same scores
    (the same object when ``step`` already starts a range)."""
    ranges = scores.step_ranges
    if any(start == step for start, _ in ranges):
        return scores
    r = next(i for i, (start, end) in enumerate(ranges) if start < step and (end < 0 or step < end))
    new_ranges = [*ranges[:r], [ranges[r][0], step], [step, ranges[r][1]], *ranges[r + 1:]]
    return scores.with_ranges([*range(r + 1), *range(r, len(ranges))], new_ranges)


def _prepare(scores, dense_layers, warmup, last, num_steps):
    """The scores (split for the dense last steps), sparse steps per range, dense steps, allowed candidates."""
    num_steps = num_steps if num_steps is not None else scores.metadata.get("num_inference_steps")
    if num_steps is not None and last:
        scores = split_at_step(scores, num_steps - last)
    steps, dense_steps = _step_weights(scores, num_steps, warmup, last)
    sparse = steps > 0
    if (scores.counts[sparse] == 0).any():
        missing = [[r, layer] for r, layer in (scores.counts == 0).nonzero().tolist() if sparse[r]]
        meta = scores.metadata
        raise ValueError(f"no scored calls for (step range, layer) {missing[:8]}{' ...' if len(missing) > 8 else ''}"
                         f"; the scores left {meta.get('dense_warmup_steps', 0)} warm-up and "
                         f"{meta.get('dense_last_steps', 0)} last steps dense unscored: solve with at least those")
    allowed = torch.ones(scores.errors.shape, dtype=torch.bool)
    for layer in dense_layers:
        allowed[:, layer] = False
    allowed[~sparse] = False  # ranges of dense steps only (warm-up, last steps, the other expert's): FULL
    allowed[..., scores.full_index] = True
    return scores, steps, dense_steps, allowed, num_steps


def _build(scores, choice, steps, dense_steps, rule_settings, *, warmup, last, num_steps, attention_share,
           kernel_efficiency, family, target_modules, transformer_class, base_model, lower_bound=None,
           fp8_heads: torch.Tensor | None = None) -> SearchResult:
    meta = scores.metadata
    family = family or meta.get("family")
    target_modules = target_modules or meta.get("target_modules")
    if family not in FAMILIES or not target_modules:
        raise ValueError("a mode map needs the model family and the target modules' names: pass family= and "
                         "target_modules= (or keep them in the scores' metadata)")
    base_model = base_model or meta.get("base_model")
    if attention_share is None:
        attention_share = default_attention_share(family, base_model)

    counts = [c.stripes for c in scores.candidates if c.mode is Mode.VERTICAL_STRIPE]
    sink = next((c.sink_frames for c in scores.candidates if c.mode is Mode.VERTICAL_STRIPE), 1)
    tiles = scores.stripe_tiles(max(counts), sink) if counts else None
    nvt = scores.layout.video_tiles(scores.tile_size)
    specs = []
    for r in range(scores.num_ranges):
        specs.append([])
        for layer in range(scores.num_layers):
            row = []
            for h in range(scores.num_heads):
                cand = scores.candidates[int(choice[r, layer, h])]
                stripes = ()
                if cand.mode is Mode.VERTICAL_STRIPE:
                    stripes = tile_positions(sorted(tiles[r, layer, h, : cand.stripes].tolist()), nvt)
                row.append(cand.spec(stripes))
            specs[-1].append(row)

    _warn_skipped_layers(scores, choice)
    # every target layer has the same heads, tokens and head size (HunyuanVideo's dual- and
    # single-stream blocks included), so a head's attention FLOPs are its density times a constant
    dens = scores.densities[choice]  # (R, L, H)
    per_range = dens.mean(dim=(1, 2))
    density = float((dense_steps + (steps * per_range).sum()) / (dense_steps + steps.sum()))  # over its own steps
    err = scores.errors.gather(3, choice[..., None])[..., 0].mean(dim=(1, 2))
    error = float((steps * err).sum() / steps.sum().clamp(min=1e-300))
    result = SearchResult(None, choice, scores.candidates, scores.densities, error, density, attention_share,
                          kernel_efficiency, dict(rule_settings))
    if lower_bound is not None:
        result.settings["lower_bound"] = lower_bound
    e2e = result.end_to_end_speedup
    calibration = {k: v for k, v in meta.items() if k not in ("family", "target_modules", "transformer_class", "base_model")}
    calibration.update({
        "scores": {"metric": scores.metric, "tile_size": scores.tile_size, "sample_tiles": scores.sample_tiles,
                   "layout": str(scores.layout), "candidates": [str(c) for c in scores.candidates],
                   "calls_per_layer": [int(scores.counts.min()), int(scores.counts.max())],
                   "mean_error": error},
        "solver": {**result.settings, "dense_warmup_steps": warmup, "dense_last_steps": last,
                   "num_inference_steps": num_steps},
        "predicted": {"attention_density": density,
                      "attention_flop_speedup": result.attention_speedup if density > 0 else None,
                      "end_to_end_speedup": e2e, "attention_share": attention_share,
                      "kernel_efficiency": kernel_efficiency},
    })
    result.config = SparseVDiTConfig.from_specs(
        specs if scores.num_ranges > 1 else specs[0],
        family=family,
        transformer_class=transformer_class or meta.get("transformer_class"),
        target_modules=target_modules,
        tile_size=scores.tile_size,
        step_ranges=scores.step_ranges,
        dense_warmup_steps=warmup,
        base_model=base_model,
        calibration=calibration,
    )
    if fp8_heads is not None:
        result.config = result.config.with_precision("fp8", heads=fp8_heads)
    return result


def _warn_skipped_layers(scores, choice) -> None:
    """A layer whose every head is SKIP outputs zeros: legal when the scores say it adds nothing, never silent."""
    skip = [i for i, cand in enumerate(scores.candidates) if cand.mode is Mode.SKIP]
    if not skip:
        return
    skipped = torch.isin(choice, torch.tensor(skip)).all(dim=2).nonzero().tolist()  # (range, layer) pairs
    if skipped:
        names = scores.metadata.get("target_modules") or []
        where = ", ".join(f"{names[l] if l < len(names) else f'layer {l}'}" + (f" (step range {r})" if scores.num_ranges > 1 else "")
                          for r, l in skipped[:8])
        logger.warning(f"every head of {len(skipped)} layer(s) is SKIP, so their attention outputs zeros: {where}"
                       f"{' ...' if len(skipped) > 8 else ''}. Keep them dense with dense_layers= if that is not wanted.")


def _experts_of(scores) -> dict:
    """``{"transformer": scores}``, or the scores of two experts as given, checked."""
    if not isinstance(scores, Mapping):
        return {"transformer": scores}
    if sorted(scores) != ["transformer", "transformer_2"]:
        raise ValueError(f"scores of several transformers must be keyed 'transformer' and 'transformer_2' (the "
                         f"pipeline's experts), got {sorted(scores)}")
    return {name: scores[name] for name in ("transformer", "transformer_2")}


def _prepared(experts: dict, dense_layers, num_inference_steps, warmup, fraction, last) -> dict:
    """Each expert's scores prepared for solving (see :func:`_prepare`), with its step window in ``settings``."""
    out = {}
    for name, scores in experts.items():
        num_steps = num_inference_steps if num_inference_steps is not None else scores.metadata.get("num_inference_steps")
        if num_steps is not None:
            w, l = dense_step_counts(num_steps, warmup, fraction, last)
        elif fraction is not None:
            raise ValueError("dense_warmup_fraction needs num_inference_steps (or the scores' metadata keeping it)")
        else:
            w, l = warmup, last
        scores, steps, dense_steps, allowed, num_steps = _prepare(scores, dense_layers, w, l, num_steps)
        window = list(_expert_window(scores, num_steps)) if num_steps is not None else [0, 1]
        out[name] = dict(scores=scores, steps=steps, dense_steps=dense_steps, allowed=allowed, num_steps=num_steps,
                         warmup=w, last=l, window=window)
    if len(out) > 1:
        windows = sorted(p["window"] for p in out.values())
        num_steps = {p["num_steps"] for p in out.values()}
        if len(num_steps) != 1 or windows[0][0] != 0 or windows[0][1] != windows[1][0] or windows[1][1] != max(num_steps):
            raise ValueError(f"the two experts' scores must cover one schedule between them, expert after expert; "
                             f"they cover steps {windows} of {sorted(num_steps)}: calibrate both in one run")
    return out


def _combine(results: dict, prepared: dict, *, error: float | None = None) -> SearchResult:
    """One result for the run: ``transformer``'s, with ``transformer_2``'s map nested and whole-run figures."""
    if len(results) == 1:
        return results["transformer"]
    high, low = results["transformer"], results["transformer_2"]
    own = {name: float(p["steps"].sum() + p["dense_steps"]) for name, p in prepared.items()}
    sparse = {name: float(p["steps"].sum()) for name, p in prepared.items()}
    density = sum(own[n] * results[n].attention_density for n in results) / sum(own.values())
    if error is None:
        error = sum(sparse[n] * results[n].error for n in results) / max(sum(sparse.values()), 1e-300)
    config = copy.copy(high.config)
    config.transformer_2 = low.config
    config.calibration = {**high.config.calibration}
    config.validate()
    result = SearchResult(config, high.choices, high.candidates, high.densities, error, density, high.attention_share,
                          high.kernel_efficiency, {k: v for k, v in high.settings.items() if k != "expert_steps"},
                          experts=dict(results))
    config.calibration["predicted"] = {
        **config.calibration.get("predicted", {}), "attention_density": density,
        "attention_flop_speedup": result.attention_speedup if density > 0 else None,
        "end_to_end_speedup": result.end_to_end_speedup,
        "experts": {n: {"steps": results[n].settings["expert_steps"], "attention_density": results[n].attention_density}
                    for n in results},
    }
    return result


def solve_paper(scores, *, lam: float = DEFAULT_LAMBDA, epsilon: float | None = None, dense_warmup_steps: int = 0,
                dense_warmup_fraction: float | None = None, dense_last_steps: int = 0,
                num_inference_steps: int | None = None, dense_layers: Sequence[int] = (),
                attention_share: float | None = None, kernel_efficiency: float = 1.0, family: str | None = None,
                target_modules: Sequence[str] | None = None, transformer_class: str | None = None,
                base_model: str | None = None, precision: str = "native",
                fp8_max_error: float = DEFAULT_FP8_MAX_ERROR) -> SearchResult:
    """Every head by the paper's rule (module docstring) on the averaged scores (of one or two experts).

    ``precision``, ``fp8_max_error``: as for :func:`solve_budget`.
    """
    experts = _experts_of(scores)
    _check_fp8_scores(experts, precision, fp8_max_error)
    prepared = _prepared(experts, dense_layers, num_inference_steps, dense_warmup_steps,
                         dense_warmup_fraction, dense_last_steps)
    results = {}
    for name, p in prepared.items():
        scores = p["scores"]
        eps = default_epsilon(scores.metric) if epsilon is None else float(epsilon)
        units = rule_units(scores.errors, scores.metric, scores.num_heads).masked_fill(~p["allowed"], math.inf)
        choice = paper_choice(units, scores.densities, lam=lam, epsilon=eps, full_index=scores.full_index)
        settings = {"rule": "paper", "lambda": lam, "epsilon": eps, "dense_layers": list(dense_layers),
                    **_precision_settings(precision, fp8_max_error),
                    **({"expert_steps": p["window"]} if len(prepared) > 1 else {})}
        results[name] = _build(scores, choice, p["steps"], p["dense_steps"], settings, warmup=p["warmup"],
                               last=p["last"], num_steps=p["num_steps"], attention_share=attention_share,
                               kernel_efficiency=kernel_efficiency, family=family, target_modules=target_modules,
                               transformer_class=transformer_class, base_model=base_model,
                               fp8_heads=_fp8_heads(scores, _eligible(p, dense_layers), precision, fp8_max_error))
    return _combine(results, prepared)


def _precision_settings(precision: str, fp8_max_error: float) -> dict[str, Any]:
    """What the map's calibration["solver"] records of the precision."""
    return {"precision": precision, **({"fp8_max_error": float(fp8_max_error)} if precision == "fp8" else {})}


def _eligible(prepared: dict, dense_layers: Sequence[int]) -> torch.Tensor:
    """Bool ``(R, L, H)``: entries of sparse steps, outside the layers kept dense."""
    eligible = (prepared["steps"] > 0)[:, None, None].expand(prepared["scores"].errors.shape[:3]).clone()
    eligible[:, list(dense_layers)] = False
    return eligible


def _check_reachable(scores, target_density, dense_fraction, item_w, allowed) -> None:
    """Refuse a target below the sparsest sane map: every head at its sparsest pattern that is not SKIP.

    SKIP is for the heads the scores find negligible, never a way to buy budget: below this
    floor the only maps left skip heads because they must, and past a point whole layers
    output zeros. The error names the floor, so the user knows the best target there is.
    """
    computed = allowed.clone()
    computed[:, [i for i, cand in enumerate(scores.candidates) if cand.mode is Mode.SKIP]] = False
    cheapest = scores.densities.double().masked_fill(~computed, math.inf).min(dim=1).values
    floor = dense_fraction + float((item_w * cheapest).sum())
    if target_density < floor - 1e-12:
        raise ValueError(
            f"target density {target_density:.4g} ({1 / target_density:.3g}x fewer attention FLOPs) is out of reach: "
            f"the sparsest sane map has density {floor:.4g} ({1 / floor:.3g}x), every head at its sparsest candidate "
            "but SKIP (SKIP is for heads the scores find negligible)"
            + (f", {dense_fraction:.0%} of the steps dense" if dense_fraction else "")
            + f". Ask for at most {1 / floor:.3g}x (density >= {floor:.4g}), or score sparser candidates."
        )


def solve_budget(scores, *, target_density: float | None = None, target_speedup: float | None = None,
                 target_end_to_end: float | None = None, dense_warmup_steps: int = 0,
                 dense_warmup_fraction: float | None = None, dense_last_steps: int = 0,
                 num_inference_steps: int | None = None, dense_layers: Sequence[int] = (),
                 attention_share: float | None = None, kernel_efficiency: float = 1.0, family: str | None = None,
                 target_modules: Sequence[str] | None = None, transformer_class: str | None = None,
                 base_model: str | None = None, precision: str = "native",
                 fp8_max_error: float = DEFAULT_FP8_MAX_ERROR) -> SearchResult:
    """The least total error whose attention FLOPs meet one target (over both experts' steps, if two).

    ``target_density``: attention FLOPs as a fraction of dense over the whole run;
    ``target_speedup``: the attention FLOP reduction (``1 / density``);
    ``target_end_to_end``: an end-to-end speedup, turned into a density with Amdahl's law
    (``attention_share`` defaults to the family's measured share, ``kernel_efficiency`` to 1).
    ``precision="fp8"``: the heads of the sparse steps whose FP8 attention error (measured at
    calibration) is at most ``fp8_max_error`` compute in FP8, the others stay native; ``"native"``
    (default) keeps every head in the model's dtype. The target counts FLOPs either way.
    """
    if sum(t is not None for t in (target_density, target_speedup, target_end_to_end)) != 1:
        raise ValueError("give exactly one of target_density, target_speedup, target_end_to_end")
    experts = _experts_of(scores)
    _check_fp8_scores(experts, precision, fp8_max_error)
    meta = experts["transformer"].metadata
    if target_density is not None and not 0 < target_density <= 1:  # also refuses nan
        raise ValueError(f"target_density must be in (0, 1] (0.5 = half the attention FLOPs), got {target_density}")
    for name, value in (("target_speedup", target_speedup), ("target_end_to_end", target_end_to_end)):
        if value is not None and not 1 <= value < math.inf:
            raise ValueError(f"{name} must be a finite number >= 1 (2 = twice as fast), got {value}")
    if target_speedup is not None:
        target_density = 1.0 / target_speedup
    elif target_end_to_end is not None:
        share = attention_share if attention_share is not None else default_attention_share(
            family or meta.get("family"), base_model or meta.get("base_model"))
        if share is None:
            raise ValueError("target_end_to_end needs attention_share for this model")
        attention_share = share
        target_density = kernel_efficiency * (1.0 / target_end_to_end - (1.0 - share)) / share
        if target_density < 0:
            raise ValueError(f"an end-to-end {target_end_to_end}x is out of reach with attention at {share:.0%} of the "
                             f"forward: even free attention gives {1 / (1 - share):.2f}x")
    prepared = _prepared(experts, dense_layers, num_inference_steps, dense_warmup_steps, dense_warmup_fraction,
                         dense_last_steps)
    first = prepared["transformer"]["scores"]
    for p in prepared.values():
        if p["scores"].candidates != first.candidates or not torch.equal(p["scores"].densities, first.densities):
            raise ValueError("the two experts' scores must have the same candidates at the same densities: calibrate "
                             "both in one run")
    # item weight: the share of the run's attention FLOPs one (range, layer, head) stands for
    total = sum(float(p["steps"].sum() + p["dense_steps"]) for p in prepared.values())
    dense_fraction = sum(p["dense_steps"] for p in prepared.values()) / total
    if dense_fraction >= 1:
        raise ValueError("every step is a dense step (warm-up or last): there is nothing to make sparse")
    c = len(first.candidates)
    weights, errors, allowed = [], [], []
    for p in prepared.values():
        r, layers, heads, _ = p["scores"].errors.shape
        weights.append((p["steps"] / total / (layers * heads))[:, None, None].expand(r, layers, heads).reshape(-1))
        # with a measured sensitivity, each entry's error counts by how much it moves the final latents
        errors.append(p["scores"].weighted_errors.reshape(-1, c))
        allowed.append(p["allowed"].reshape(-1, c))
    item_w, errors, allowed = torch.cat(weights), torch.cat(errors), torch.cat(allowed)
    budget = target_density - dense_fraction
    if budget < 0:
        what = "warm-up and last steps" if any(p["last"] for p in prepared.values()) else "warm-up"
        raise ValueError(f"the dense {what} alone costs density {dense_fraction:.3f} > target {target_density:.3f}")
    _check_reachable(first, target_density, dense_fraction, item_w, allowed)
    # items of dense steps only (weight 0) stay FULL; the knapsack takes the others
    live = item_w > 0
    choice = torch.full(item_w.shape, first.full_index, dtype=torch.long)
    choice[live], info = solve_mckp(errors[live], first.densities, budget, item_w[live], allowed[live])
    norm = float(item_w.sum())
    settings = {"rule": "budget", "target_density": target_density, "target_speedup": target_speedup,
                "target_end_to_end": target_end_to_end, "dense_layers": list(dense_layers),
                "sensitivity": first.metadata.get("sensitivity", {}).get("groups"),
                **_precision_settings(precision, fp8_max_error)}
    results, offset = {}, 0
    for name, p in prepared.items():
        shape = p["scores"].errors.shape[:3]
        mine, offset = choice[offset: offset + shape.numel()].reshape(shape), offset + shape.numel()
        extra = {"expert_steps": p["window"]} if len(prepared) > 1 else {}
        results[name] = _build(p["scores"], mine, p["steps"], p["dense_steps"], {**settings, **extra},
                               warmup=p["warmup"], last=p["last"], num_steps=p["num_steps"],
                               attention_share=attention_share, kernel_efficiency=kernel_efficiency, family=family,
                               target_modules=target_modules, transformer_class=transformer_class,
                               base_model=base_model, lower_bound=info["lower_bound"] / norm,
                               fp8_heads=_fp8_heads(p["scores"], _eligible(p, dense_layers), precision, fp8_max_error))
    return _combine(results, prepared, error=info["error"] / norm)


def solve_choices(scores, choices: torch.Tensor, *, dense_warmup_steps: int = 0, dense_last_steps: int = 0,
                  num_inference_steps: int | None = None) -> SearchResult:
    """The map of given candidate indices, int ``(ranges, layers, heads)``: for probes and hand-made maps."""
    choices = torch.as_tensor(choices, dtype=torch.int64)
    if tuple(choices.shape) != tuple(scores.errors.shape[:3]):
        raise ValueError(f"choices must be shaped (ranges, layers, heads) = {tuple(scores.errors.shape[:3])}, "
                         f"got {tuple(choices.shape)}")
    if (choices < 0).any() or (choices >= len(scores.candidates)).any():
        raise ValueError(f"choices must index the {len(scores.candidates)} candidates")
    num_steps = num_inference_steps if num_inference_steps is not None else scores.metadata.get("num_inference_steps")
    if dense_last_steps and num_steps is not None and split_at_step(scores, num_steps - dense_last_steps) is not scores:
        raise ValueError(f"with dense_last_steps={dense_last_steps}, the scores need a step range starting at step "
                         f"{num_steps - dense_last_steps} (choices are per range): split them with split_at_step")
    scores, steps, dense_steps, _, num_steps = _prepare(scores, (), dense_warmup_steps, dense_last_steps, num_steps)
    return _build(scores, choices, steps, dense_steps, {"rule": "given"}, warmup=dense_warmup_steps, last=dense_last_steps,
                  num_steps=num_steps, attention_share=None, kernel_efficiency=1.0, family=None, target_modules=None,
                  transformer_class=None, base_model=None)
