"""Accumulated per-head scores on disk, so a new budget is a new solve, not a new calibration.

A :class:`ScoreSet` holds, per step range, layer, head and candidate, the error averaged over
scored calls, the calls behind each average, the candidates with their densities, the
measured stripe mass per key tile, and metadata (model, prompts, resolution, steps, how the
scores were taken). On disk it is two files:

* ``scores.json``: everything but the arrays;
* ``scores.safetensors``: ``errors`` float64 ``(ranges, layers, heads, candidates)``,
  ``counts`` int64 ``(ranges, layers)``, ``densities`` float64 ``(candidates,)`` and
  ``stripe_mass`` float64 ``(ranges, layers, heads, video_tiles)``, and ``sensitivity`` float64
  ``(ranges, layers)`` once measured (:mod:`.sensitivity`), and ``fp8_errors`` float64
  ``(ranges, layers, heads)`` when the calibration measured FP8 attention (scores of earlier
  versions have none); its header repeats the JSON so the file describes itself.

Nothing is pickled. Saves are atomic and a load refuses a pair that was not saved together
(:mod:`..files`); it validates every field, as stored, and says what is wrong.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from .. import files
from ..layout import TokenLayout
from ..modes import Mode
from .candidates import Candidate
from .stripes import selectable_tiles, tile_positions, top_stripe_tiles

__all__ = ["ScoreSet", "SCORES_JSON", "SCORES_TENSORS", "METRICS"]

SCORES_SCHEMA_VERSION = 1
SCORES_JSON = "scores.json"
SCORES_TENSORS = "scores.safetensors"
METRICS = ("projected", "mse")
_KIND = "sparse_vdit_scores"
_FORMAT_KEY = "sparse_vdit_scores"
_REQUIRED = (
    "layout", "tile_size", "num_layers", "num_heads", "metric", "step_ranges", "sample_tiles", "candidates", "metadata"
)
_FIX = "re-run the scoring (`sparse-vdit search ... --out DIR` writes DIR/scores)"
_ARRAYS = {"errors": torch.float64, "counts": torch.int64, "densities": torch.float64, "stripe_mass": torch.float64}
_OPTIONAL = ("sensitivity", "fp8_errors")


def layout_to_dict(layout: TokenLayout) -> dict[str, Any]:
    return {k: getattr(layout, k) for k in ("frames", "height", "width", "text_tokens", "text_position")}


def _fail(where, msg):
    raise ValueError(f"invalid Sparse-vDiT scores{f' in {where}' if where else ''}: {msg}")


@dataclass
class ScoreSet:
    """Per (step range, layer, head, candidate) errors averaged over calls, plus what the solver needs."""

    layout: TokenLayout
    tile_size: int
    candidates: tuple[Candidate, ...]
    errors: torch.Tensor  # float64 (R, L, H, C): mean error per scored call
    counts: torch.Tensor  # int64 (R, L): scored calls (batch items) behind each mean
    densities: torch.Tensor  # float64 (C,)
    stripe_mass: torch.Tensor  # float64 (R, L, H, video_tiles): mean attention mass per key tile
    metric: str = "projected"
    step_ranges: list[list[int]] = field(default_factory=lambda: [[0, -1]])
    sample_tiles: int = 0
    metadata: dict[str, Any] = field(default_factory=dict)
    # float64 (R, L): how much a unit of each entry's error moves the final latents, mean 1
    # (:func:`.sensitivity.measure_sensitivity`); None: not measured, every entry counts alike
    sensitivity: torch.Tensor | None = None
    # float64 (R, L, H): relative L2 error of dense FP8 attention against exact attention on the
    # calibration's q, k, v (:func:`..kernels.quantize.fp8_attention_error`); None: not measured
    fp8_errors: torch.Tensor | None = None

    def __post_init__(self):
        self.candidates = tuple(self.candidates)
        self.step_ranges = [list(r) for r in self.step_ranges]  # integers checked in validate, not coerced
        self.validate()

    # Shape --------------------------------------------------------------------------------
    @property
    def num_ranges(self) -> int:
        return self.errors.shape[0]

    @property
    def num_layers(self) -> int:
        return self.errors.shape[1]

    @property
    def num_heads(self) -> int:
        return self.errors.shape[2]

    @property
    def weighted_errors(self) -> torch.Tensor:
        """What the budget solver minimises: ``errors`` times the measured sensitivity, if any."""
        if self.sensitivity is None:
            return self.errors
        return self.errors * self.sensitivity[:, :, None, None]

    def with_sensitivity(self, sensitivity: torch.Tensor | None) -> "ScoreSet":
        """A copy with ``sensitivity`` set (None: removed)."""
        out = copy.copy(self)
        out.metadata = copy.deepcopy(self.metadata)
        if sensitivity is None:
            out.metadata.pop("sensitivity", None)
        out.sensitivity = None if sensitivity is None else sensitivity.to(torch.float64).clone()
        out.validate()
        return out

    @property
    def full_index(self) -> int:
        return next(i for i, c in enumerate(self.candidates) if c.mode is Mode.FULL)

    # Stripes ------------------------------------------------------------------------------
    def stripe_tiles(self, count: int, sink_frames: int = 1) -> torch.Tensor:
        """int64 ``(R, L, H, count)``: each head's ``count`` heaviest selectable key tiles, best first."""
        selectable = selectable_tiles(self.layout, self.tile_size, sink_frames)
        return top_stripe_tiles(self.stripe_mass, count, selectable)

    def stripes(self, range_index: int, layer: int, head: int, count: int, sink_frames: int = 1) -> tuple[float, ...]:
        """Relative stripe positions (ModeSpec's unit) of one head, from the total measured mass."""
        tiles = self.stripe_tiles(count, sink_frames)[range_index, layer, head]
        return tile_positions(sorted(tiles.tolist()), self.layout.video_tiles(self.tile_size))

    # Combining ----------------------------------------------------------------------------
    def with_ranges(self, pick: Sequence[int], step_ranges: Sequence[Sequence[int]]) -> "ScoreSet":
        """The scores of step ranges ``pick`` (repeats allowed: a range split in two), as ``step_ranges``."""
        pick = torch.as_tensor(list(pick), dtype=torch.long)
        return ScoreSet(self.layout, self.tile_size, self.candidates, self.errors[pick], self.counts[pick],
                        self.densities.clone(), self.stripe_mass[pick], self.metric, [list(r) for r in step_ranges],
                        self.sample_tiles, copy.deepcopy(self.metadata),
                        sensitivity=None if self.sensitivity is None else self.sensitivity[pick].clone(),
                        fp8_errors=None if self.fp8_errors is None else self.fp8_errors[pick].clone())

    def merge(self, *others: "ScoreSet") -> "ScoreSet":
        """Scores of several runs of the same set-up (e.g. prompt shards on several GPUs), call-weighted."""
        runs = (self, *others)
        for o in others:
            same = (o.layout, o.tile_size, o.candidates, o.metric, o.step_ranges, o.errors.shape) == (
                self.layout, self.tile_size, self.candidates, self.metric, self.step_ranges, self.errors.shape
            )
            if not same:
                raise ValueError("only scores of the same layout, tile size, candidates, metric, step ranges and model merge")
        counts = sum(r.counts for r in runs)
        w = [r.counts.double() / counts.clamp(min=1).double() for r in runs]
        errors = sum(wi[..., None, None] * r.errors for wi, r in zip(w, runs))
        mass = sum(wi[..., None, None] * r.stripe_mass for wi, r in zip(w, runs))
        meta = copy.deepcopy(self.metadata)
        meta["merged_runs"] = len(runs)
        meta.pop("sensitivity", None)  # measured on one run's scores: measure again on the merged ones
        fp8 = None
        if all(r.fp8_errors is not None for r in runs):
            fp8 = sum(wi[..., None] * r.fp8_errors for wi, r in zip(w, runs))
        return ScoreSet(self.layout, self.tile_size, self.candidates, errors, counts, self.densities.clone(), mass,
                        self.metric, self.step_ranges, self.sample_tiles, meta, fp8_errors=fp8)

    # Validation ---------------------------------------------------------------------------
    def validate(self, where: str = "") -> None:
        if self.metric not in METRICS:
            _fail(where, f"metric must be one of {METRICS}, got {self.metric!r}")
        if not self.candidates or not all(isinstance(c, Candidate) for c in self.candidates):
            _fail(where, "candidates must be a non-empty list of Candidate")
        if sum(c.mode is Mode.FULL for c in self.candidates) != 1:
            _fail(where, "the candidates must include FULL exactly once (it is every rule's fallback)")
        if len(set(self.candidates)) != len(self.candidates):
            _fail(where, "candidates must be distinct")
        for name, dtype in _ARRAYS.items():
            value = getattr(self, name)
            if not isinstance(value, torch.Tensor) or value.dtype != dtype:
                _fail(where, f"{name} must be a {dtype} tensor")
        e = self.errors
        if e.dim() != 4 or e.shape[3] != len(self.candidates) or 0 in e.shape[:3]:
            _fail(where, f"errors has shape {tuple(e.shape)}, expected (ranges, layers, heads, {len(self.candidates)} candidates)")
        if not torch.isfinite(e).all() or (e < 0).any():
            _fail(where, "errors must be finite and >= 0")
        if tuple(self.counts.shape) != tuple(e.shape[:2]) or (self.counts < 0).any():
            _fail(where, f"counts must be >= 0 with shape {tuple(e.shape[:2])}, got {tuple(self.counts.shape)}")
        d = self.densities
        if tuple(d.shape) != (len(self.candidates),) or not torch.isfinite(d).all() or (d < 0).any() or (d > 1 + 1e-9).any():
            _fail(where, f"densities must be {len(self.candidates)} fractions in [0, 1]")
        nvt = self.layout.video_tiles(self.tile_size)
        m = self.stripe_mass
        if tuple(m.shape) != (*e.shape[:3], nvt) or not torch.isfinite(m).all() or (m < 0).any():
            _fail(where, f"stripe_mass must be finite, >= 0, shaped {(*e.shape[:3], nvt)}; got {tuple(m.shape)}")
        w = self.sensitivity
        if w is not None and (not isinstance(w, torch.Tensor) or w.dtype != torch.float64 or tuple(w.shape) != tuple(e.shape[:2])
                              or not torch.isfinite(w).all() or (w <= 0).any()):
            _fail(where, f"sensitivity must be None or a float64 tensor of positive finite values shaped {tuple(e.shape[:2])}")
        f = self.fp8_errors
        if f is not None and (not isinstance(f, torch.Tensor) or f.dtype != torch.float64 or tuple(f.shape) != tuple(e.shape[:3])
                              or not torch.isfinite(f).all() or (f < 0).any()):
            _fail(where, f"fp8_errors must be None or a float64 tensor of finite values >= 0 shaped {tuple(e.shape[:3])}")
        if len(self.step_ranges) != e.shape[0]:
            _fail(where, f"{e.shape[0]} step ranges of errors but {len(self.step_ranges)} step_ranges")
        if not all(len(r) == 2 and all(files.is_int(x) for x in r) for r in self.step_ranges):
            _fail(where, f"step_ranges must be [start, end] integer pairs, got {files.describe(self.step_ranges)}")
        start = 0
        for i, r in enumerate(self.step_ranges):
            last = i == len(self.step_ranges) - 1
            if r[0] != start or (r[1] <= r[0] and not (last and r[1] == -1)):
                _fail(where, f"step_ranges must tile the steps from 0 in order, the last ending at -1; got {self.step_ranges}")
            start = r[1]
        if not isinstance(self.metadata, dict):
            _fail(where, f"metadata must be a dict, got {files.describe(self.metadata)}")
        if not files.is_int(self.sample_tiles) or self.sample_tiles < 0:
            _fail(where, f"sample_tiles must be an integer >= 0, got {files.describe(self.sample_tiles)}")
        if not files.is_int(self.tile_size) or self.tile_size < 16 or self.tile_size & (self.tile_size - 1):
            _fail(where, f"tile_size must be a power of two >= 16, got {self.tile_size!r}")

    # Files --------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        from .. import __version__

        return {
            "library": "diffusers-sparse-vdit",
            "library_version": __version__,
            "kind": _KIND,
            "schema_version": SCORES_SCHEMA_VERSION,
            "layout": layout_to_dict(self.layout),
            "tile_size": self.tile_size,
            "num_layers": self.num_layers,
            "num_heads": self.num_heads,
            "metric": self.metric,
            "step_ranges": self.step_ranges,
            "sample_tiles": self.sample_tiles,
            "candidates": [c.to_dict() for c in self.candidates],
            "metadata": self.metadata,
        }

    def save(self, directory: str | Path) -> Path:
        """Write ``scores.json`` and ``scores.safetensors`` into ``directory``, atomically (see :mod:`..files`)."""
        directory = Path(directory)
        text = json.dumps(self.to_dict(), indent=2, sort_keys=True, allow_nan=False)
        tensors = {name: getattr(self, name).contiguous() for name in _ARRAYS}
        for name in _OPTIONAL:
            if getattr(self, name) is not None:
                tensors[name] = getattr(self, name).contiguous()
        files.write_pair(directory, SCORES_JSON, text, SCORES_TENSORS, tensors, _FORMAT_KEY)
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> "ScoreSet":
        """Read and validate scores written by :meth:`save`."""
        directory = Path(directory)
        json_file, tensor_file = directory / SCORES_JSON, directory / SCORES_TENSORS
        try:
            data = json.loads(json_file.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{json_file} is not a readable Sparse-vDiT scores file: {e}") from None
        if not isinstance(data, dict) or data.get("library") != "diffusers-sparse-vdit" or data.get("kind") != _KIND:
            raise ValueError(
                f"{json_file} is not diffusers-sparse-vdit search scores (needs 'library': 'diffusers-sparse-vdit' "
                f"and 'kind': '{_KIND}'); a mode map (config.json) is solved from scores, not loaded as them"
            )
        if data.get("schema_version") != SCORES_SCHEMA_VERSION:
            _fail(json_file, f"schema_version {data.get('schema_version')!r} is not {SCORES_SCHEMA_VERSION}; re-run the scoring")
        missing = [key for key in _REQUIRED if key not in data]
        if missing:
            _fail(json_file, f"missing keys {missing}; {_FIX}")
        for key in ("tile_size", "sample_tiles", "num_layers", "num_heads"):
            files.check_int(str(json_file), key, data[key], minimum=0)
        tensors = files.read_tensors(tensor_file, json_file, data, _FORMAT_KEY, _FIX)
        if set(tensors) - set(_OPTIONAL) != set(_ARRAYS):
            _fail(tensor_file, f"must hold exactly the arrays {list(_ARRAYS)} (and optionally {', '.join(_OPTIONAL)}), "
                  f"holds {sorted(tensors)}; {_FIX}")
        for name in _OPTIONAL:
            if name in tensors and tensors[name].dtype != torch.float64:
                _fail(tensor_file, f"{name} must be float64, is {tensors[name].dtype}; {_FIX}")
        try:
            layout = TokenLayout(**data["layout"])
            candidates = tuple(Candidate.from_dict(c) for c in data["candidates"])
            scores = cls(
                layout=layout,
                tile_size=data["tile_size"],
                candidates=candidates,
                metric=data["metric"],
                step_ranges=data["step_ranges"],
                sample_tiles=data["sample_tiles"],
                metadata=data["metadata"],
                sensitivity=tensors.get("sensitivity"),
                fp8_errors=tensors.get("fp8_errors"),
                **{k: tensors[k] for k in _ARRAYS},
            )
        except ValueError as e:
            if str(e).startswith("invalid Sparse-vDiT scores"):
                raise ValueError(str(e).replace("scores:", f"scores in {directory}:", 1)) from None
            _fail(directory, str(e))
        except (KeyError, TypeError) as e:
            _fail(json_file, f"malformed field: {e!r}; {_FIX}")
        if (data.get("num_layers"), data.get("num_heads")) != (scores.num_layers, scores.num_heads):
            _fail(directory, f"{json_file.name} says {data.get('num_layers')} layers x {data.get('num_heads')} heads, "
                  f"the arrays hold {scores.num_layers} x {scores.num_heads}")
        return scores

    def summary(self) -> str:
        lines = [f"ScoreSet: {self.num_layers} layers x {self.num_heads} heads, {self.num_ranges} step range(s), "
                 f"{self.layout}, tile {self.tile_size}, metric {self.metric}, "
                 f"calls per layer {int(self.counts.min())}..{int(self.counts.max())}"]
        mean = self.errors.mean(dim=(0, 1, 2))
        for c, d, e in zip(self.candidates, self.densities.tolist(), mean.tolist()):
            lines.append(f"  {str(c):<44} density {d:6.3f}   mean error {e:.3e}")
        if self.fp8_errors is not None:
            f = self.fp8_errors[self.counts > 0]
            if f.numel():
                lines.append(f"  FP8 attention error per head: median {float(f.median()):.3e}, max {float(f.max()):.3e}")
        return "\n".join(lines)

    __str__ = summary


def as_step_ranges(step_ranges: Sequence[Sequence[int]] | None) -> list[list[int]]:
    return [[0, -1]] if step_ranges is None else [list(map(int, r)) for r in step_ranges]


EXPERT_2 = "transformer_2"  # the subfolder of a scores folder that holds the second expert's scores


def save_expert_scores(scores: "ScoreSet | dict[str, ScoreSet]", directory: str | Path) -> Path:
    """Save what :func:`~.runner.calibrate` returned: one ScoreSet in ``directory``; two experts'
    scores as ``directory`` (``transformer``) and ``directory/transformer_2``."""
    directory = Path(directory)
    if isinstance(scores, ScoreSet):
        return scores.save(directory)
    scores["transformer"].save(directory)
    scores[EXPERT_2].save(directory / EXPERT_2)
    return directory


def load_expert_scores(directory: str | Path) -> "ScoreSet | dict[str, ScoreSet]":
    """Load what :func:`save_expert_scores` wrote, checking that two experts' scores come from one run."""
    directory = Path(directory)
    first = ScoreSet.load(directory)
    if not (directory / EXPERT_2 / SCORES_JSON).is_file():
        return first
    second = ScoreSet.load(directory / EXPERT_2)
    run = [s.metadata.get("calibration_run") for s in (first, second)]
    names = [s.metadata.get("expert") for s in (first, second)]
    if names != ["transformer", EXPERT_2] or run[0] is None or run[0] != run[1]:
        raise ValueError(
            f"{directory} and {directory / EXPERT_2} are not from the same calibration run (experts {names}, runs "
            f"{run}): the scores of two experts are solved together, so keep the folders one search wrote together; "
            "re-run `sparse-vdit search` for new ones"
        )
    return {"transformer": first, EXPERT_2: second}
