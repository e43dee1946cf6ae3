"""Reference pipelines: tiny models of the real diffusers classes trained on procedural video.

Random weights attend almost uniformly, so sparse-attention quality can only be judged on
models whose attention was learned. ``reference_models/<family>/`` in the repository holds
one trained pipeline per family (:mod:`.train` makes them); :func:`load_reference` loads one
with its generation settings and its calibration and held-out captions.
"""

from __future__ import annotations

import json
from pathlib import Path

REFERENCE_FILE = "sparse_vdit_reference.json"
REFERENCE_ROOT = Path(__file__).resolve().parents[2] / "reference_models"

__all__ = ["REFERENCE_FILE", "REFERENCE_ROOT", "load_reference", "reference_path"]


def reference_path(name_or_path: str | Path) -> Path:
    """A reference pipeline's folder: a family name (``"wan"``) under :data:`REFERENCE_ROOT`, or a path."""
    path = Path(name_or_path)
    if not path.exists() and (REFERENCE_ROOT / str(name_or_path)).exists():
        path = REFERENCE_ROOT / str(name_or_path)
    if not (path / REFERENCE_FILE).is_file():
        known = sorted(p.name for p in REFERENCE_ROOT.glob("*") if (p / REFERENCE_FILE).is_file())
        raise FileNotFoundError(
            f"{name_or_path!r} is not a reference pipeline (no {REFERENCE_FILE} there); known: {known}, or "
            "train one with `python -m diffusers_sparse_vdit.reference.train`"
        )
    return path


def load_reference(name_or_path: str | Path, *, torch_dtype=None, device=None):
    """``(pipe, info)``: the reference pipeline (float32 unless ``torch_dtype``) and its settings.

    ``info`` holds ``family``, ``generate`` (pipeline call kwargs), ``tile_size``,
    ``calibration_prompts``, ``heldout_prompts`` and the training log.
    """
    import torch
    from diffusers import DiffusionPipeline

    path = reference_path(name_or_path)
    info = json.loads((path / REFERENCE_FILE).read_text())
    pipe = DiffusionPipeline.from_pretrained(path, torch_dtype=torch_dtype or torch.float32)
    if device is not None:
        pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe, info
