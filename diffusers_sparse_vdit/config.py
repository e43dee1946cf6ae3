"""``SparseVDiTConfig``: the per-(layer, head) mode map of one transformer, and its files.

On disk a map is two files:

* ``config.json``: everything but the per-head arrays (family, transformer class, target
  modules, tile size, dense warm-up, step ranges, calibration metadata, schema version);
* ``mode_map.safetensors``: the per-head arrays, each shaped ``(ranges, layers, heads)``:
  ``modes`` (uint8 :class:`Mode` ids), ``widths`` (float32 band widths in frames),
  ``sink_frames`` (uint8) and ``stripes`` (float32 ``(..., K)`` relative stripe positions,
  padded with -1), and ``precision`` (uint8: 0 native, 1 fp8; see :data:`.plan.PRECISIONS`) when
  some head runs in FP8. A file without ``precision`` (all native, or written before FP8 existed)
  loads as all native; a reader older than FP8 refuses a file with it (an unknown array) rather
  than run its heads in another precision. Its header repeats ``config.json`` under ``sparse_vdit_config`` so the
  file describes itself on its own, and so a load can tell that the two files were saved together.

``ranges`` is 1 unless the map changes with the denoising step (``step_ranges``).

A pipeline with two experts (Wan2.2 A14B: ``transformer`` for the high-noise steps,
``transformer_2`` for the low-noise ones) has one map for both: the map of ``transformer`` with
``transformer_2``'s map nested in it (:attr:`SparseVDiTConfig.transformer_2`). The nested map's
fields sit under ``"transformer_2"`` in ``config.json`` and its arrays under ``transformer_2.*`` in
the same safetensors file, so both are saved, checked and pushed as one pair. A map without the key
is a one-transformer map, as before; an older reader refuses a two-expert map (unknown arrays)
rather than apply half of it. Step indices (warm-up, step ranges) count the whole schedule, both
experts' steps together.
Nothing is pickled. Saves are atomic (:func:`.files.write_pair`); a load refuses a pair whose
header copy differs from ``config.json`` and checks every field as stored, before any cast (a
mode id 258 is an error, not DIAGONAL); a bad file gets an error naming the file, the key and
the fix.

On the Hub a map is a model repo (``library_name: diffusers-sparse-vdit``) holding those two
files, a generated ``README.md`` model card and a ``mode_map.png`` picture of the map (with
matplotlib). :class:`SparseVDiTConfig` is a ``huggingface_hub.ModelHubMixin``:
``save_pretrained`` / ``from_pretrained`` / ``push_to_hub`` work as in other HF libraries,
HF cache and offline mode included.

``calibration`` is free-form JSON from the search. The model card and :meth:`summary` read
these keys when present: ``layout`` (the latent token grid, :class:`TokenLayout` fields), or
``height`` / ``width`` / ``num_frames`` in pixels (+ ``patch_size_t`` for CogVideoX1.5) to
derive it; ``prompts`` (or ``num_prompts``) and ``num_inference_steps``. ``transformer_config``
(the transformer's architecture entries, recorded by the search) is compared with the model at
apply time. Everything else is listed as it is.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Sequence

import torch
from huggingface_hub import ModelCard, ModelCardData, ModelHubMixin

from . import card, files, hub, plots
from .layout import TokenLayout
from .modes import Mode, ModeSpec
from .plan import PRECISIONS, build_plan

__all__ = ["SparseVDiTConfig", "FAMILIES", "SCHEMA_VERSION", "CONFIG_NAME", "MODE_MAP_NAME"]

SCHEMA_VERSION = 1
CONFIG_NAME = "config.json"
MODE_MAP_NAME = "mode_map.safetensors"
PLOT_NAME = "mode_map.png"
README_NAME = "README.md"
_FORMAT_KEY = "sparse_vdit_config"
EXPERT_KEY = "transformer_2"  # the second expert's map, named as the pipeline component it goes to

# family -> diffusers transformer classes it covers
FAMILIES: dict[str, tuple[str, ...]] = {
    "wan": ("WanTransformer3DModel",),
    "hunyuan_video": ("HunyuanVideoTransformer3DModel",),
    "cogvideox": ("CogVideoXTransformer3DModel",),
    "hunyuan_video15": ("HunyuanVideo15Transformer3DModel",),
}


# Latent token grid from the pixel size: Wan2.1, CogVideoX and HunyuanVideo all compress 4x in
# time and 8x in space (VAE), then make one token of 2x2 latent pixels; CogVideoX1.5 also patches 2
# frames (calibration["patch_size_t"] = 2). Text tokens per family, as the transformer sees them.
_VAE_TEMPORAL, _SPATIAL_PER_TOKEN = 4, 16
# HunyuanVideo-1.5: 1000 Qwen2.5-VL + 256 ByT5 + 729 SigLIP image tokens (its pipelines' lengths).
_TEXT_TOKENS = {
    "wan": (0, "none"), "cogvideox": (226, "before"), "hunyuan_video": (256, "after"),
    "hunyuan_video15": (1985, "after"),
}  # fmt: skip


class SparseVDiTConfig(
    ModelHubMixin,
    library_name=hub.LIBRARY_NAME,
    tags=list(card.TAGS),
    pipeline_tag="text-to-video",
    repo_url=hub.REPO_URL,
    paper_url=hub.PAPER_URL,
):
    """Mode map of one transformer: which mode (and knob) every head of every target layer runs.

    Build one from head specs with :meth:`from_specs` (or let the search build it), save it
    with :meth:`save_pretrained`, load it with :meth:`from_pretrained` (a folder or a Hub repo),
    share it with :meth:`push_to_hub`, look at it with :meth:`summary` and :func:`plot_mode_map`.
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
        precision: torch.Tensor | None = None,
        tile_size: int = 128,
        step_ranges: Sequence[Sequence[int]] | None = None,
        dense_warmup_steps: int = 0,
        dense_above_timestep: float | None = None,
        base_model: str | None = None,
        calibration: dict[str, Any] | None = None,
        schema_version: int = SCHEMA_VERSION,
        transformer_2: "SparseVDiTConfig | None" = None,
    ):
        where = "invalid Sparse-vDiT mode map"
        settings = _checked_settings(
            where,
            dict(
                family=family,
                transformer_class=transformer_class,
                target_modules=target_modules,
                num_heads=num_heads,
                tile_size=tile_size,
                step_ranges=[[0, -1]] if step_ranges is None else step_ranges,
                dense_warmup_steps=dense_warmup_steps,
                dense_above_timestep=dense_above_timestep,
                base_model=base_model,
                calibration={} if calibration is None else calibration,
                schema_version=schema_version,
            ),
        )
        # checked before the casts below, which would turn a mode id 258 into 2 or a NaN into 0
        arrays = _checked_arrays(
            where, modes=modes, widths=widths, sink_frames=sink_frames, stripes=stripes, precision=precision
        )
        modes = arrays["modes"]
        if modes.dim() == 2:
            modes = modes[None]
        shape = tuple(modes.shape)
        self.family = settings["family"]
        self.transformer_class = settings["transformer_class"]
        self.target_modules = list(settings["target_modules"])
        self.num_heads = settings["num_heads"]
        self.modes = modes.to(torch.uint8)
        self.widths = _as(arrays["widths"], shape, torch.float32, 0.0)
        self.sink_frames = _as(arrays["sink_frames"], shape, torch.uint8, 1)
        # per head: an index into PRECISIONS (0 native, 1 fp8); a SKIP head's entry means nothing
        self.precision = _as(arrays["precision"], shape, torch.uint8, 0)
        stripes = arrays["stripes"]
        self.stripes = torch.full((*shape, 0), -1.0) if stripes is None else stripes.to(torch.float32)
        if self.stripes.dim() == 3:
            self.stripes = self.stripes[None]
        self.tile_size = settings["tile_size"]
        self.step_ranges = [list(r) for r in settings["step_ranges"]]
        self.dense_warmup_steps = settings["dense_warmup_steps"]
        self.dense_above_timestep = settings["dense_above_timestep"]
        self.base_model = settings["base_model"]
        self.calibration = dict(settings["calibration"])
        self.schema_version = settings["schema_version"]
        # the low-noise expert's map (pipelines with transformer_2, e.g. Wan2.2 A14B); None for one transformer
        self.transformer_2 = transformer_2
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

    def head_precisions(self, layer: int, step: int | None = None) -> tuple[str, ...]:
        """Each head's precision (one of :data:`.plan.PRECISIONS`) at a step, for ``build_plan(precision=...)``."""
        return tuple(PRECISIONS[int(p)] for p in self.precision[self.range_index(step), layer])

    def fp8_count(self, step_range: int | None = None) -> int:
        """How many (range, layer, head) entries compute in FP8 (of one step range, if given); SKIP heads compute
        nothing, so they never count."""
        modes, precision = (self.modes, self.precision) if step_range is None else (
            self.modes[step_range], self.precision[step_range])
        return int(((precision == _FP8) & (modes != Mode.SKIP)).sum())

    def with_precision(self, precision: str, heads: torch.Tensor | None = None) -> "SparseVDiTConfig":
        """A copy whose heads compute in ``precision`` (``"native"`` or ``"fp8"``), the others as they are.

        ``heads``: a boolean ``(ranges, layers, heads)`` mask of the entries to set (default: every head of
        this map and of ``transformer_2``'s; with a mask, ``transformer_2``'s map is kept as it is).
        """
        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}; choose one of {PRECISIONS}")
        shape = tuple(self.modes.shape)
        if heads is None:
            mask = torch.ones(shape, dtype=torch.bool)
        else:
            mask = torch.as_tensor(heads)
            if mask.dtype != torch.bool or tuple(mask.shape) != shape:
                raise ValueError(
                    f"heads must be a boolean mask shaped (ranges, layers, heads) = {shape}, "
                    f"got a {mask.dtype} tensor shaped {tuple(mask.shape)}"
                )
        out = copy.copy(self)
        out.calibration = copy.deepcopy(self.calibration)
        out.precision = torch.where(mask, PRECISIONS.index(precision), self.precision).to(torch.uint8)
        if heads is None and self.transformer_2 is not None:
            out.transformer_2 = self.transformer_2.with_precision(precision)
        out.validate()
        return out

    def mode_counts(self, step_range: int | None = None) -> dict[str, int]:
        """How many (range, layer, head) entries run each mode (of one step range, if given)."""
        modes = self.modes if step_range is None else self.modes[step_range]
        return {m.name: int((modes == m).sum()) for m in Mode}

    def layer_groups(self) -> dict[str, list[int]]:
        """Target layers grouped by name with the block index wildcarded, in order of appearance.

        E.g. HunyuanVideo: ``{"transformer_blocks.*.attn": [0..19], "single_transformer_blocks.*.attn": [20..59]}``.
        """
        groups: dict[str, list[int]] = {}
        for i, name in enumerate(self.target_modules):
            groups.setdefault(re.sub(r"(?<=\.)\d+(?=\.|$)", "*", name), []).append(i)
        return groups

    def calibration_layout(self) -> TokenLayout | None:
        """The latent token grid the map was calibrated at, if ``calibration`` says (keys: module docstring)."""
        cal = self.calibration
        if isinstance(cal.get("layout"), dict):
            return TokenLayout(**cal["layout"])
        try:
            height, width, frames = int(cal["height"]), int(cal["width"]), int(cal["num_frames"])
            patch_t = int(cal.get("patch_size_t") or 1)
        except (KeyError, TypeError, ValueError):
            return None
        latent_frames = (frames - 1) // _VAE_TEMPORAL + 1
        text_tokens, text_position = _TEXT_TOKENS[self.family]
        return TokenLayout(
            -(-latent_frames // patch_t),
            height // _SPATIAL_PER_TOKEN,
            width // _SPATIAL_PER_TOKEN,
            text_tokens,
            text_position,
        )

    def density(self, layout: TokenLayout, step: int | None = None) -> float:
        """Fraction of dense attention FLOPs the map computes at ``layout`` (mean over layers) at a step.

        Dense warm-up steps are not counted: this is the density of the sparse steps.
        """
        plans = [build_plan(self.head_specs(layer, step), layout, self.tile_size) for layer in range(self.num_layers)]
        return sum(p.density for p in plans) / len(plans)

    # Validation -------------------------------------------------------------------------
    def validate(self) -> None:
        """Check the map as a whole (types and ranges of every field, shapes, step ranges, layout)."""
        where = "invalid Sparse-vDiT mode map"

        def fail(msg):
            raise ValueError(f"{where}: {msg}")

        _checked_settings(where, {key: getattr(self, key) for key in _INIT_KEYS})
        _checked_arrays(where, **{name: getattr(self, name) for name in _ARRAYS})
        if self.schema_version != SCHEMA_VERSION:
            fail(
                f"schema_version {self.schema_version} is not supported by this version of diffusers-sparse-vdit "
                f"(it reads {SCHEMA_VERSION}); upgrade the package or re-run the search"
            )
        shape = tuple(self.modes.shape)
        if len(shape) != 3 or shape[1:] != (self.num_layers, self.num_heads):
            fail(f"modes has shape {shape}, expected (ranges, {self.num_layers} layers, {self.num_heads} heads)")
        for name in ("widths", "sink_frames", "precision"):
            if tuple(getattr(self, name).shape) != shape:
                fail(f"{name} has shape {tuple(getattr(self, name).shape)}, expected {shape}")
        if self.stripes.dim() != 4 or tuple(self.stripes.shape[:3]) != shape:
            fail(f"stripes has shape {tuple(self.stripes.shape)}, expected {shape} + (max stripes,)")
        if len(self.step_ranges) != shape[0]:
            fail(f"{shape[0]} step ranges of modes but {len(self.step_ranges)} step_ranges")
        expected_start = 0
        for i, r in enumerate(self.step_ranges):
            last = i == len(self.step_ranges) - 1
            if len(r) != 2 or r[0] != expected_start or (r[1] <= r[0] and not (last and r[1] == -1)):
                fail(
                    f"step_ranges must tile the steps from 0 in order, the last ending at -1 (open); got {self.step_ranges}"
                )
            expected_start = r[1]
        if not self.tile_size >= 16 or self.tile_size & (self.tile_size - 1):
            fail(f"tile_size must be a power of two >= 16, got {self.tile_size}")
        for key in ("layout", "transformer_config"):
            if not isinstance(self.calibration.get(key, {}), dict):
                fail(f"calibration[{key!r}] must be a dict, got {files.describe(self.calibration[key])}")
        try:
            self.calibration_layout()
        except (TypeError, ValueError) as e:
            fail(f"calibration does not give a valid token layout: {e}")
        expert = self.transformer_2
        if expert is not None:
            if not isinstance(expert, SparseVDiTConfig):
                fail(f"transformer_2 must be a SparseVDiTConfig (the second expert's map), got {type(expert).__name__}")
            if expert.transformer_2 is not None:
                fail("transformer_2's map has a transformer_2 of its own: a pipeline has at most two experts")
            if expert.family != self.family:
                fail(f"transformer_2's map is for family {expert.family!r}, transformer's for {self.family!r}")

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
            **({"fp8_heads": self.fp8_count()} if self.fp8_count() else {}),
            **({EXPERT_KEY: self.transformer_2.to_dict()} if self.transformer_2 is not None else {}),
        }

    def tensors(self) -> dict[str, torch.Tensor]:
        own = {
            "modes": self.modes.contiguous(),
            "widths": self.widths.contiguous(),
            "sink_frames": self.sink_frames.contiguous(),
            "stripes": self.stripes.contiguous(),
        }
        if bool(self.precision.any()):  # all native: no array, so the file stays readable by earlier versions
            own["precision"] = self.precision.contiguous()
        if self.transformer_2 is not None:
            own.update({f"{EXPERT_KEY}.{name}": t for name, t in self.transformer_2.tensors().items()})
        return own

    @property
    def experts(self) -> dict[str, "SparseVDiTConfig"]:
        """The map of each transformer it covers, by pipeline component: ``transformer`` (and ``transformer_2``)."""
        own = {"transformer": self}
        return own if self.transformer_2 is None else {**own, EXPERT_KEY: self.transformer_2}

    def save_files(self, save_directory: str | Path) -> Path:
        """Write ``config.json`` and ``mode_map.safetensors`` into ``save_directory``, atomically.

        Both are written aside and then renamed into place; the safetensors header repeats
        ``config.json``, so a pair left mixed by an interrupted save is refused on load.
        """
        directory = Path(save_directory)
        text = json.dumps(self.to_dict(), indent=2, sort_keys=True)
        files.write_pair(directory, CONFIG_NAME, text, MODE_MAP_NAME, self.tensors(), _FORMAT_KEY)
        return directory

    @classmethod
    def load_files(cls, config_file: str | Path, mode_map_file: str | Path) -> "SparseVDiTConfig":
        """Read and validate a map from its two files, checking that they were saved together."""
        config_file, mode_map_file = Path(config_file), Path(mode_map_file)
        data = _read_config_json(config_file)
        expert_data = data.get(EXPERT_KEY)
        if expert_data is not None and not isinstance(expert_data, dict):
            raise ValueError(f"{config_file}: {EXPERT_KEY!r} must be a JSON object (the second expert's map); {_FIX}")
        settings = _settings_of(data, str(config_file), allowed={EXPERT_KEY})
        expert_settings = None if expert_data is None else _settings_of(expert_data, f"{config_file} ({EXPERT_KEY})")
        tensors = files.read_tensors(mode_map_file, config_file, data, _FORMAT_KEY, _FIX)
        prefix = f"{EXPERT_KEY}."
        expected = set(_ARRAYS) | ({prefix + name for name in _ARRAYS} if expert_data is not None else set())
        optional = {_OPTIONAL} | ({prefix + _OPTIONAL} if expert_data is not None else set())
        if not expected <= set(tensors) <= expected | optional:
            missing, extra = sorted(expected - set(tensors)), sorted(set(tensors) - expected - optional)
            raise ValueError(
                f"{mode_map_file} must hold exactly the arrays {sorted(expected)} (and optionally {_OPTIONAL!r})"
                + (f"; it lacks {missing}" if missing else "")
                + (f"; it has unknown {extra}" if extra else "")
                + (" (a map with two experts: upgrade diffusers-sparse-vdit to read it)" if any(
                    name.startswith(prefix) for name in extra) else "")
                + f": {_FIX}"
            )
        expert = None
        if expert_data is not None:
            arrays = {name: tensors.get(prefix + name) for name in (*_ARRAYS, _OPTIONAL)}
            expert = cls._from_parts(expert_data, expert_settings, arrays, f"{config_file} ({EXPERT_KEY})", mode_map_file)
        arrays = {name: tensors.get(name) for name in (*_ARRAYS, _OPTIONAL)}
        return cls._from_parts(data, settings, arrays, str(config_file), mode_map_file, transformer_2=expert)

    @classmethod
    def _from_parts(cls, data, settings, arrays, where: str, mode_map_file: Path, **extra) -> "SparseVDiTConfig":
        """A map from its checked JSON settings and its arrays, cross-checked with the JSON's counts."""
        _checked_arrays(str(mode_map_file), **arrays)
        try:
            config = cls(**copy.deepcopy(settings), **arrays, **extra)
        except ValueError as e:
            raise ValueError(f"{where} with {mode_map_file.name}: {e}") from None
        if data.get("num_layers", config.num_layers) != config.num_layers:
            raise ValueError(
                f"{where} says num_layers={data['num_layers']} but lists {config.num_layers} target modules"
            )
        if "mode_counts" in data and data["mode_counts"] != config.mode_counts():
            raise ValueError(
                f"{where} counts the modes {data['mode_counts']} but {mode_map_file} holds "
                f"{config.mode_counts()}: the arrays were changed after the map was saved; {_FIX}"
            )
        if data.get("fp8_heads", 0) != config.fp8_count():
            raise ValueError(
                f"{where} counts {data.get('fp8_heads', 0)} fp8 heads but {mode_map_file} holds {config.fp8_count()}: "
                f"the arrays were changed after the map was saved; {_FIX}"
            )
        return config

    # Hub --------------------------------------------------------------------------------
    # ModelHubMixin supplies the card metadata (class keywords above) and the save flow; we
    # write our own config.json in _save_pretrained (the mixin then leaves it alone) and read
    # it back ourselves, validated, instead of letting the mixin parse it into __init__ kwargs.

    def save_pretrained(
        self,
        save_directory: str | Path,
        *,
        push_to_hub: bool = False,
        repo_id: str | None = None,
        model_card_kwargs: dict[str, Any] | None = None,
        **push_to_hub_kwargs,
    ) -> str | None:
        """Write ``config.json``, ``mode_map.safetensors``, ``mode_map.png`` (with matplotlib) and ``README.md``.

        A ``README.md`` written by hand is kept; one this library generated is rewritten, since
        its tables describe the map. With ``push_to_hub=True`` the map is then pushed to
        ``repo_id`` (default: the folder's name) with :meth:`push_to_hub` and its keywords.
        """
        directory = Path(save_directory)
        readme = directory / README_NAME
        if readme.is_file() and card.GENERATED_MARKER in readme.read_text(encoding="utf-8", errors="replace"):
            readme.unlink()  # the mixin never overwrites a README.md
        super().save_pretrained(directory, model_card_kwargs={"repo_id": repo_id, **(model_card_kwargs or {})})
        if push_to_hub:
            return self.push_to_hub(repo_id or directory.name, **push_to_hub_kwargs)
        return None

    def _save_pretrained(self, save_directory: Path, **kwargs) -> None:
        self.save_files(save_directory)
        if plots.matplotlib_available():
            plots.plot_mode_map(self, Path(save_directory) / PLOT_NAME)
        else:
            _logger().warning(f"not writing {PLOT_NAME} (the model card's picture): {plots.INSTALL_HINT}")

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | Path,
        *,
        revision: str | None = None,
        cache_dir: str | Path | None = None,
        local_files_only: bool = False,
        token: str | bool | None = None,
        force_download: bool = False,
        subfolder: str | None = None,
    ) -> "SparseVDiTConfig":
        """Load a map from a folder written by :meth:`save_pretrained`, or from a Hub repo.

        Hub files go through the HF cache: with ``local_files_only=True`` or ``HF_HUB_OFFLINE=1``
        a map that was downloaded once loads without a network. ``revision`` is a branch, tag
        or commit. Raises ``OSError`` (``FileNotFoundError``) when the files cannot be had and
        ``ValueError`` when they are not a valid Sparse-vDiT map.
        """
        return cls._from_pretrained(
            model_id=str(pretrained_model_name_or_path),
            revision=revision,
            cache_dir=cache_dir,
            force_download=force_download,
            local_files_only=local_files_only,
            token=token,
            subfolder=subfolder,
        )

    @classmethod
    def _from_pretrained(
        cls,
        *,
        model_id: str,
        revision: str | None = None,
        cache_dir: str | Path | None = None,
        force_download: bool = False,
        local_files_only: bool = False,
        token: str | bool | None = None,
        subfolder: str | None = None,
        **kwargs,  # what other huggingface_hub versions pass (proxies, resume_download, init kwargs)
    ) -> "SparseVDiTConfig":
        where = dict(
            revision=revision,
            cache_dir=cache_dir,
            force_download=force_download,
            local_files_only=local_files_only,
            token=token,
            subfolder=subfolder,
        )
        config_file = hub.resolve_file(
            model_id,
            CONFIG_NAME,
            hint="It is not a Sparse-vDiT mode map: those hold config.json and mode_map.safetensors, written by "
            "SparseVDiTConfig.save_pretrained / push_to_hub or `sparse-vdit search`. Pass the map's repo or folder, "
            "not the base model's.",
            **where,
        )
        _read_config_json(config_file)  # a foreign repo fails here, before the tensors are fetched
        mode_map_file = hub.resolve_file(
            model_id,
            MODE_MAP_NAME,
            hint="The map is incomplete (config.json without its arrays): save or push it again.",
            **where,
        )
        return cls.load_files(config_file, mode_map_file)

    def push_to_hub(
        self,
        repo_id: str,
        *,
        private: bool | None = None,
        token: str | bool | None = None,
        commit_message: str = "Upload Sparse-vDiT mode map",
        create_pr: bool = False,
        revision: str | None = None,
        model_card: str | Path | None = None,
    ) -> str:
        """Push the map (the files of :meth:`save_pretrained`) to ``repo_id`` in one commit; return its URL.

        The repo is created if needed, and so is the branch ``revision`` (default ``main``);
        ``create_pr=True`` opens a pull request against it instead of committing.
        ``model_card``: a ``README.md`` to upload instead of the generated card.
        """
        api = hub.hf_api(token)
        repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id  # adds the user's namespace
        if revision is not None and not revision.startswith("refs/pr/"):
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            self.save_pretrained(tmp, repo_id=repo_id)
            if model_card is not None:
                shutil.copyfile(model_card, Path(tmp, README_NAME))
            return api.upload_folder(
                repo_id=repo_id,
                folder_path=tmp,
                commit_message=commit_message,
                revision=revision,
                create_pr=create_pr,
            )

    def generate_model_card(self, *args, repo_id: str | None = None, **kwargs) -> ModelCard:
        """The ``README.md`` of this map: Hub metadata, usage, mode counts, density, calibration, picture."""
        data = ModelCardData(**self._hub_mixin_info.model_card_data.to_dict())  # library, tags, pipeline_tag
        data.tags = sorted({*(data.tags or []), self.family})
        if self.base_model:
            data.base_model = self.base_model
            # A map runs on top of the base model's weights and holds none of its own: the
            # closest Hub relation is "adapter" (otherwise the Hub guesses "finetune").
            data.base_model_relation = "adapter"
        image = PLOT_NAME if plots.matplotlib_available() else None  # _save_pretrained writes it then
        return card.model_card(
            self, data, repo_id=repo_id, image=image, paper_url=hub.PAPER_URL, repo_url=hub.REPO_URL, **kwargs
        )

    # Comparison and display -------------------------------------------------------------
    def __eq__(self, other) -> bool:
        if not isinstance(other, SparseVDiTConfig):
            return NotImplemented
        mine, theirs = self.tensors(), other.tensors()
        return (
            self.to_dict() == other.to_dict()
            and mine.keys() == theirs.keys()
            and all(torch.equal(mine[name], theirs[name]) for name in mine)
        )

    def __repr__(self) -> str:
        counts = ", ".join(f"{k}={v}" for k, v in self.mode_counts().items() if v)
        return (
            f"SparseVDiTConfig(family={self.family!r}, {self.num_layers} layers x {self.num_heads} heads, "
            f"{self.num_ranges} step range(s), tile {self.tile_size}, {counts}"
            + (f"; transformer_2: {self.transformer_2!r}" if self.transformer_2 is not None else "")
            + ")"
        )

    def summary(self) -> str:
        """A printable table of mode counts per layer group and in total (per step range), with
        the attention density at the calibration layout when the map records one."""
        lines = [
            f"Sparse-vDiT mode map: {self.transformer_class} ({self.family}), "
            f"{self.num_layers} layers x {self.num_heads} heads, tile {self.tile_size}"
        ]
        if self.base_model:
            lines.append(f"base model: {self.base_model}")
        lines += card.dense_steps(self)
        lines += card.precision_lines(self)
        layout = self.calibration_layout()
        names = [m.name for m in Mode]
        for r, (start, end) in enumerate(self.step_ranges):
            if self.num_ranges > 1:
                lines.append(f"\nsteps {start} to {'the end' if end < 0 else end - 1}:")
            counts = self.mode_counts(r)
            total = sum(counts.values())
            rows = [["layers", *names]]
            for group, layers in self.layer_groups().items():
                modes = self.modes[r, layers]
                rows.append([f"{group} ({len(layers)})", *(str(int((modes == m).sum())) for m in Mode)])
            rows.append([f"total ({total} heads)", *(str(counts[n]) for n in names)])
            rows.append(["share", *(f"{counts[n] / total:.1%}" for n in names)])
            widths = [max(len(cell) for cell in column) for column in zip(*rows)]
            for label, *cells in rows:
                lines.append("  ".join([label.ljust(widths[0])] + [c.rjust(w) for c, w in zip(cells, widths[1:])]))
            if layout is not None:
                lines.append(f"attention density at {layout}: {card.density_text(self.density(layout, step=start))}")
        if self.transformer_2 is not None:
            lines[0] = "two experts. transformer (high-noise steps): " + lines[0]
            lines += ["", "transformer_2 (low-noise steps): " + self.transformer_2.summary()]
        return "\n".join(lines)


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


_ARRAYS = ("modes", "widths", "sink_frames", "stripes")
_OPTIONAL = "precision"  # saved only when some head is fp8; absent = all native
_FP8 = PRECISIONS.index("fp8")
_FIX = (
    "save the map again (SparseVDiTConfig.save_pretrained) or re-run `sparse-vdit search`; "
    "for a map from the Hub, download it again (from_pretrained(..., force_download=True))"
)
# Band widths are in latent frames; any width past the longest video is the same band (the whole
# sequence), so a larger one is a damaged value, not a choice.
MAX_BAND_WIDTH = 1024.0
MAX_SINK_FRAMES = 255  # stored as uint8


def _settings_of(data: dict[str, Any], where: str, allowed: set[str] = frozenset()) -> dict[str, Any]:
    """The constructor settings of a map's JSON, checked; unknown keys are warned about."""
    missing = [key for key in _INIT_KEYS if key not in data]
    if missing:
        raise ValueError(f"{where}: missing keys {missing}: the file is damaged; {_FIX}")
    settings = _checked_settings(where, {key: data[key] for key in _INIT_KEYS})
    if "num_layers" in data:
        files.check_int(where, "num_layers", data["num_layers"], minimum=1)
    unknown = set(data) - set(_INIT_KEYS) - {"library", "library_version", "num_layers", "mode_counts", "fp8_heads"} - allowed
    if unknown:
        _logger().warning(f"ignoring unknown keys {sorted(unknown)} in {where}")
    return settings


def _checked_settings(where: str, values: dict[str, Any]) -> dict[str, Any]:
    """``values`` (the JSON-side fields) with their types checked, never coerced: 3.9 is not a head count."""
    out = dict(values)
    if not isinstance(values["family"], str) or values["family"] not in FAMILIES:
        raise ValueError(f"{where}: unknown model family {values['family']!r}; expected one of {sorted(FAMILIES)}")
    files.check_str(where, "transformer_class", values["transformer_class"])
    files.check_str(where, "base_model", values["base_model"], optional=True)
    for key, minimum in (("num_heads", 1), ("tile_size", 1), ("dense_warmup_steps", 0), ("schema_version", None)):
        out[key] = files.check_int(where, key, values[key], minimum=minimum)
    out["dense_above_timestep"] = files.check_number(
        where, "dense_above_timestep", values["dense_above_timestep"], optional=True
    )
    def fail(key, expected):
        raise ValueError(f"{where}: {key!r} must be {expected}, got {files.describe(values[key])}")

    modules = values["target_modules"]
    if not isinstance(modules, (list, tuple)) or not modules or not all(isinstance(m, str) and m for m in modules):
        fail("target_modules", "a non-empty list of module names")
    ranges = values["step_ranges"]
    if not isinstance(ranges, (list, tuple)) or not all(
        isinstance(r, (list, tuple)) and len(r) == 2 and all(files.is_int(i) for i in r) for r in ranges
    ):
        fail("step_ranges", "a list of [start, end] integer pairs")
    out["step_ranges"] = [[int(i) for i in r] for r in ranges]
    if not isinstance(values["calibration"], dict):
        fail("calibration", "a JSON object (a dict)")
    return out


def _checked_arrays(where: str, *, modes, widths=None, sink_frames=None, stripes=None, precision=None) -> dict[str, Any]:
    """The per-head arrays as tensors, their dtypes and values checked as given (before any cast)."""
    arrays = {"modes": modes, "widths": widths, "sink_frames": sink_frames, "stripes": stripes, "precision": precision}
    arrays = {name: None if value is None else torch.as_tensor(value) for name, value in arrays.items()}

    def fail(name, msg):
        raise ValueError(f"{where}: {name!r} {msg}")

    def integral(t):
        return not (t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool)

    for name, top in (("modes", len(Mode) - 1), ("sink_frames", MAX_SINK_FRAMES), ("precision", len(PRECISIONS) - 1)):
        t = arrays[name]
        if t is None:
            continue
        if name == "modes":
            what = f"mode ids 0..{top} ({', '.join(f'{m.value} {m.name}' for m in Mode)})"
        elif name == "precision":
            what = f"precision ids 0..{top} ({', '.join(f'{i} {p}' for i, p in enumerate(PRECISIONS))})"
        else:
            what = f"counts of frames 0..{top}"
        if not integral(t):
            fail(name, f"must hold integer {what}, got a {t.dtype} tensor")
        if t.numel() and (int(t.min()) < 0 or int(t.max()) > top):
            bad = t[(t < 0) | (t > top)][0]
            fail(name, f"must hold {what}, found {int(bad)}")
    t = arrays["widths"]
    if t is not None:
        if not t.dtype.is_floating_point:
            fail("widths", f"must hold band widths in frames as floats, got a {t.dtype} tensor")
        if not (torch.isfinite(t) & (t >= 0) & (t <= MAX_BAND_WIDTH)).all():
            fail("widths", f"must hold finite band widths in [0, {MAX_BAND_WIDTH:g}] frames")
    t = arrays["stripes"]
    if t is not None:
        if not t.dtype.is_floating_point:
            fail("stripes", f"must hold stripe positions as floats, got a {t.dtype} tensor")
        if not ((t == -1) | ((t >= 0) & (t < 1))).all():
            fail("stripes", "must hold stripe positions in [0, 1) (or -1 padding)")
    return arrays


def _read_config_json(config_file: Path) -> dict[str, Any]:
    """Parse a map's config.json and check that it is one, of a schema this version reads."""
    try:
        data = json.loads(Path(config_file).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{config_file} is not a readable Sparse-vDiT config.json: {e}") from None
    if not isinstance(data, dict) or data.get("library") != hub.LIBRARY_NAME:
        what = ""
        if isinstance(data, dict) and "_class_name" in data:
            what = f" (it is the config of a diffusers {data['_class_name']})"
        elif isinstance(data, dict) and ("model_type" in data or "architectures" in data):
            what = f" (it looks like a transformers config, model_type {data.get('model_type')!r})"
        raise ValueError(
            f'{config_file} is not a diffusers-sparse-vdit config{what}: it has no "library": "{hub.LIBRARY_NAME}". '
            "Is this the base model's repository rather than a Sparse-vDiT mode map?"
        )
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        newer = isinstance(version, int) and version > SCHEMA_VERSION
        raise ValueError(
            f"{config_file} has schema_version {version!r} but this diffusers-sparse-vdit reads {SCHEMA_VERSION}: "
            + (
                f"it was written by diffusers-sparse-vdit {data.get('library_version', '?')}; "
                "upgrade with `pip install -U diffusers-sparse-vdit`"
                if newer
                else "the file is damaged or not written by diffusers-sparse-vdit; save the map again"
            )
        )
    return data


def _logger():
    from .logs import get_logger  # diffusers' logger tree, imported lazily: diffusers.utils takes seconds

    return get_logger(__name__)


def _as(value, shape, dtype, fill) -> torch.Tensor:
    if value is None:
        return torch.full(shape, fill, dtype=dtype)
    value = torch.as_tensor(value).to(dtype)
    return value[None] if value.dim() == 2 else value
