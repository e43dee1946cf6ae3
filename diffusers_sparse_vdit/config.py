"""``SparseVDiTConfig``: the per-(layer, head) mode map of one transformer, and its files.

On disk a map is two files:

* ``config.json``: everything but the per-head arrays (family, transformer class, target
  modules, tile size, dense warm-up, step ranges, calibration metadata, schema version);
* ``mode_map.safetensors``: the per-head arrays, each shaped ``(ranges, layers, heads)``:
  ``modes`` (uint8 :class:`Mode` ids), ``widths`` (float32 band widths in frames),
  ``sink_frames`` (uint8) and ``stripes`` (float32 ``(..., K)`` relative stripe positions,
  padded with -1). Its header repeats ``config.json`` under ``sparse_vdit_config`` so the
  file describes itself on its own.

``ranges`` is 1 unless the map changes with the denoising step (``step_ranges``).
Nothing is pickled; everything read is validated and a bad file gets an error that says
what is wrong.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any, Sequence

import torch
from safetensors.torch import load_file, save_file

from .modes import Mode, ModeSpec

__all__ = ["SparseVDiTConfig", "FAMILIES", "SCHEMA_VERSION", "CONFIG_NAME", "MODE_MAP_NAME"]

SCHEMA_VERSION = 1
CONFIG_NAME = "config.json"
MODE_MAP_NAME = "mode_map.safetensors"
_FORMAT_KEY = "sparse_vdit_config"

# family -> diffusers transformer classes it covers
FAMILIES: dict[str, tuple[str, ...]] = {
    "wan": ("WanTransformer3DModel",),
    "hunyuan_video": ("HunyuanVideoTransformer3DModel",),
    "cogvideox": ("CogVideoXTransformer3DModel",),
}


class SparseVDiTConfig:
    """Mode map of one transformer: which mode (and knob) every head of every target layer runs.

    Build one from head specs with :meth:`from_specs` (or let the search build it), save it
    with :meth:`save_pretrained`, load it with :meth:`from_pretrained`.
    """

    def __init__(
        self,
        *,
        family: str,
        transformer_class: str,
        target_modules: Sequence[str],
        num_heads: int,
        modes: torch.Tensor,
        widths: torch.Tensor | None = None,
        sink_frames: torch.Tensor | None = None,
        stripes: torch.Tensor | None = None,
        tile_size: int = 128,
        step_ranges: Sequence[Sequence[int]] | None = None,
        dense_warmup_steps: int = 0,
        dense_above_timestep: float | None = None,
        base_model: str | None = None,
        calibration: dict[str, Any] | None = None,
        schema_version: int = SCHEMA_VERSION,
    ):
        modes = torch.as_tensor(modes)
        if modes.dim() == 2:
            modes = modes[None]
        shape = tuple(modes.shape)
        self.family = family
        self.transformer_class = transformer_class
        self.target_modules = list(target_modules)
        self.num_heads = int(num_heads)
        self.modes = modes.to(torch.uint8)
        self.widths = _as(widths, shape, torch.float32, 0.0)
        self.sink_frames = _as(sink_frames, shape, torch.uint8, 1)
        self.stripes = torch.full((*shape, 0), -1.0) if stripes is None else torch.as_tensor(stripes, dtype=torch.float32)
        if self.stripes.dim() == 3:
            self.stripes = self.stripes[None]
        self.tile_size = int(tile_size)
        self.step_ranges = [list(map(int, r)) for r in step_ranges] if step_ranges is not None else [[0, -1]]
        self.dense_warmup_steps = int(dense_warmup_steps)
        self.dense_above_timestep = None if dense_above_timestep is None else float(dense_above_timestep)
        self.base_model = base_model
        self.calibration = dict(calibration or {})
        self.schema_version = int(schema_version)
        self.validate()

    # Construction -----------------------------------------------------------------------
    @classmethod
    def from_specs(
        cls,
        specs: Sequence[Sequence[ModeSpec]] | Sequence[Sequence[Sequence[ModeSpec]]],
        *,
        family: str,
        transformer_class: str | None = None,
        target_modules: Sequence[str],
        **kwargs,
    ) -> "SparseVDiTConfig":
        """From ``specs[layer][head]`` (or ``specs[range][layer][head]`` with ``step_ranges``)."""
        nested = specs and specs[0] and isinstance(specs[0][0], (list, tuple))
        ranges = [list(map(list, r)) for r in specs] if nested else [list(map(list, specs))]
        num_heads = len(ranges[0][0])
        shape = (len(ranges), len(ranges[0]), num_heads)
        if any(len(layer) != num_heads for r in ranges for layer in r) or any(len(r) != shape[1] for r in ranges):
            raise ValueError("every layer of every step range needs the same number of head specs")
        flat = [s for r in ranges for layer in r for s in layer]
        k = max([len(s.stripes) for s in flat] + [0])
        stripes = torch.full((len(flat), k), -1.0)
        for i, s in enumerate(flat):
            stripes[i, : len(s.stripes)] = torch.tensor(s.stripes, dtype=torch.float32)
        return cls(
            family=family,
            transformer_class=transformer_class or FAMILIES.get(family, ("",))[0],
            target_modules=target_modules,
            num_heads=num_heads,
            modes=torch.tensor([int(s.mode) for s in flat]).reshape(shape),
            widths=torch.tensor([s.width for s in flat]).reshape(shape),
            sink_frames=torch.tensor([s.sink_frames for s in flat]).reshape(shape),
            stripes=stripes.reshape(*shape, k),
            **kwargs,
        )

    # Queries ----------------------------------------------------------------------------
    @property
    def num_layers(self) -> int:
        return len(self.target_modules)

    @property
    def num_ranges(self) -> int:
        return self.modes.shape[0]

    def range_index(self, step: int | None) -> int:
        """Which step range a denoising step falls in (the first range when the step is unknown)."""
        if step is None:
            return 0
        for i, (start, end) in enumerate(self.step_ranges):
            if step >= start and (end < 0 or step < end):
                return i
        return self.num_ranges - 1

    def is_dense(self, step: int | None = None, timestep: float | None = None) -> bool:
        """Whether the dense warm-up applies: early steps, or timesteps above the threshold."""
        if step is not None and step < self.dense_warmup_steps:
            return True
        return self.dense_above_timestep is not None and timestep is not None and timestep > self.dense_above_timestep

    def head_specs(self, layer: int, step: int | None = None) -> tuple[ModeSpec, ...]:
        r = self.range_index(step)
        return tuple(self._spec(r, layer, h) for h in range(self.num_heads))

    def _spec(self, r: int, layer: int, head: int) -> ModeSpec:
        mode = Mode(int(self.modes[r, layer, head]))
        if mode in (Mode.DIAGONAL, Mode.MULTI_DIAGONAL):
            return ModeSpec(mode, width=float(self.widths[r, layer, head]))
        if mode is Mode.VERTICAL_STRIPE:
            stripes = tuple(float(s) for s in self.stripes[r, layer, head] if s >= 0)
            return ModeSpec(mode, stripes=stripes, sink_frames=int(self.sink_frames[r, layer, head]))
        return ModeSpec(mode)

    def mode_counts(self) -> dict[str, int]:
        """How many (range, layer, head) entries run each mode."""
        return {m.name: int((self.modes == m).sum()) for m in Mode}

    # Validation -------------------------------------------------------------------------
    def validate(self) -> None:
        def fail(msg):
            raise ValueError(f"invalid Sparse-vDiT mode map: {msg}")

        if self.schema_version != SCHEMA_VERSION:
            fail(
                f"schema_version {self.schema_version} is not supported by this version of diffusers-sparse-vdit "
                f"(it reads {SCHEMA_VERSION}); upgrade the package or re-run the search"
            )
        if self.family not in FAMILIES:
            fail(f"unknown model family {self.family!r}; expected one of {sorted(FAMILIES)}")
        if not self.target_modules or not all(isinstance(m, str) and m for m in self.target_modules):
            fail("target_modules must be a non-empty list of module names")
        shape = tuple(self.modes.shape)
        if len(shape) != 3 or shape[1:] != (self.num_layers, self.num_heads):
            fail(f"modes has shape {shape}, expected (ranges, {self.num_layers} layers, {self.num_heads} heads)")
        for name in ("widths", "sink_frames"):
            if tuple(getattr(self, name).shape) != shape:
                fail(f"{name} has shape {tuple(getattr(self, name).shape)}, expected {shape}")
        if self.stripes.dim() != 4 or tuple(self.stripes.shape[:3]) != shape:
            fail(f"stripes has shape {tuple(self.stripes.shape)}, expected {shape} + (max stripes,)")
        if int(self.modes.max()) >= len(Mode):
            fail(f"mode ids must be 0..{len(Mode) - 1}, found {int(self.modes.max())}")
        if not torch.isfinite(self.widths).all() or (self.widths < 0).any():
            fail("band widths must be finite and >= 0")
        stripes = self.stripes[self.stripes != -1]
        if ((stripes < 0) | (stripes >= 1) | stripes.isnan()).any():
            fail("stripe positions must lie in [0, 1) (or be -1 padding)")
        if len(self.step_ranges) != shape[0]:
            fail(f"{shape[0]} step ranges of modes but {len(self.step_ranges)} step_ranges")
        expected_start = 0
        for i, r in enumerate(self.step_ranges):
            last = i == len(self.step_ranges) - 1
            if len(r) != 2 or r[0] != expected_start or (r[1] <= r[0] and not (last and r[1] == -1)):
                fail(f"step_ranges must tile the steps from 0 in order, the last ending at -1 (open); got {self.step_ranges}")
            expected_start = r[1]
        if not self.tile_size >= 16 or self.tile_size & (self.tile_size - 1):
            fail(f"tile_size must be a power of two >= 16, got {self.tile_size}")
        if self.dense_warmup_steps < 0:
            fail("dense_warmup_steps must be >= 0")
        if self.dense_above_timestep is not None and not math.isfinite(self.dense_above_timestep):
            fail("dense_above_timestep must be a finite number or null")

    # Serialization ----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The JSON part (everything but the per-head arrays)."""
        from . import __version__

        return {
            "schema_version": self.schema_version,
            "library": "diffusers-sparse-vdit",
            "library_version": __version__,
            "family": self.family,
            "transformer_class": self.transformer_class,
            "base_model": self.base_model,
            "num_layers": self.num_layers,
            "num_heads": self.num_heads,
            "target_modules": self.target_modules,
            "tile_size": self.tile_size,
            "step_ranges": self.step_ranges,
            "dense_warmup_steps": self.dense_warmup_steps,
            "dense_above_timestep": self.dense_above_timestep,
            "calibration": self.calibration,
            "mode_counts": self.mode_counts(),
        }

    def tensors(self) -> dict[str, torch.Tensor]:
        return {
            "modes": self.modes.contiguous(),
            "widths": self.widths.contiguous(),
            "sink_frames": self.sink_frames.contiguous(),
            "stripes": self.stripes.contiguous(),
        }

    def save_files(self, save_directory: str | Path) -> Path:
        """Write ``config.json`` and ``mode_map.safetensors`` into ``save_directory``."""
        directory = Path(save_directory)
        directory.mkdir(parents=True, exist_ok=True)
        text = json.dumps(self.to_dict(), indent=2, sort_keys=True)
        (directory / CONFIG_NAME).write_text(text + "\n")
        save_file(self.tensors(), str(directory / MODE_MAP_NAME), metadata={"format": "pt", _FORMAT_KEY: text})
        return directory

    @classmethod
    def load_files(cls, config_file: str | Path, mode_map_file: str | Path) -> "SparseVDiTConfig":
        """Read and validate a map from its two files."""
        config_file, mode_map_file = Path(config_file), Path(mode_map_file)
        try:
            data = json.loads(config_file.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{config_file} is not a readable Sparse-vDiT config.json: {e}") from None
        if not isinstance(data, dict) or data.get("library") != "diffusers-sparse-vdit":
            raise ValueError(
                f"{config_file} is not a diffusers-sparse-vdit config (no 'library': 'diffusers-sparse-vdit'); "
                "is this a model repository rather than a Sparse-vDiT mode map?"
            )
        try:
            tensors = load_file(str(mode_map_file))
        except Exception as e:  # safetensors raises its own error types for corrupt files
            raise ValueError(f"{mode_map_file} is not a readable safetensors file: {e}") from None
        missing = {"modes", "widths", "sink_frames", "stripes"} - set(tensors)
        if missing:
            raise ValueError(f"{mode_map_file} lacks the arrays {sorted(missing)}")
        kwargs = {k: copy.deepcopy(data.get(k)) for k in _INIT_KEYS if k in data}
        unknown = set(data) - set(_INIT_KEYS) - {"library", "library_version", "num_layers", "mode_counts"}
        if unknown:
            from diffusers.utils import logging

            logging.get_logger(__name__).warning(f"ignoring unknown keys {sorted(unknown)} in {config_file}")
        config = cls(**kwargs, **tensors)
        if data.get("num_layers") not in (None, config.num_layers):
            raise ValueError(f"{config_file} says num_layers={data['num_layers']} but lists {config.num_layers} target modules")
        return config

    # Comparison and display -------------------------------------------------------------
    def __eq__(self, other) -> bool:
        if not isinstance(other, SparseVDiTConfig):
            return NotImplemented
        mine, theirs = self.to_dict(), other.to_dict()
        return mine == theirs and all(torch.equal(a, b) for a, b in zip(self.tensors().values(), other.tensors().values()))

    def __repr__(self) -> str:
        counts = ", ".join(f"{k}={v}" for k, v in self.mode_counts().items() if v)
        return (
            f"SparseVDiTConfig(family={self.family!r}, {self.num_layers} layers x {self.num_heads} heads, "
            f"{self.num_ranges} step range(s), tile {self.tile_size}, {counts})"
        )


_INIT_KEYS = (
    "family",
    "transformer_class",
    "target_modules",
    "num_heads",
    "tile_size",
    "step_ranges",
    "dense_warmup_steps",
    "dense_above_timestep",
    "base_model",
    "calibration",
    "schema_version",
)


def _as(value, shape, dtype, fill) -> torch.Tensor:
    if value is None:
        return torch.full(shape, fill, dtype=dtype)
    value = torch.as_tensor(value).to(dtype)
    return value[None] if value.dim() == 2 else value
