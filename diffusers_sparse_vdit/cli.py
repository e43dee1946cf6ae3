"""``sparse-vdit``: search, re-solve, show, push and evaluate Sparse-vDiT mode maps from the shell.

Each subcommand is a small function over the package's Python API, so everything here can be
done from Python too: :mod:`.search` (``runner.calibrate``, ``solve_budget``, ``solve_paper``),
:class:`.SparseVDiTConfig` (``summary``, ``save_pretrained``, ``push_to_hub``),
:func:`.plot_mode_map` and :mod:`.evaluate`.

Argument mistakes end with argparse's usage line and exit status 2 (``parser.error``); a
command that cannot do its work (a map that does not load, a target out of reach, a Hub
refusal) prints one line saying why and what to do, with exit status 1.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import textwrap
import uuid
from pathlib import Path

import torch
from huggingface_hub.errors import HFValidationError

from . import __version__
from .kernels.attention import BACKENDS
from .plan import PRECISIONS
from .loading import (
    DTYPES,
    TINY_TILE_SIZE,
    calibrate_arguments,
    call_arguments,
    call_defaults,
    default_fps,
    load_pipeline,
    needs_image,
)
from .testing import PIPELINE_VARIANTS

__all__ = ["main", "build_parser"]

PROG = "sparse-vdit"
DEFAULT_STEPS, TINY_STEPS = 50, 4  # diffusers' default for all three families; a tiny model needs few
DEFAULT_TILE = 128  # what the GPU kernels run best at; --tiny: TINY_TILE_SIZE
VIDEO_MULTIPLE = 16  # VAE 8x, then 2x2 patches: every family needs height and width in multiples of 16

DESCRIPTION = """\
Sparse-vDiT for diffusers: find which sparse attention pattern each head of a video diffusion
transformer (Wan2.1, HunyuanVideo, CogVideoX/1.5) can run, then share and use the map.
"""

EPILOG = """\
a session:
  sparse-vdit search --model Wan-AI/Wan2.1-T2V-1.3B-Diffusers --target-speedup 2 --out ./wan-map
  sparse-vdit show ./wan-map
  sparse-vdit evaluate --model Wan-AI/Wan2.1-T2V-1.3B-Diffusers --map ./wan-map --prompt "a cat on a surfboard"
  sparse-vdit solve ./wan-map/scores --target-speedup 3 --out ./wan-map-3x
  sparse-vdit push ./wan-map your-name/wan2.1-1.3b-sparse-vdit

search and evaluate take --tiny FAMILY instead of --model: a tiny random model, seconds on a CPU.
`sparse-vdit COMMAND --help` tells more.
"""


class _Formatter(argparse.HelpFormatter):
    """Wraps prose to the terminal; keeps paragraphs with indented lines (examples) as written."""

    def _fill_text(self, text, width, indent):
        paragraphs = []
        for paragraph in text.strip("\n").split("\n\n"):
            lines = paragraph.splitlines()
            if any(line.startswith(" ") for line in lines):
                paragraphs.append("\n".join(indent + line for line in lines))
            else:
                paragraphs.append(
                    textwrap.fill(
                        " ".join(lines), width, initial_indent=indent, subsequent_indent=indent, break_on_hyphens=False
                    )
                )
        return "\n\n".join(paragraphs) + "\n"


class CommandError(Exception):
    """A command could not do its work; the message says why and what to do."""


# Argument types ---------------------------------------------------------------------------
def _positive_int(text: str) -> int:
    value = _number(text, int)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text}")
    return value


def _non_negative_int(text: str) -> int:
    value = _number(text, int)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 0, got {text}")
    return value


def _speedup(text: str) -> float:
    value = _number(text, float)
    if not 1 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 1 (2 = half the attention FLOPs), got {text}")
    return value


def _fraction(text: str) -> float:
    value = _number(text, float)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1] (0.5 = half the attention FLOPs), got {text}")
    return value


def _warmup_fraction(text: str) -> float:
    value = _number(text, float)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1) (0.25 = the first quarter of the steps), got {text}")
    return value


def _tile_size(text: str) -> int:
    value = _number(text, int)
    if value < 16 or value & (value - 1):
        raise argparse.ArgumentTypeError(f"must be a power of two >= 16 (128 for the GPU kernels), got {text}")
    return value


def _non_negative_float(text: str) -> float:
    value = _number(text, float)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text}")
    return value


def _number(text: str, kind):
    try:
        return kind(text)
    except ValueError:
        what = "a whole number" if kind is int else "a number"
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None


# Shared argument groups -------------------------------------------------------------------
def _add_model_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    which = group.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", metavar="ID_OR_PATH", help="a diffusers pipeline: Hub repo id or local folder")
    which.add_argument(
        "--tiny",
        metavar="FAMILY",
        choices=PIPELINE_VARIANTS,
        help=f"a tiny random pipeline instead, to try things on a CPU in seconds: {', '.join(PIPELINE_VARIANTS)}",
    )
    group.add_argument(
        "--dtype", choices=sorted(DTYPES), help="weights and activations (default: bfloat16 on CUDA, float32 on CPU)"
    )
    group.add_argument("--device", help="where to run, e.g. cuda, cuda:1, cpu (default: cuda if there is one)")


def _add_video_args(parser: argparse.ArgumentParser, *, defaults: str) -> None:
    group = parser.add_argument_group("video", f"unset values: {defaults}")
    group.add_argument("--height", type=_positive_int, metavar="PX", help=f"pixels, a multiple of {VIDEO_MULTIPLE}")
    group.add_argument("--width", type=_positive_int, metavar="PX", help=f"pixels, a multiple of {VIDEO_MULTIPLE}")
    group.add_argument("--frames", type=_positive_int, metavar="N", help="number of frames (4k+1: 49, 81, 129, ...)")
    group.add_argument(
        "--image", metavar="PATH_OR_URL", help="image-to-video pipelines: the picture to animate (any diffusers load_image takes)"
    )
    group.add_argument(
        "--steps",
        type=_positive_int,
        metavar="N",
        help=f"denoising steps (default: {DEFAULT_STEPS}; {TINY_STEPS} with --tiny)",
    )
    group.add_argument(
        "--guidance-scale", type=_non_negative_float, metavar="SCALE", help="classifier-free guidance scale"
    )
    group.add_argument("--seed", type=_non_negative_int, default=0, metavar="N", help="random seed (default: 0)")


def _add_solver_args(parser: argparse.ArgumentParser) -> None:
    from .search.solver import DEFAULT_FP8_MAX_ERROR

    group = parser.add_argument_group(
        "solver",
        "with a target: the least error that meets it; without one: the paper's per-head rule "
        "(a head goes sparse when its error is below epsilon after paying lambda per unit of density)",
    )
    target = group.add_mutually_exclusive_group()
    target.add_argument(
        "--target-speedup",
        type=_speedup,
        metavar="X",
        help="attention FLOPs cut by X over the whole run, dense warm-up included (e.g. 2)",
    )
    target.add_argument(
        "--target-density",
        type=_fraction,
        metavar="D",
        help="attention FLOPs as a fraction of dense, in (0, 1] (e.g. 0.5)",
    )
    group.add_argument(
        "--lambda",
        dest="lam",
        type=_non_negative_float,
        metavar="L",
        help="paper's rule: price of density (default 0.5)",
    )
    group.add_argument(
        "--epsilon",
        type=_non_negative_float,
        metavar="E",
        help="paper's rule: largest loss a sparse head may have (default: lambda)",
    )
    warmup = group.add_mutually_exclusive_group()
    warmup.add_argument(
        "--dense-warmup-steps",
        type=_non_negative_int,
        default=0,
        metavar="N",
        help="the first N denoising steps stay dense (default: 0)",
    )
    warmup.add_argument(
        "--dense-warmup-fraction",
        type=_warmup_fraction,
        metavar="F",
        help="instead: this share of the steps stays dense at the start, rounded up (0.25 of 4 steps is 1)",
    )
    group.add_argument(
        "--dense-last-steps",
        type=_non_negative_int,
        default=0,
        metavar="N",
        help="the last N steps stay dense too (few-step checkpoints; default: 0)",
    )
    group.add_argument(
        "--attention-share",
        type=_fraction,
        metavar="S",
        help="share of a dense forward spent in attention, for the predicted end-to-end speedup "
        "(default: measured on an H100 for the family)",
    )
    group.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="native",
        help="fp8: heads of the sparse steps whose FP8 attention error (measured at calibration) is at most "
        "--fp8-max-error compute Q, K, P, V in float8 e4m3, faster on Hopper GPUs; the others stay native "
        "(default: native, every head in the model's dtype)",
    )
    group.add_argument(
        "--fp8-max-error",
        type=_non_negative_float,
        default=DEFAULT_FP8_MAX_ERROR,
        metavar="E",
        help="with --precision fp8: the largest relative L2 error of a head's FP8 attention that still runs in FP8 "
        f"(default: {DEFAULT_FP8_MAX_ERROR:g})",
    )


def _add_overwrite_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace --out whole even when it holds other files (by default only an earlier map of this "
        "command is replaced; the folder is swapped in once the new map is complete)",
    )


def _check_solver_args(parser, args) -> None:
    has_target = args.target_speedup is not None or args.target_density is not None
    if has_target and (args.lam is not None or args.epsilon is not None):
        parser.error(
            "--lambda and --epsilon set the paper's rule, which runs only without a target: "
            "drop them, or drop --target-speedup/--target-density"
        )


def _check_dense_steps(parser, args, num_steps: int) -> None:
    from .search.solver import dense_step_counts

    try:
        warmup, last = dense_step_counts(num_steps, args.dense_warmup_steps, args.dense_warmup_fraction,
                                         args.dense_last_steps)
    except ValueError as e:
        parser.error(str(e))
    if warmup + last >= num_steps:
        parser.error(f"{warmup} dense warm-up steps and {last} dense last steps leave none of the {num_steps} steps "
                     "to make sparse")


def _check_video_args(parser, args) -> None:
    for name in ("height", "width"):
        value = getattr(args, name)
        if value is not None and value % VIDEO_MULTIPLE:
            parser.error(
                f"--{name} {value} is not a multiple of {VIDEO_MULTIPLE} (the VAE's 8x and the 2x2 patches): "
                f"try {max(VIDEO_MULTIPLE, round(value / VIDEO_MULTIPLE) * VIDEO_MULTIPLE)}"
            )


def _check_device(parser, args) -> None:
    if args.device and args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: no CUDA GPU is visible here; leave --device out to run on the CPU")


# Helpers ----------------------------------------------------------------------------------
def _load_pipeline(args):
    what = f"tiny {args.tiny} pipeline" if args.tiny else args.model
    print(f"loading {what} ...", file=sys.stderr)
    from .hub import HUB_ERRORS

    try:
        pipe = load_pipeline(args.model, tiny=args.tiny, dtype=args.dtype, device=args.device)
    except (*HUB_ERRORS, HFValidationError) as e:
        raise CommandError(
            f"could not load the pipeline {args.model!r}: {e}\n"
            "Pass a diffusers pipeline's Hub id or a folder it was saved to "
            "(log in with `hf auth login` for gated ones)."
        ) from None
    if getattr(pipe, "transformer", None) is None:
        raise CommandError(
            f"{what} has no transformer: Sparse-vDiT works on Wan2.1, HunyuanVideo, HunyuanVideo-1.5 and CogVideoX pipelines"
        )
    if getattr(args, "quiet", False):
        pipe.set_progress_bar_config(disable=True)
    return pipe


def _check_family(pipe, config=None) -> None:
    """Fail before a long run when the model is not supported, or the map was made for another."""
    from .processors.install import family_of, validate

    try:
        family = family_of(pipe.transformer)
        if config is not None:
            validate(family, config, pipe.transformer)
    except ValueError as e:
        raise CommandError(str(e)) from None


def _load_map(source: str):
    from .config import SparseVDiTConfig
    from .hub import HUB_ERRORS

    try:
        return SparseVDiTConfig.from_pretrained(source)
    except (*HUB_ERRORS, ValueError) as e:
        raise CommandError(str(e)) from None


def _steps(args, fallback: int | None = None) -> int:
    return args.steps or fallback or (TINY_STEPS if args.tiny else DEFAULT_STEPS)


def _base_model(args) -> str | None:
    # a Hub id names the base model in the map's card; a local folder's path would mean nothing elsewhere
    return args.model if args.model and not os.path.isdir(args.model) else None


def _solve(scores, args, *, base_model: str | None = None):
    from .search import solve_budget, solve_paper

    common = dict(dense_warmup_steps=args.dense_warmup_steps, dense_warmup_fraction=args.dense_warmup_fraction,
                  dense_last_steps=args.dense_last_steps, attention_share=args.attention_share,
                  precision=args.precision, fp8_max_error=args.fp8_max_error)
    if base_model:
        common["base_model"] = base_model
    try:
        if args.target_speedup is not None or args.target_density is not None:
            return solve_budget(
                scores, target_speedup=args.target_speedup, target_density=args.target_density, **common
            )
        rule = {k: v for k, v in (("lam", args.lam), ("epsilon", args.epsilon)) if v is not None}
        return solve_paper(scores, **rule, **common)
    except ValueError as e:
        raise CommandError(str(e)) from None


# --out folders ----------------------------------------------------------------------------
# A map folder is replaced whole, never merged: the new map (and scores) go into a hidden
# sibling, which takes the old folder's place only once complete. So no file of an earlier map,
# or scores of another search, ends up beside the new map, and a failed run leaves the old one.
MAP_NAMES = ("config.json", "mode_map.safetensors", "README.md", "scores")


def _foreign_files(out: Path) -> list[str]:
    """What in ``out`` a map folder of ours would not hold: other files, or a config.json not ours."""
    foreign = [p.name for p in out.iterdir() if p.name not in MAP_NAMES and not _is_map_picture(p.name)]
    config = out / "config.json"
    if config.is_file() and not _is_ours(config):
        foreign.append("config.json (not a Sparse-vDiT map's)")
    return sorted(foreign)


def _is_map_picture(name: str) -> bool:
    return name.startswith("mode_map") and name.endswith(".png")


def _is_ours(json_file: Path) -> bool:
    from .hub import LIBRARY_NAME

    try:
        return json.loads(json_file.read_text(encoding="utf-8")).get("library") == LIBRARY_NAME
    except (OSError, UnicodeDecodeError, ValueError, AttributeError):
        return False


def _check_out(parser, args, *, keeps: Path | None = None) -> Path:
    """Refuse an ``--out`` that is a file, or a folder with what the new map would destroy, unless --overwrite."""
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        parser.error(f"--out {out} is a file: pass a folder for the map")
    if not out.is_dir() or args.overwrite:
        return out
    foreign = _foreign_files(out)
    scores = out / "scores"
    if keeps is None or not scores.exists() or scores.resolve() == keeps.resolve():
        pass
    else:
        foreign.append("scores/ (of a search, not the scores this map is solved from)")
    if foreign:
        parser.error(
            f"--out {out} holds what a new map would replace: {', '.join(foreign)}. "
            "Pass a new or empty folder, or --overwrite to replace the folder whole"
        )
    return out


def _is_empty(folder: Path) -> bool:
    return not folder.exists() or (folder.is_dir() and not any(folder.iterdir()))


def _unused_name(out: Path, tag: str) -> Path:
    """``out``'s sibling ``NAME.TAG-xxxxxxxx``: on the same filesystem, so it can be renamed into place."""
    out = out.resolve()
    return out.with_name(f"{out.name}.{tag}-{uuid.uuid4().hex[:8]}")


def _new_sibling(out: Path) -> Path:
    """An empty folder beside ``out`` to write the new map into."""
    stage = _unused_name(out, "new")
    stage = stage.with_name("." + stage.name)  # hidden: it is gone again in seconds
    stage.mkdir(parents=True)
    return stage


def _swap_in(stage: Path, out: Path) -> None:
    """Put the complete folder ``stage`` where ``out`` is, removing the old ``out``."""
    if out.exists():
        old = _unused_name(out, "old")
        old = old.with_name("." + old.name)
        os.replace(out, old)
        os.replace(stage, out)
        shutil.rmtree(old)
    else:
        os.replace(stage, out)


def _carry(out: Path, stage: Path, *names: str) -> None:
    """Copy what the new folder keeps from the old: a hand-written README.md (save_pretrained keeps it), scores."""
    for name in names:
        src = out / name
        if src.is_dir():
            shutil.copytree(src, stage / name)
        elif src.is_file():
            shutil.copy2(src, stage / name)


def _written(directory: Path) -> str:
    return ", ".join(sorted(p.name + ("/" if p.is_dir() else "") for p in directory.iterdir()))


# search -----------------------------------------------------------------------------------
def _cmd_search(args, parser) -> None:
    _check_solver_args(parser, args)
    _check_video_args(parser, args)
    _check_device(parser, args)
    _check_dense_steps(parser, args, _steps(args))
    if args.prompts is not None and not Path(args.prompts).is_file():
        parser.error(f"--prompts {args.prompts}: no such file (one prompt a line; leave it out for the built-in set)")
    out = _check_out(parser, args)

    from .search import runner
    from .search.scores import save_expert_scores

    try:
        prompts = runner.load_prompts(args.prompts)
    except (OSError, ValueError) as e:
        raise CommandError(f"cannot read the prompts: {e}") from None
    pipe = _load_pipeline(args)
    _check_family(pipe)
    call = call_arguments(
        call_defaults(args.tiny),
        height=args.height,
        width=args.width,
        num_frames=args.frames,
        guidance_scale=args.guidance_scale,
    )
    call = _image_call(pipe, call, args.image)
    steps = _steps(args)
    dense = dict(dense_warmup_steps=args.dense_warmup_steps, dense_warmup_fraction=args.dense_warmup_fraction,
                 dense_last_steps=args.dense_last_steps)
    try:
        ranges = runner.schedule_step_ranges(steps, args.step_ranges, **dense)
    except ValueError as e:
        raise CommandError(str(e)) from None
    scores = runner.calibrate(
        pipe,
        prompts,
        step_ranges=ranges,
        num_inference_steps=steps,
        seed=args.seed,
        sample_tiles=args.sample_tiles,
        tile_size=args.tile_size or (TINY_TILE_SIZE if args.tiny else DEFAULT_TILE),
        propagate=args.propagate,
        **dense,
        backend=args.backend,
        progress=not args.quiet,
        **calibrate_arguments(call),
    )
    target = 1.0 / args.target_speedup if args.target_speedup is not None else args.target_density
    if target is not None and args.sensitivity != "none":
        # the solver then weighs each range's errors by their effect on the final latents
        scores = runner.sensitive(pipe, scores, prompts[: args.sensitivity_prompts], target,
                                  groups=args.sensitivity, seed=args.seed, backend=args.backend,
                                  progress=not args.quiet,
                                  pipeline_kwargs=calibrate_arguments(call).get("pipeline_kwargs"))
    stage = _new_sibling(out)
    try:
        save_expert_scores(scores, stage / "scores")
        try:
            result = _solve(scores, args, base_model=_base_model(args))
        except CommandError as e:
            # the scores are the expensive part: keep them, in OUT when that holds nothing else
            kept = out if _is_empty(out) else _unused_name(out, "unsolved")
            _swap_in(stage, kept)
            raise CommandError(
                f"{e}\nThe scores are saved in {kept / 'scores'}: try again with "
                f"`{PROG} solve {kept / 'scores'} ... --out {out}`"
                + ("" if kept == out else f" (the map in {out} is unchanged)")
            ) from None
        _carry(out, stage, "README.md")
        result.config.save_pretrained(stage)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    _swap_in(stage, out)
    scores_dir = out / "scores"
    print(result.summary())
    print(f"\nwrote {out}: {_written(out)}")
    print(
        f"next: `{PROG} show {out}`, `{PROG} evaluate ... --map {out}`, "
        f"`{PROG} solve {scores_dir} --target-speedup X --out DIR`, `{PROG} push {out} USER/REPO`"
    )


# solve ------------------------------------------------------------------------------------
def _cmd_solve(args, parser) -> None:
    _check_solver_args(parser, args)
    from .search.scores import SCORES_JSON, load_expert_scores

    source = Path(args.scores)
    if not (source / SCORES_JSON).is_file() and (source / "scores" / SCORES_JSON).is_file():
        source = source / "scores"  # the folder `search --out` wrote
    if not (source / SCORES_JSON).is_file():
        parser.error(f"{args.scores} holds no {SCORES_JSON}: pass the scores folder `{PROG} search` wrote (OUT/scores)")
    try:
        scores = load_expert_scores(source)
    except ValueError as e:
        raise CommandError(str(e)) from None
    out = _check_out(parser, args, keeps=source)
    _dense_steps_from(scores, args)
    result = _solve(scores, args)
    stage = _new_sibling(out)
    try:
        # the folder's own scores stay when this map is solved from them
        inside = (out / "scores").exists() and (out / "scores").resolve() == source.resolve()
        _carry(out, stage, "README.md", *(["scores"] if inside else []))
        result.config.save_pretrained(stage)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    _swap_in(stage, out)
    print(result.summary())
    print(f"\nwrote {out}: {_written(out)}")


def _dense_steps_from(scores, args) -> None:
    """Dense steps not given on the command line: the ones the scores were calibrated with.

    Fewer would make steps sparse that the calibration never scored; say so when they differ.
    """
    meta = (next(iter(scores.values())) if isinstance(scores, dict) else scores).metadata
    recorded = {"dense_warmup_steps": meta.get("dense_warmup_steps") or 0,
                "dense_warmup_fraction": meta.get("dense_warmup_fraction"),
                "dense_last_steps": meta.get("dense_last_steps") or 0}
    given = args.dense_warmup_steps is not None or args.dense_warmup_fraction is not None
    if not given:  # a fraction was resolved into steps at calibration: keep the fraction, as given then
        fraction = recorded["dense_warmup_fraction"]
        args.dense_warmup_steps, args.dense_warmup_fraction = (0, fraction) if fraction is not None else (
            recorded["dense_warmup_steps"], None)
    last_given = args.dense_last_steps is not None
    if not last_given:
        args.dense_last_steps = recorded["dense_last_steps"]
    if args.dense_warmup_steps is None:
        args.dense_warmup_steps = 0
    if not (given and last_given):
        warmup = (f"{args.dense_warmup_fraction:g} of the steps" if args.dense_warmup_fraction is not None
                  else str(args.dense_warmup_steps))
        print(f"dense steps as calibrated: warm-up {warmup}, last {args.dense_last_steps} "
              "(pass --dense-warmup-steps / --dense-last-steps for others)")


# show -------------------------------------------------------------------------------------
def _cmd_show(args, parser) -> None:
    from .plots import INSTALL_HINT, matplotlib_available, plot_mode_map

    config = _load_map(args.map)
    if not 0 <= args.step_range < config.num_ranges:
        parser.error(
            f"--step-range {args.step_range}: this map has {config.num_ranges} step range(s), "
            f"0 to {config.num_ranges - 1}"
        )
    print(config.summary())
    if args.no_png:
        return
    if not matplotlib_available():
        if args.png:
            raise CommandError(f"drawing {args.png} {INSTALL_HINT}")
        print(f"\n(no heatmap: {INSTALL_HINT})")
        return
    suffix = "" if args.step_range == 0 else f".range{args.step_range}"
    if args.png:
        png = Path(args.png)
    elif Path(args.map).is_dir():
        png = Path(args.map) / f"mode_map{suffix}.png"
    else:  # a Hub repo: its files live in the HF cache, which is not ours to write to
        png = Path(f"{args.map.rstrip('/').split('/')[-1]}.mode_map{suffix}.png")
    png.parent.mkdir(parents=True, exist_ok=True)
    plot_mode_map(config, png, step_range=args.step_range)
    print(f"\nheatmap: {png}")
    if config.num_ranges > 1 and args.step_range == 0:
        print(f"(this map changes with the step: --step-range 1..{config.num_ranges - 1} draws the others)")


# push -------------------------------------------------------------------------------------
def _cmd_push(args, parser) -> None:
    if not Path(args.folder).is_dir():
        parser.error(f"{args.folder} is not a folder: push uploads a map folder written by `{PROG} search` or `solve`")
    from .hub import HUB_ERRORS

    config = _load_map(args.folder)
    readme = Path(args.folder) / "README.md"
    # the folder's own card, edited or written by hand; an untouched generated one is made again
    # with the repo id in its usage lines
    own_card = readme.is_file() and readme.read_text(encoding="utf-8", errors="replace").strip() != str(
        config.generate_model_card()
    ).strip()
    try:
        url = config.push_to_hub(
            args.repo_id,
            private=args.private,
            token=args.token,
            revision=args.revision,
            create_pr=args.create_pr,
            commit_message=args.commit_message,
            model_card=readme if own_card else None,
        )
    except (*HUB_ERRORS, ValueError) as e:
        raise CommandError(
            f"could not push to {args.repo_id}: {type(e).__name__}: {e}\n"
            "Check the connection to the Hub, and log in with `hf auth login` (or pass --token) with write access."
        ) from None
    print(f"pushed {args.folder} to {args.repo_id}: {url}")
    print(f"use it: apply_sparse_vdit(pipe, {args.repo_id!r})")


# evaluate ---------------------------------------------------------------------------------
def _cmd_evaluate(args, parser) -> None:
    _check_video_args(parser, args)
    _check_device(parser, args)
    from .evaluate import evaluate_map

    config = _load_map(args.map)  # before the model: a wrong map fails in a second, not after a load
    if args.precision is not None:
        config = config.with_precision(args.precision)
    pipe = _load_pipeline(args)
    _check_family(pipe, config)
    if args.attention_backend:
        try:
            pipe.transformer.set_attention_backend(args.attention_backend)
        except (ValueError, ImportError) as e:
            raise CommandError(f"--attention-backend {args.attention_backend}: {e}") from None
    # each value from the first that sets it: the flags, the map's calibration, the tiny
    # pipeline's toy size; what none sets stays with the pipeline's own defaults
    calibrated = {
        k: v for k, v in config.calibration.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
    }
    call = call_arguments(
        call_defaults(args.tiny), **{k: calibrated.get(k) for k in ("height", "width", "num_frames", "guidance_scale")}
    )
    call = call_arguments(
        call, height=args.height, width=args.width, num_frames=args.frames, guidance_scale=args.guidance_scale
    )
    call = _image_call(pipe, call, args.image)
    report = evaluate_map(
        pipe,
        config,
        args.prompt,
        seed=args.seed,
        num_inference_steps=_steps(args, int(calibrated.get("num_inference_steps", 0))),
        backend=args.backend,
        warmup=not args.no_warmup,
        lpips=not args.no_lpips,
        **call,
    )
    report.settings["model"] = args.model or f"tiny {args.tiny}"
    report.settings["map"]["source"] = args.map
    report.settings["map"]["precision"] = args.precision or "as in the map"
    print(report.summary())
    if args.out:
        paths = report.save(args.out, fps=default_fps(pipe))
        print(f"\nwrote {', '.join(str(p) for p in paths.values())}")


# The parser -------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    from .search import runner as runner_defaults

    formatter = _Formatter
    parser = argparse.ArgumentParser(prog=PROG, description=DESCRIPTION, epilog=EPILOG, formatter_class=formatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(title="commands", dest="command", metavar="COMMAND", required=True)

    def command(name, run, help, description, epilog=None):
        sub = commands.add_parser(name, help=help, description=description, epilog=epilog, formatter_class=formatter)
        sub.set_defaults(run=run, parser=sub)
        return sub

    sub = command(
        "search",
        _cmd_search,
        "calibrate a pipeline on prompts, then solve for a mode map (a GPU job)",
        "Run the pipeline on calibration prompts, score every candidate sparse mode of every attention head, "
        "and pick modes: the least error for --target-speedup/--target-density, or the paper's rule without one. "
        "Writes the map to OUT (save_pretrained: config.json, mode_map.safetensors, mode_map.png, README.md) "
        "and the scores to OUT/scores, from which `solve` makes maps for other targets in seconds.",
        "example:\n  sparse-vdit search --model Wan-AI/Wan2.1-T2V-1.3B-Diffusers --prompts prompts.txt \\\n"
        "      --target-speedup 2 --dense-warmup-steps 10 --out ./wan-map\n"
        "  sparse-vdit search --tiny wan --steps 2 --out /tmp/tiny-map      # a tiny random model, seconds on a CPU",
    )
    _add_model_args(sub)
    sub.add_argument("--prompts", metavar="FILE", help="calibration prompts, one a line (default: a built-in set)")
    _add_video_args(sub, defaults="the pipeline's defaults (with --tiny: 9 frames of 32x48)")
    _add_solver_args(sub)
    group = sub.add_argument_group("scoring")
    group.add_argument(
        "--propagate",
        choices=("dense", "greedy"),
        default="dense",
        help="what later layers see: the dense output (default), or each head's pick so far (the paper's greedy pass)",
    )
    group.add_argument(
        "--tile-size",
        type=_tile_size,
        metavar="N",
        help=f"tokens per mask tile, a power of two >= 16 (default: {DEFAULT_TILE}, what the GPU kernels run best at; "
        f"{TINY_TILE_SIZE} with --tiny, whose grid is smaller than one {DEFAULT_TILE}-token tile)",
    )
    group.add_argument(
        "--step-ranges",
        type=_positive_int,
        default=runner_defaults.DEFAULT_STEP_RANGES,
        metavar="N",
        help="one map per range of steps: the steps between the dense warm-up and the dense last steps cut into N "
        f"equal ranges (default: {runner_defaults.DEFAULT_STEP_RANGES}; 1: one map for every step)",
    )
    group.add_argument(
        "--sensitivity",
        choices=("ranges", "layers", "none"),
        default="ranges",
        help="with a target: before solving, generate the first prompts with a probe map sparse in one step range "
        "(or range and layer) at a time, so each range's errors count by their effect on the final video "
        "(default: ranges; costs (ranges + 2) generations a prompt; not measured for two experts' scores)",
    )
    group.add_argument(
        "--sensitivity-prompts",
        type=_positive_int,
        default=runner_defaults.DEFAULT_SENSITIVITY_PROMPTS,
        metavar="N",
        help=f"prompts the sensitivity is measured on (default: {runner_defaults.DEFAULT_SENSITIVITY_PROMPTS})",
    )
    group.add_argument(
        "--sample-tiles",
        type=_positive_int,
        default=32,
        metavar="N",
        help="query tiles scored per attention call, a stratified sample (default: 32)",
    )
    group.add_argument(
        "--backend",
        choices=BACKENDS,
        default="auto",
        help="sparse attention kernels: auto (Gluon on H100/H200, else Triton on CUDA, PyTorch elsewhere), "
             "gluon, triton, torch, flex",
    )
    sub.add_argument("--out", required=True, metavar="DIR", help="folder for the map and its scores")
    _add_overwrite_arg(sub)
    sub.add_argument("-q", "--quiet", action="store_true", help="no progress bars")

    sub = command(
        "solve",
        _cmd_solve,
        "make a map for another target from saved search scores (seconds, no model)",
        "Solve again from the scores a search saved, for another target, warm-up or rule: no model, no GPU.",
        "example:\n  sparse-vdit solve ./wan-map/scores --target-speedup 3 --dense-warmup-steps 10 --out ./wan-map-3x",
    )
    sub.add_argument("scores", metavar="SCORES_DIR", help="OUT/scores of a search (or OUT itself)")
    _add_solver_args(sub)
    sub.set_defaults(dense_warmup_steps=None, dense_last_steps=None)  # unset: the scores' own (see _dense_steps_from)
    sub.add_argument("--out", required=True, metavar="DIR", help="folder for the map")
    _add_overwrite_arg(sub)

    sub = command(
        "show",
        _cmd_show,
        "print a map's mode table and draw its heatmap",
        "Print the mode counts per layer group (and the attention density at the calibration size), "
        "and draw the map as a PNG: layers down, heads across, one colour per mode.",
        "example:\n  sparse-vdit show ./wan-map\n  sparse-vdit show someone/wan21-1.3b-sparse-vdit --png wan.png",
    )
    sub.add_argument("map", metavar="DIR_OR_REPO", help="a map folder or a Hub repo id")
    png = sub.add_mutually_exclusive_group()
    png.add_argument(
        "--png",
        metavar="PATH",
        help="where to draw the heatmap (default: DIR/mode_map.png; for a repo, ./NAME.mode_map.png)",
    )
    png.add_argument("--no-png", action="store_true", help="only print the table")
    sub.add_argument(
        "--step-range",
        type=_non_negative_int,
        default=0,
        metavar="R",
        help="which step range to draw, for maps that change with the step (default: 0)",
    )

    sub = command(
        "push",
        _cmd_push,
        "upload a map folder to the Hugging Face Hub",
        "Upload a map folder (config.json, mode_map.safetensors, the heatmap and a generated model card) "
        "to a Hub model repo in one commit, creating the repo if needed.",
        "example:\n  sparse-vdit push ./wan-map your-name/wan2.1-1.3b-sparse-vdit --private",
    )
    sub.add_argument("folder", metavar="DIR", help="a map folder written by search or solve")
    sub.add_argument("repo_id", metavar="REPO_ID", help="user/name or org/name (a bare name goes to your account)")
    sub.add_argument("--private", action="store_true", default=None, help="create the repo private")
    sub.add_argument("--revision", metavar="BRANCH", help="push to this branch, created if needed (default: main)")
    sub.add_argument("--create-pr", action="store_true", help="open a pull request instead of committing")
    sub.add_argument(
        "--commit-message", metavar="TEXT", default="Upload Sparse-vDiT mode map", help="(default: %(default)s)"
    )
    sub.add_argument("--token", help="Hub token with write access (default: the one `hf auth login` saved)")

    sub = command(
        "evaluate",
        _cmd_evaluate,
        "generate one video dense and sparse, compare them (PSNR, SSIM, LPIPS) and time both",
        "Generate the prompt from the same seed with the stock attention, then with the map applied; print "
        "PSNR, SSIM and LPIPS of the sparse video against the dense one (torchmetrics; LPIPS needs torchvision "
        "and a weights download, else it says unavailable and why), the time of both runs and the speedup.",
        "example:\n  sparse-vdit evaluate --model Wan-AI/Wan2.1-T2V-1.3B-Diffusers --map ./wan-map \\\n"
        '      --prompt "a cat walks on the grass, realistic" --attention-backend _native_cudnn --out ./wan-eval',
    )
    _add_model_args(sub)
    sub.add_argument("--map", required=True, metavar="DIR_OR_REPO", help="the mode map: a folder or a Hub repo id")
    sub.add_argument("--prompt", required=True, help="what to generate")
    _add_video_args(sub, defaults="as the map was calibrated, else the pipeline's defaults")
    group = sub.add_argument_group("attention")
    group.add_argument(
        "--backend",
        choices=BACKENDS,
        default="auto",
        help="sparse attention kernels: auto (Gluon on H100/H200, else Triton on CUDA, PyTorch elsewhere), "
             "gluon, triton, torch, flex",
    )
    group.add_argument(
        "--attention-backend",
        metavar="NAME",
        help="diffusers attention backend of the dense run and the map's dense steps, e.g. _native_cudnn "
        "(the fastest dense one on H100s; default: diffusers' default)",
    )
    group.add_argument(
        "--precision",
        choices=PRECISIONS,
        help="run every head of the map in this precision (default: each head as the map says); fp8 is fast on "
        "Hopper GPUs and an exact simulation of its rounding elsewhere, to measure quality",
    )
    group.add_argument(
        "--no-warmup",
        action="store_true",
        help="time the first runs too (by default a short run first keeps compilation out of the timings)",
    )
    sub.add_argument("--no-lpips", action="store_true", help="skip LPIPS (it downloads network weights on first use)")
    sub.add_argument(
        "--out", metavar="DIR", help="also save both videos (MP4 with imageio, else PNG frames) and report.json"
    )
    sub.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.run(args, args.parser)
    except CommandError as e:
        print(f"{PROG} {args.command}: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())


def _image_call(pipe, call: dict, image: str | None) -> dict:
    """``call`` with the ``--image`` picture; an image-to-video pipeline without one is refused before the run."""
    if image is not None:
        from diffusers.utils import load_image

        try:
            call = {**call, "image": load_image(image)}
        except (OSError, ValueError) as e:
            raise CommandError(f"--image {image}: cannot read it as a picture: {e}") from None
    if needs_image(pipe) and "image" not in call:
        raise CommandError(f"{type(pipe).__name__} is an image-to-video pipeline: pass the picture to animate with --image")
    return call
