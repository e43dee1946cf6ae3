"""How much each step range's and layer's attention error moves the final latents.

The scorer measures a head's error where it happens: the change of that layer's attention
output, as a fraction of its energy. What a user sees is the final video, and the final
latents answer to those local errors unevenly: a step whose block gates scale attention down,
or whose error the later steps wash out, matters less than its local error says; an early
step whose error every later step builds on matters more. The solver, summing local errors,
cannot know.

:func:`measure_sensitivity` measures it on the calibration prompts. It solves a probe map at
``target_density``, then for each group of map entries (a step range, or a step range and a
layer) generates every prompt with the probe sparse in that group only and dense elsewhere,
from the same seed as a dense generation. The group's sensitivity is the final latents'
squared relative error over the error the scores predict for that group (the solver's own
objective restricted to it); the values are scaled to a mean of 1 over the map's entries
(FLOP-weighted, like the solver's objective), so the weighted scores stay in the scores'
units. :func:`solve_budget` then minimises the weighted error.

It costs one generation per prompt and group on top of the dense ones: ``R`` groups per
prompt by step range, ``R x L`` by layer. The linear model behind it (groups' final errors
add up) is checked by one more generation with the probe sparse everywhere, logged and kept
in the scores' metadata.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from diffusers.utils import logging
from tqdm.auto import tqdm

from ..logs import get_logger
from .scores import ScoreSet
from .solver import range_steps, solve_budget, solve_choices, split_at_step

__all__ = ["measure_sensitivity", "SENSITIVITY_GROUPS"]

logger = get_logger(__name__)

SENSITIVITY_GROUPS = ("ranges", "layers")


def _final_latents(pipe, prompt: str, seed: int, call: dict) -> torch.Tensor:
    out = pipe(prompt=prompt, generator=torch.Generator("cpu").manual_seed(seed), output_type="latent", **call)
    latents = out.frames if hasattr(out, "frames") else out[0]
    return latents.float().cpu()


def measure_sensitivity(
    pipe,
    scores: ScoreSet,
    prompts: Sequence[str],
    *,
    target_density: float = 0.25,
    groups: str = "ranges",
    dense_warmup_steps: int = 0,
    dense_last_steps: int = 0,
    seed: int = 0,
    backend: str = "auto",
    pipeline_kwargs: dict | None = None,
    progress: bool | None = None,
) -> ScoreSet:
    """``scores`` with ``sensitivity`` set per (step range, layer), measured by generating ``prompts``.

    Args:
        pipe: the pipeline the scores were calibrated on (no map applied).
        scores: its :class:`ScoreSet`; the generation settings come from its metadata
            (``num_inference_steps``, ``height``, ``width``, ``num_frames``, ``guidance_scale``).
        prompts: calibration prompts (never the prompts you evaluate on); prompt ``i`` runs
            with ``seed + i``.
        target_density: the probe map's total attention density; measure near the density
            you will solve for.
        groups: ``"ranges"`` (one weight per step range, ``R`` probes a prompt) or ``"layers"``
            (one per step range and layer, ``R x L`` probes a prompt).
        dense_warmup_steps, dense_last_steps: as you will pass to the solver (the dense last steps
            get a step range of their own in the returned scores when they have none).
        backend: the sparse kernel the probes run with.
        pipeline_kwargs: more pipeline call arguments.
        progress: a bar over the generations; None follows diffusers' progress-bar settings.
    """
    from ..processors import apply_sparse_vdit, remove_sparse_vdit

    if groups not in SENSITIVITY_GROUPS:
        raise ValueError(f"groups must be one of {SENSITIVITY_GROUPS}, got {groups!r}")
    prompts = list(prompts)
    if not prompts or not all(isinstance(p, str) and p.strip() for p in prompts):
        raise ValueError("prompts must be a non-empty list of non-empty strings")
    meta = scores.metadata
    call = {k: meta[k] for k in ("num_inference_steps", "height", "width", "num_frames", "guidance_scale")
            if meta.get(k) is not None}
    if "num_inference_steps" not in call:
        raise ValueError("the scores' metadata has no num_inference_steps: measure sensitivity on scores from calibrate()")
    call.update(pipeline_kwargs or {})
    if dense_last_steps:  # the probe's ranges are the scores' ranges
        scores = split_at_step(scores, call["num_inference_steps"] - dense_last_steps)
    dense_steps = dict(dense_warmup_steps=dense_warmup_steps, dense_last_steps=dense_last_steps)
    plain = scores.with_sensitivity(None)
    probe = solve_budget(plain, target_density=target_density, **dense_steps).choices
    full = scores.full_index
    item_err = plain.errors.gather(3, probe[..., None])[..., 0]  # (R, L, H) error of each probe entry
    steps = range_steps(plain, **dense_steps)
    weight = steps[:, None, None] / (scores.num_layers * scores.num_heads)
    predicted = (weight * item_err).sum(dim=2)  # (R, L): the solver's objective, entry group by entry group

    ranges = range(scores.num_ranges)
    cells = [(slice(r, r + 1), slice(None)) for r in ranges] if groups == "ranges" else [
        (slice(r, r + 1), slice(layer, layer + 1)) for r in ranges for layer in range(scores.num_layers)]
    probed = [where for where in cells if not bool((probe[where] == full).all())]  # the rest has nothing sparse
    if not probed:  # before generating anything
        raise ValueError(f"the probe map at density {target_density} is dense everywhere: nothing to measure; "
                         "pass a lower target_density")
    bar_config = dict(getattr(pipe, "_progress_bar_config", {}))
    if progress is None:
        progress = logging.is_progress_bar_enabled() and not bar_config.get("disable", False)
    bar = tqdm(total=len(prompts) * (len(probed) + 2), desc="Sparse-vDiT sensitivity", unit="video",
               disable=not progress)
    pipe.set_progress_bar_config(disable=True)

    def relative_errors(choices) -> float:
        """Mean over prompts of the final latents' squared relative error against dense."""
        apply_sparse_vdit(pipe, solve_choices(plain, choices, **dense_steps).config,
                          backend=backend)
        try:
            total = 0.0
            for i, (prompt, ref) in enumerate(zip(prompts, dense)):
                x = _final_latents(pipe, prompt, seed + i, call)
                total += float((x - ref).pow(2).sum() / ref.pow(2).sum())
                bar.update(1)
            return total / len(prompts)
        finally:
            remove_sparse_vdit(pipe)

    try:
        dense = []
        for i, prompt in enumerate(prompts):
            dense.append(_final_latents(pipe, prompt, seed + i, call))
            bar.update(1)
        measured = torch.full((scores.num_ranges, scores.num_layers), float("nan"), dtype=torch.float64)
        for where in probed:
            choices = torch.full_like(probe, full)
            choices[where] = probe[where]
            measured[where] = relative_errors(choices)
        everywhere = relative_errors(probe)
    finally:
        pipe._progress_bar_config = bar_config
        bar.close()

    # per group: measured final error over predicted local error
    ratio = torch.full_like(measured, float("nan"))
    for where in probed:
        pred = float(predicted[where].sum())
        if pred > 0:
            ratio[where] = measured[where][0, 0] / pred
    known = torch.isfinite(ratio)
    if not known.any():
        raise ValueError(f"the probe map at density {target_density} predicts no error anywhere: nothing to weigh; "
                         "pass a lower target_density")
    entry_w = weight[..., 0].expand_as(ratio)  # FLOP share of each (range, layer)
    fill = float((ratio[known] * entry_w[known]).sum() / entry_w[known].sum())
    ratio = ratio.masked_fill(~known, fill)  # groups the probe left dense: the mean sensitivity
    ratio = ratio / float((ratio * entry_w).sum() / entry_w.sum())
    summed = float(measured.nan_to_num(0.0).sum()) if groups == "layers" else float(
        measured[:, 0].nan_to_num(0.0).sum())
    logger.info(f"sensitivity by {groups} at density {target_density}: final squared error {everywhere:.3e} with the "
                f"probe sparse everywhere, {summed:.3e} summed over groups (additivity)")
    out = scores.with_sensitivity(ratio)
    out.metadata["sensitivity"] = {
        "groups": groups, "target_density": target_density, "prompts": len(prompts), "seed": seed,
        "dense_warmup_steps": dense_warmup_steps, "dense_last_steps": dense_last_steps,
        "final_error_everywhere": everywhere, "final_error_summed": summed,
        "measured": [[v if math.isfinite(v) else None for v in row] for row in measured.tolist()],  # None: not probed
        "predicted": predicted.tolist(),
    }
    return out
