"""The calibration run: a real pipeline on calibration prompts, every target attention call scored.

:func:`calibrate` installs, on the pipeline's transformer, an all-FULL map whose processors
override one step, ``attend``: each target attention call of each denoising step hands its
real q, k, v to a shared :class:`~.scoring.HeadScorer` (created once the latent layout is
known), which scores every candidate for every head and returns the output to carry on
(dense, or the paper's greedy choice). Dense steps (warm-up, last steps) are not scored. Afterwards the
pipeline's processors are restored exactly. :func:`search` then solves the scores.

A pipeline with two experts (Wan2.2 A14B: ``transformer`` on the high-noise steps, ``transformer_2``
on the low-noise ones) calibrates both in the same run: each expert is scored on the steps it runs,
with the whole schedule's step indices, and :func:`calibrate` returns
``{"transformer": ScoreSet, "transformer_2": ScoreSet}``, each recording its ``expert_steps``.

One progress bar runs over prompts x steps in place of the pipeline's own (silenced meanwhile
with diffusers' ``set_progress_bar_config``), following the pipeline's bar settings and
diffusers' ``disable_progress_bar()`` unless ``progress`` says otherwise; messages go through
diffusers' logger tree (``diffusers.sparse_vdit.*``).

Several processes (``accelerate launch``): prompts are split between them, each scores its
share with per-prompt seeds (so the split does not change what a prompt contributes), and
the scores are gathered and merged by call count on every process.
"""

from __future__ import annotations

import dataclasses
import inspect
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from diffusers.utils import logging
from tqdm.auto import tqdm

from ..layout import TokenLayout
from ..loading import check_image_argument
from ..logs import get_logger
from ..modes import ModeSpec
from .scores import ScoreSet
from .scoring import HeadScorer, OutProj
from .solver import DEFAULT_FP8_MAX_ERROR, SearchResult, check_precision_args, solve_budget, solve_paper

__all__ = ["DEFAULT_PROMPTS", "DEFAULT_STEP_RANGES", "equal_step_ranges", "schedule_step_ranges", "load_prompts", "calibrate", "search"]

logger = get_logger(__name__)

# Diverse on purpose: people, animals, landscapes, a city at night, a close-up, fast motion,
# slow camera moves, abstract motion. Attention patterns are largely prompt-invariant (the
# paper's premise), so a handful covers them; the scores record which prompts were used.
DEFAULT_PROMPTS: tuple[str, ...] = (
    "A woman in a red coat walks through a snowy park, trees on both sides, soft morning light.",
    "A golden retriever runs across a green meadow toward the camera, ears flapping.",
    "Aerial shot of waves breaking on a rocky coastline at sunset, the camera slowly gliding forward.",
    "A busy city street at night in the rain, neon signs reflecting on the wet asphalt, cars passing.",
    "Close-up of a chef's hands chopping vegetables on a wooden board in a bright kitchen.",
    "A mountain biker speeds down a dusty forest trail, the camera tracking alongside.",
    "Time-lapse of clouds rolling over snowy mountain peaks under a blue sky.",
    "Colorful ink drops swirling and blooming in clear water, slow motion, black background.",
)


# What the reference pipelines' frontier chose (docs/search.md): maps per step range, each range's
# errors weighed by how much they move the final latents, measured on a few calibration prompts.
DEFAULT_STEP_RANGES = 8
DEFAULT_SENSITIVITY_PROMPTS = 4
SENSITIVITY_PROBE_DENSITY = 0.25


def equal_step_ranges(num_inference_steps: int, count: int, dense_warmup_steps: int = 0,
                      dense_last_steps: int = 0) -> list[list[int]]:
    """``count`` step ranges of (nearly) equal length over the sparse steps: after the warm-up, before the last steps.

    The warm-up steps join the first range (they run dense whatever it holds); the dense last
    steps are one more range of their own (the solver keeps it all-FULL); ``count`` is capped at
    the number of sparse steps.
    """
    sparse = num_inference_steps - dense_warmup_steps - dense_last_steps
    if sparse < 1:
        raise ValueError(f"num_inference_steps={num_inference_steps} leaves no step after {dense_warmup_steps} warm-up "
                         f"steps" + (f" and {dense_last_steps} dense last steps" if dense_last_steps else ""))
    if count < 1:
        raise ValueError(f"the number of step ranges must be at least 1, got {count}")
    count = min(count, sparse)
    cuts = [dense_warmup_steps + round(i * sparse / count) for i in range(1, count)]
    if dense_last_steps:
        cuts.append(num_inference_steps - dense_last_steps)
    return [[a, b] for a, b in zip([0, *cuts], [*cuts, -1])]


def load_prompts(path: str | Path | None) -> list[str]:
    """Prompts from a text file, one a line (blank lines and ``#`` comments skipped); None: the built-in set."""
    if path is None:
        return list(DEFAULT_PROMPTS)
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not a UTF-8 text file (expected one prompt a line)") from None
    prompts = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not prompts:
        raise ValueError(f"{path} holds no prompts (one a line; blank lines and '#' comments are skipped)")
    return prompts


# Which weight projects each head's attention output into the layer output, per family.
def _wan_out_proj(transformer, name: str) -> Callable[[TokenLayout], OutProj]:
    weight = transformer.get_submodule(name).to_out[0].weight
    return lambda layout: weight


def _hunyuan_out_proj(transformer, name: str) -> Callable[[TokenLayout], OutProj]:
    attn = transformer.get_submodule(name)
    if name.startswith("single_transformer_blocks."):
        # a single-stream block concatenates attention and MLP outputs before one projection
        block = transformer.get_submodule(name.rsplit(".", 1)[0])
        weight = block.proj_out.weight[:, : attn.heads * (attn.inner_dim // attn.heads)]
        return lambda layout: weight
    video, text = attn.to_out[0].weight, attn.to_add_out.weight  # dual-stream: text rows have their own
    return lambda layout: [(slice(0, layout.video_tokens), video), (slice(layout.video_tokens, layout.num_tokens), text)]


_OUT_PROJ = {
    "wan": _wan_out_proj, "cogvideox": _wan_out_proj, "hunyuan_video": _hunyuan_out_proj,
    "hunyuan_video15": _hunyuan_out_proj,  # dual-stream blocks only
}  # fmt: skip


class _Calibration:
    """What the calibration processors of one run share: the scorers and the per-layer projections.

    One scorer per token layout. A run has one video grid, but its text length may differ between
    the calls of a step: HunyuanVideo-I2V encodes the negative prompt with more image tokens than
    the prompt. Such scores are merged into those of the first layout seen (:meth:`scores`).
    """

    def __init__(self, out_proj: list, num_heads: int, scored_steps: range, scorer_kwargs: dict):
        self.out_proj = out_proj
        self.num_heads = num_heads
        self.scored_steps = scored_steps  # the sparse steps: not the dense warm-up, nor the dense last steps
        self.scorer_kwargs = scorer_kwargs
        self.scorers: dict[TokenLayout, HeadScorer] = {}
        self.steps_run: set[int] = set()  # which steps this transformer ran (an expert runs some of them)

    @property
    def layout(self) -> TokenLayout | None:
        return next(iter(self.scorers), None)

    def scorer_for(self, layout: TokenLayout) -> HeadScorer:
        if layout not in self.scorers:
            first = self.layout
            if first is not None and _grid(layout) != _grid(first):
                raise ValueError(
                    f"one calibration run scores one video grid; got {layout} after {first}. "
                    "Calibrate each resolution and frame count separately."
                )
            self.scorers[layout] = HeadScorer(layout, len(self.out_proj), self.num_heads, **self.scorer_kwargs)
        return self.scorers[layout]

    def reseed(self, seed: int) -> None:
        self.scorer_kwargs["seed"] = seed
        for scorer in self.scorers.values():
            scorer.reseed(seed)

    def scores(self, **metadata) -> ScoreSet:
        """The scores of every layout, call-weighted, as scores of the first layout seen."""
        main, *others = (scorer.scores(**metadata) for scorer in self.scorers.values())
        if not others:
            return main
        merged = main.merge(*(dataclasses.replace(o, layout=main.layout, densities=main.densities) for o in others))
        merged.metadata["text_tokens_scored"] = [layout.text_tokens for layout in self.scorers]
        return merged


def _grid(layout: TokenLayout) -> tuple:
    return layout.frames, layout.height, layout.width, layout.text_position


def _calibration_processor(base: type, calibration: _Calibration) -> type:
    class CalibrationProcessor(base):
        """The family processor whose attention call is scored (see :mod:`.runner`)."""

        def attend(self, query, key, value, plan, *, layout=None, text_lengths=None, attention_mask=None):
            step = self.state.step
            if step is not None:
                calibration.steps_run.add(step)
            if layout is None or step not in calibration.scored_steps:
                return super().attend(query, key, value, None, layout=layout, text_lengths=text_lengths,
                                      attention_mask=attention_mask)
            scorer = calibration.scorer_for(layout)
            out = scorer.attend(self.layer, query, key, value, out_proj=calibration.out_proj[self.layer](layout),
                                step=step, text_lengths=text_lengths)
            return out.to(query.dtype)

    CalibrationProcessor.__name__ = f"Calibration{base.__name__}"
    return CalibrationProcessor


def _accelerator(accelerator):
    if accelerator != "auto":
        return accelerator
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        from accelerate import Accelerator

        return Accelerator()
    return None


@torch.no_grad()
def calibrate(
    pipe,
    prompts: Sequence[str] | None = None,
    *,
    height: int | None = None,
    width: int | None = None,
    num_frames: int | None = None,
    num_inference_steps: int = 50,
    guidance_scale: float | None = None,
    seed: int = 0,
    candidates=None,
    metric: str = "projected",
    sample_tiles: int = 32,
    propagate: str = "dense",
    lam: float | None = None,
    epsilon: float | None = None,
    step_ranges=None,
    dense_warmup_steps: int = 0,
    dense_warmup_fraction: float | None = None,
    dense_last_steps: int = 0,
    tile_size: int = 128,
    backend: str = "auto",
    pipeline_kwargs: dict | None = None,
    accelerator=None,
    progress: bool | None = None,
    fp8_calls: int = 1,
) -> ScoreSet:
    """Run ``pipe`` on ``prompts`` (default: :data:`DEFAULT_PROMPTS`) and score every candidate mode.

    Args:
        pipe: a Wan, HunyuanVideo, HunyuanVideo-1.5 or CogVideoX pipeline, text- or image-to-video
            (its transformer is calibrated; with two experts, ``transformer_2`` and ``boundary_ratio``,
            both are; an image-to-video one takes its picture in ``pipeline_kwargs``).
        height, width, num_frames, num_inference_steps, guidance_scale: the generation to
            calibrate at (None: the pipeline's defaults); maps transfer across resolutions, but
            calibrate at the size you will generate at.
        seed: prompt ``i`` runs with ``seed + i``.
        candidates, metric, sample_tiles, propagate, step_ranges: see :class:`~.scoring.HeadScorer`.
        lam, epsilon: the paper's rule for ``propagate="greedy"`` (defaults: the solver's).
        dense_warmup_steps: the first steps run dense and are not scored (pass the same to the solver);
            or ``dense_warmup_fraction`` of the steps (rounded up: 0.25 of 4 steps is 1).
        dense_last_steps: the last steps run dense and are not scored (few-step checkpoints).
        tile_size: the map's tile (128 for the GPU kernel; smaller only for toy models).
        backend: the sparse kernel the scorer computes candidates with.
        fp8_calls: calls per (step range, layer) whose FP8 attention error is measured, per head, for
            ``solve_budget(..., precision="fp8")`` (0: none; see :class:`~.scoring.HeadScorer`).
        pipeline_kwargs: more pipeline call arguments; ``output_type`` defaults to ``"latent"``
            (the VAE adds nothing to the scores).
        accelerator: an ``accelerate.Accelerator`` to split the prompts across processes, or
            ``"auto"`` (one is made when ``torch.distributed`` is initialized).
        progress: one bar over prompts x steps; None follows diffusers: hidden after
            ``pipe.set_progress_bar_config(disable=True)`` or ``diffusers.utils.logging.disable_progress_bar()``
            (the pipeline's other bar settings apply to it too).

    Returns the averaged :class:`ScoreSet` (on every process), with the set-up in its metadata;
    for two experts, ``{"transformer": ScoreSet, "transformer_2": ScoreSet}``.
    """
    from ..config import SparseVDiTConfig
    from ..processors import family_of, get_sparse_vdit_hook, remove_sparse_vdit, sparse_targets
    from ..processors.install import architecture, install, model_id
    from ..processors.hook import StepClock
    from .solver import dense_step_counts

    prompts = list(DEFAULT_PROMPTS if prompts is None else prompts)
    if not prompts or not all(isinstance(p, str) and p.strip() for p in prompts):
        raise ValueError("prompts must be a non-empty list of non-empty strings")
    warmup, last = dense_step_counts(num_inference_steps, dense_warmup_steps, dense_warmup_fraction, dense_last_steps)
    if warmup + last >= num_inference_steps:
        raise ValueError(f"num_inference_steps={num_inference_steps} leaves no step after {warmup} warm-up steps"
                         + (f" and {last} last steps" if last else "") + " to score")
    experts = _experts(pipe)
    for transformer in experts.values():
        if get_sparse_vdit_hook(transformer) is not None:
            raise ValueError("the pipeline already runs a Sparse-vDiT map: remove_sparse_vdit(pipe) before calibrating")
    scorer_kwargs = dict(candidates=candidates, metric=metric, sample_tiles=sample_tiles, step_ranges=step_ranges,
                         backend=backend, propagate=propagate, seed=seed, tile_size=tile_size, epsilon=epsilon,
                         fp8_calls=fp8_calls,
                         **({} if lam is None else {"lam": lam}))
    calibrations, full_maps = {}, {}
    for name, transformer in experts.items():
        family = family_of(transformer)
        targets = sparse_targets(transformer)
        num_heads = transformer.get_submodule(targets[0]).heads
        calibrations[name] = _Calibration([_OUT_PROJ[family.name](transformer, t) for t in targets], num_heads,
                                          range(warmup, num_inference_steps - last), dict(scorer_kwargs))
        full_maps[name] = SparseVDiTConfig.from_specs(
            [[ModeSpec.full()] * num_heads] * len(targets), family=family.name,
            transformer_class=type(transformer).__name__, target_modules=targets, tile_size=tile_size)

    accelerator = _accelerator(accelerator)
    indices = list(range(len(prompts)))
    mine = indices
    if accelerator is not None and accelerator.num_processes > 1:
        with accelerator.split_between_processes(indices) as share:
            mine = list(share)
    bar_config = dict(getattr(pipe, "_progress_bar_config", {}))
    if progress is None:
        progress = logging.is_progress_bar_enabled() and not bar_config.get("disable", False)
    show = progress and (accelerator is None or accelerator.is_local_main_process)
    bar = tqdm(total=len(mine) * num_inference_steps,
               **{"desc": "Sparse-vDiT calibration", "unit": "step", **bar_config, "disable": not show})

    def on_step_end(pipeline, step, timestep, callback_kwargs):
        bar.update(1)
        return callback_kwargs

    call = {"num_inference_steps": num_inference_steps, "output_type": "latent", **(pipeline_kwargs or {})}
    for key, value in (("height", height), ("width", width), ("num_frames", num_frames), ("guidance_scale", guidance_scale)):
        if value is not None:
            call[key] = value
    check_image_argument(pipe, call)  # image-to-video: one picture for every prompt
    pipe.set_progress_bar_config(disable=True)
    clock = StepClock()  # both experts count the steps of one schedule
    try:
        for name, transformer in experts.items():
            family = family_of(transformer)
            install(transformer, full_maps[name], processor_cls=_calibration_processor(family.processor_cls,
                                                                                      calibrations[name]), clock=clock)
        # the bar moves each step where the pipeline takes a step callback (HunyuanVideo-1.5's does not: each prompt)
        per_step = "callback_on_step_end" in inspect.signature(type(pipe).__call__).parameters
        for i in mine:
            for calibration in calibrations.values():
                calibration.reseed(seed + i)  # a prompt's sample tiles do not depend on the split
            generator = torch.Generator(device="cpu").manual_seed(seed + i)
            pipe(prompt=prompts[i], generator=generator, **call, **({"callback_on_step_end": on_step_end} if per_step else {}))
            if not per_step:
                bar.update(num_inference_steps)
    finally:
        remove_sparse_vdit(pipe)
        pipe._progress_bar_config = bar_config
        bar.close()

    common = dict(base_model=model_id(pipe), prompts=prompts, num_prompts=len(prompts), seed=seed, height=height,
                  width=width, num_frames=num_frames, num_inference_steps=num_inference_steps,
                  guidance_scale=guidance_scale, dense_warmup_steps=warmup, dense_last_steps=last, propagate=propagate)
    if len(experts) > 1:
        common["calibration_run"] = uuid.uuid4().hex  # ties the two experts' scores together on disk
    if dense_warmup_fraction is not None:
        common["dense_warmup_fraction"] = dense_warmup_fraction
    scores = {}
    for name, transformer in experts.items():
        calibration = calibrations[name]
        if calibration.layout is None:
            raise RuntimeError(f"no attention call of pipe.{name} was scored: did the pipeline run it on a sparse "
                               f"step?" + (" (check the pipeline's boundary_ratio)" if len(experts) > 1 else ""))
        layout = calibration.layout
        expert = {}
        if len(experts) > 1:
            expert = {"expert": name, "expert_steps": [min(calibration.steps_run), max(calibration.steps_run) + 1],
                      "boundary_ratio": pipe.config.boundary_ratio}
        scores[name] = calibration.scores(
            family=family_of(transformer).name,
            transformer_class=type(transformer).__name__,
            target_modules=sparse_targets(transformer),
            transformer_config=architecture(transformer),
            **common,
            **expert,
            layout={"frames": layout.frames, "height": layout.height, "width": layout.width,
                    "text_tokens": layout.text_tokens, "text_position": layout.text_position},
        )
    if accelerator is not None and accelerator.num_processes > 1:
        from accelerate.utils import gather_object

        shards = gather_object([scores])  # every process gets every shard, merged the same way
        scores = {name: shards[0][name].merge(*(shard[name] for shard in shards[1:])) for name in scores}
    for name, calibration in calibrations.items():
        logger.info(f"calibrated pipe.{name}: {len(calibration.out_proj)} layers x {calibration.num_heads} heads "
                    f"on {len(prompts)} prompts at {calibration.layout}")
    if len(scores) == 1:
        return scores["transformer"]
    return {name: _own_ranges(s) for name, s in scores.items()}


def _experts(pipe) -> dict:
    """The transformers a calibration run scores: ``transformer``, and ``transformer_2`` when the pipeline switches to it."""
    experts = {"transformer": pipe.transformer}
    second = getattr(pipe, "transformer_2", None)
    if second is not None:
        if getattr(pipe.config, "boundary_ratio", None) is None:
            logger.warning("the pipeline has a transformer_2 but no boundary_ratio, so it never runs it: "
                           "calibrating pipe.transformer only")
        else:
            experts["transformer_2"] = second
    return experts


def _own_ranges(scores: ScoreSet) -> ScoreSet:
    """An expert's scores with only the step ranges that overlap the steps it ran, re-tiled from 0 to the end."""
    lo, hi = scores.metadata["expert_steps"]
    keep = [i for i, (start, end) in enumerate(scores.step_ranges) if start < hi and (end < 0 or end > lo)]
    ranges = [list(scores.step_ranges[i]) for i in keep]
    ranges[0][0], ranges[-1][1] = 0, -1
    return scores.with_ranges(keep, ranges)


def search(
    pipe,
    prompts: Sequence[str] | None = None,
    *,
    target_speedup: float | None = None,
    target_density: float | None = None,
    lam: float | None = None,
    epsilon: float | None = None,
    dense_warmup_steps: int = 0,
    dense_warmup_fraction: float | None = None,
    dense_last_steps: int = 0,
    step_ranges: int | Sequence[Sequence[int]] | None = DEFAULT_STEP_RANGES,
    sensitivity: str | None = "ranges",
    sensitivity_prompts: int = DEFAULT_SENSITIVITY_PROMPTS,
    precision: str = "native",
    fp8_max_error: float = DEFAULT_FP8_MAX_ERROR,
    **calibrate_kwargs: Any,
) -> SearchResult:
    """Calibrate, then solve: for an attention-FLOP target when one is given, else by the paper's rule.

    ``search(pipe, target_speedup=2.0)`` returns a :class:`~.solver.SearchResult` whose
    ``.config`` is the mode map (``result.config.save_pretrained(dir)`` / ``.push_to_hub(repo)``).

    ``step_ranges``: an int cuts the steps after the warm-up into that many equal ranges, each
    with its own map; a list gives them (see :class:`~.scoring.HeadScorer`); None is one map for
    every step. ``sensitivity`` (``"ranges"``, ``"layers"`` or None; with a target only): before
    solving, :func:`~.sensitivity.measure_sensitivity` on the first ``sensitivity_prompts``
    prompts, so each range's errors count by their effect on the final latents. Both defaults
    come from the reference pipelines' frontier (docs/search.md); the measurement costs
    ``(ranges + 2) x sensitivity_prompts`` generations.

    ``precision="fp8"``: every head whose measured FP8 attention error is at most ``fp8_max_error``
    computes in FP8, the others stay native (see :func:`~.solver.solve_budget`).
    """
    check_precision_args(precision, fp8_max_error)  # before the calibration, not after it
    if precision == "fp8" and calibrate_kwargs.get("fp8_calls", 1) == 0:
        raise ValueError("precision='fp8' picks heads by their measured FP8 error: leave fp8_calls at 1 or more")
    if target_speedup is not None and target_density is not None:
        raise ValueError("give target_speedup or target_density, not both")
    target = 1.0 / target_speedup if target_speedup is not None else target_density
    if target is not None and (lam is not None or epsilon is not None):
        raise ValueError("lam and epsilon belong to the paper's rule; a target uses the budget solver instead")
    dense = dict(dense_warmup_steps=dense_warmup_steps, dense_warmup_fraction=dense_warmup_fraction,
                 dense_last_steps=dense_last_steps)
    if isinstance(step_ranges, int) and not isinstance(step_ranges, bool):
        step_ranges = schedule_step_ranges(calibrate_kwargs.get("num_inference_steps", 50), step_ranges, **dense)
    scores = calibrate(pipe, prompts, lam=lam, epsilon=epsilon, step_ranges=step_ranges, **dense, **calibrate_kwargs)
    if target is None:
        kwargs = {} if lam is None else {"lam": lam}
        return solve_paper(scores, epsilon=epsilon, precision=precision, fp8_max_error=fp8_max_error, **dense, **kwargs)
    if sensitivity is not None:
        scores = sensitive(pipe, scores, list(DEFAULT_PROMPTS if prompts is None else prompts)[:sensitivity_prompts],
                           target, groups=sensitivity, seed=calibrate_kwargs.get("seed", 0),
                           backend=calibrate_kwargs.get("backend", "auto"),
                           pipeline_kwargs=calibrate_kwargs.get("pipeline_kwargs"),
                           progress=calibrate_kwargs.get("progress"))
    return solve_budget(scores, target_density=target, precision=precision, fp8_max_error=fp8_max_error, **dense)


def schedule_step_ranges(num_inference_steps: int, count: int, *, dense_warmup_steps: int = 0,
                         dense_warmup_fraction: float | None = None, dense_last_steps: int = 0) -> list | None:
    """:func:`equal_step_ranges` for a schedule's dense steps (the warm-up given as a count or a fraction);
    None where that is one range (one map for every step)."""
    from .solver import dense_step_counts

    warmup, last = dense_step_counts(num_inference_steps, dense_warmup_steps, dense_warmup_fraction, dense_last_steps)
    ranges = equal_step_ranges(num_inference_steps, count, warmup, last)
    return ranges if len(ranges) > 1 else None


def sensitive(pipe, scores, prompts: Sequence[str], target_density: float, *, groups: str = "ranges", **kwargs):
    """:func:`measure_sensitivity` with its probe at the target or at 0.25, whichever is sparser.

    A probe sparser than the target measures more clearly (fewer of its entries are FULL);
    when the scores cannot reach it (e.g. a long warm-up), the probe is the target itself. When
    no probe can be made (a target that leaves every head FULL), the scores come back unweighted,
    with a warning: the calibration is the expensive part and stays usable. The scores also come
    back as they are where there is nothing to weigh (by ranges, with one step range) and, with a
    note, for two experts' scores (the probes would have to run both experts' maps at once: not
    measured yet). The dense steps come from the scores' metadata.
    """
    from .sensitivity import measure_sensitivity

    if isinstance(scores, Mapping):
        logger.warning("sensitivity is not measured for two experts' scores (Wan2.2): each expert's step ranges are "
                       "solved by their scored errors alone")
        return scores
    if groups == "ranges" and scores.num_ranges < 2:
        return scores
    kwargs.setdefault("dense_warmup_steps", scores.metadata.get("dense_warmup_steps", 0))
    kwargs.setdefault("dense_last_steps", scores.metadata.get("dense_last_steps", 0))
    for probe in dict.fromkeys((min(target_density, SENSITIVITY_PROBE_DENSITY), target_density)):
        try:
            return measure_sensitivity(pipe, scores, prompts, target_density=probe, groups=groups, **kwargs)
        except ValueError as e:
            reason = e
    logger.warning(f"no sensitivity measured ({reason}); the map is solved from the unweighted scores")
    return scores
