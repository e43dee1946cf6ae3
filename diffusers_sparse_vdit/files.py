"""File pairs: a JSON file and a safetensors file whose header repeats it, saved and loaded as one.

A mode map (``config.json`` + ``mode_map.safetensors``) and search scores (``scores.json`` +
``scores.safetensors``) are such pairs. :func:`write_pair` writes both files aside in the target
folder and moves them into place with ``os.replace``, so a reader never sees a half-written file;
:func:`read_tensors` refuses a safetensors file whose header copy of the JSON differs from the
JSON file beside it (a save interrupted between the two renames, files of two different saves, a
hand edit), so such a hybrid can never load as a valid pair.

The ``check_*`` helpers validate raw JSON values without coercing them: ``3.9`` is not an
integer and ``true`` is not a number, so neither silently becomes ``3`` or ``1``.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from numbers import Integral, Real
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

__all__ = ["write_pair", "read_tensors", "is_int", "check_int", "check_number", "check_str", "describe"]


def write_pair(directory: Path, json_name: str, text: str, tensors_name: str, tensors: dict, header_key: str) -> None:
    """Write ``json_name`` (``text``) and ``tensors_name`` (``tensors``, ``text`` in its header) atomically."""
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=directory, prefix=".saving-") as aside:
        json_aside, tensors_aside = Path(aside) / json_name, Path(aside) / tensors_name
        save_file(tensors, str(tensors_aside), metadata={"format": "pt", header_key: text})
        json_aside.write_text(text + "\n", encoding="utf-8")
        for path in (tensors_aside, json_aside):
            _fsync(path)
        # The tensors go first: if we stop between the two renames, the new tensors sit beside the
        # old JSON, which read_tensors refuses (their header copy differs).
        os.replace(tensors_aside, directory / tensors_name)
        os.replace(json_aside, directory / json_name)


def read_tensors(
    tensors_file: Path, json_file: Path, data: dict[str, Any], header_key: str, fix: str
) -> dict[str, torch.Tensor]:
    """The tensors of ``tensors_file``, after checking that its header repeats ``data`` (read from ``json_file``)."""
    try:
        with safe_open(str(tensors_file), "pt") as f:
            header = (f.metadata() or {}).get(header_key)
            tensors = {name: f.get_tensor(name) for name in f.keys()}
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise ValueError(f"{tensors_file} is not a readable safetensors file ({e}); {fix}") from None
    if header is None:
        raise ValueError(
            f"{tensors_file} has no copy of {json_file.name} in its header ({header_key!r}), so nothing shows that "
            f"it belongs with {json_file}: it was not written by diffusers-sparse-vdit; {fix}"
        )
    try:
        same = _canonical(json.loads(header)) == _canonical(data)
    except json.JSONDecodeError:
        same = False
    if not same:
        raise ValueError(
            f"{json_file} and {tensors_file} do not belong together: the copy of {json_file.name} in the header of "
            f"{tensors_file.name} differs from it (a save interrupted between the two files, one of them replaced, "
            f"or a hand edit: change a map in Python and save it again); {fix}"
        )
    return tensors


def describe(value: Any) -> str:
    """A JSON value as it reads in the file (``null``, ``3.9``, ``"x"``), for error messages."""
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


def is_int(value: Any) -> bool:
    """Whether ``value`` is an integer: ``3`` and ``numpy.int64(3)``, not ``3.0`` or ``True``."""
    return isinstance(value, Integral) and not isinstance(value, bool)


def check_int(where: str, key: str, value: Any, *, minimum: int | None = None) -> int:
    """``value`` if it is an integer (not a float or bool) of at least ``minimum``, else a ValueError."""
    if not is_int(value) or (minimum is not None and value < minimum):
        kind = {None: "an integer", 1: "a positive integer"}.get(minimum, f"an integer >= {minimum}")
        raise ValueError(f"{where}: {key!r} must be {kind}, got {describe(value)}")
    return int(value)


def check_number(where: str, key: str, value: Any, *, optional: bool = False) -> float | None:
    """``value`` as a float if it is a finite number (not a bool; or None when ``optional``), else a ValueError."""
    if value is None and optional:
        return None
    if not isinstance(value, Real) or isinstance(value, bool) or not math.isfinite(value):
        or_null = " or null" if optional else ""
        raise ValueError(f"{where}: {key!r} must be a finite number{or_null}, got {describe(value)}")
    return float(value)


def check_str(where: str, key: str, value: Any, *, optional: bool = False) -> str | None:
    """``value`` if it is a non-empty string (or None when ``optional``), else a ValueError."""
    if (value is None and optional) or (isinstance(value, str) and value):
        return value
    or_null = " or null" if optional else ""
    raise ValueError(f"{where}: {key!r} must be a non-empty string{or_null}, got {describe(value)}")


def _canonical(data: Any) -> str:
    # compared as text: NaN != NaN would make equal dicts differ
    return json.dumps(data, sort_keys=True)


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())
