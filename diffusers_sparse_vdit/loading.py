"""Getting a pipeline to search or evaluate: a real checkpoint, or a tiny random one.

Shared by the ``sparse-vdit`` command, the examples and the notebook:

* :func:`load_pipeline` is ``DiffusionPipeline.from_pretrained`` (a Hub id or a local folder) in
  the dtype and on the device asked for, or, with ``tiny=VARIANT``,
  :func:`~diffusers_sparse_vdit.testing.tiny_pipeline`: the real pipeline classes at toy sizes
  with random weights, built in memory, which run anywhere in seconds;
* :func:`call_defaults` gives the call arguments that go with it (a tiny pipeline needs its toy
  sizes; a real one keeps the pipeline's own defaults);
* :func:`call_arguments` merges those with what the user set, leaving unset values to the
  pipeline; :func:`calibrate_arguments` passes them on to ``search.runner.calibrate``/``search``.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch

__all__ = [
    "DTYPES",
    "TINY_TILE_SIZE",
    "default_device",
    "default_dtype",
    "load_pipeline",
    "call_defaults",
    "call_arguments",
    "calibrate_arguments",
    "default_fps",
    "needs_image",
    "check_image_argument",
]

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}

# A tiny pipeline's video (9 frames of 32x48) is an 18-token grid: one 128-token tile, where
# every mask is FULL or SKIP. Tile 16 (the smallest the kernels take) makes it two tiles; even
# then the sparsest mask but SKIP keeps 0.80 of the pairs (1.0 for the tiny CogVideoX), too few
# for a FLOP target: tiny runs pick modes by the paper's rule instead.
TINY_TILE_SIZE = 16


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def default_dtype(device: str | torch.device) -> str:
    """bfloat16 on a GPU (what the three model families are released in); float32 elsewhere,
    where bfloat16 matmuls are slow and the Triton interpreter gets bfloat16 wrong."""
    return "bfloat16" if torch.device(device).type == "cuda" else "float32"


def load_pipeline(
    model: str | None = None,
    *,
    tiny: str | None = None,
    dtype: str | torch.dtype | dict | None = None,
    device: str | torch.device | None = None,
    **from_pretrained_kwargs,
):
    """A video pipeline on ``device`` (default: CUDA if there is one) in ``dtype`` (default: :func:`default_dtype`).

    ``model`` is a Hub repo id or a local folder, loaded with ``DiffusionPipeline.from_pretrained``
    (``from_pretrained_kwargs`` go there: ``revision``, ``variant``, ...). ``dtype`` may be a dict
    per component, as ``torch_dtype`` in diffusers (``{"vae": torch.float32, "default": torch.bfloat16}``).
    ``tiny`` (one of :data:`~diffusers_sparse_vdit.testing.VARIANTS`) builds a tiny random pipeline instead.
    A ``model`` that is a path (``./x``, ``/x``, ``a/b/c``...) but no folder raises ``FileNotFoundError`` at once.
    """
    if (model is None) == (tiny is None):
        raise ValueError("pass either a model (Hub id or local folder) or tiny=<variant>, not both or neither")
    device = torch.device(device or default_device())
    if dtype is None:
        dtype = default_dtype(device)
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}; choose one of {sorted(DTYPES)}")
        dtype = DTYPES[dtype]
    if tiny is not None:
        from .testing import tiny_pipeline

        pipe = tiny_pipeline(tiny)  # built in float32
        if isinstance(dtype, dict):
            dtype = dtype.get("default", torch.float32)
        if dtype != torch.float32:  # casting to float32 again would only make diffusers warn
            pipe.to(dtype=dtype)
        return pipe.to(device)

    from diffusers import DiffusionPipeline

    from .hub import check_local_folder

    check_local_folder(model, "pipeline folder")  # not minutes of Hub retries for a mistyped path
    pipe = DiffusionPipeline.from_pretrained(model, torch_dtype=dtype, **from_pretrained_kwargs)
    return pipe.to(device)


def call_defaults(tiny: str | None = None) -> dict[str, Any]:
    """Pipeline call arguments besides the prompt, the seed and the step count.

    For a tiny pipeline: its toy video size (9 frames of 32x48), a negative prompt with
    classifier-free guidance, a short text length, and for HunyuanVideo a bare prompt template
    (the tiny Llama cannot take the default one). For a real model: nothing, so the
    pipeline's own defaults apply.
    """
    if tiny is None:
        return {}
    from .testing import tiny_pipeline_inputs

    inputs = tiny_pipeline_inputs(tiny)
    for key in ("prompt", "generator", "output_type", "num_inference_steps"):
        inputs.pop(key)
    return inputs


def call_arguments(defaults: dict[str, Any], **overrides) -> dict[str, Any]:
    """``defaults`` updated with the ``overrides`` that are set (not None)."""
    return {**defaults, **{k: v for k, v in overrides.items() if v is not None}}


def calibrate_arguments(call: dict[str, Any]) -> dict[str, Any]:
    """Pipeline call arguments as ``runner.calibrate`` / ``runner.search`` take them: the video
    size and guidance scale by name (the runner records them with the scores), the rest in
    ``pipeline_kwargs``."""
    named = ("height", "width", "num_frames", "guidance_scale")
    rest = {k: v for k, v in call.items() if k not in named}
    return {**{k: call[k] for k in named if k in call}, "pipeline_kwargs": rest or None}


def default_fps(pipe) -> int:
    """Frame rate the model family's videos are meant to play at (diffusers' examples for each)."""
    name = type(pipe.transformer).__name__
    if name == "HunyuanVideoTransformer3DModel":
        return 15
    if name == "CogVideoXTransformer3DModel" and pipe.transformer.config.patch_size_t is None:
        return 8  # CogVideoX 2b/5b: 49 frames for 6 s; CogVideoX1.5 is 16 fps like Wan
    return 16


def needs_image(pipe) -> bool:
    """Whether the pipeline is image-to-video: its ``__call__`` requires an ``image``."""
    parameter = inspect.signature(type(pipe).__call__).parameters.get("image")
    return parameter is not None and parameter.default is inspect.Parameter.empty


def check_image_argument(pipe, call: dict[str, Any]) -> None:
    """Refuse an image-to-video pipeline's call arguments without the conditioning picture."""
    if needs_image(pipe) and call.get("image") is None:
        raise ValueError(
            f"{type(pipe).__name__} is an image-to-video pipeline: it needs the picture to animate. Pass it as "
            "pipeline_kwargs={'image': PIL.Image} (CLI: --image PATH); calibrate with pictures like the ones you will use"
        )
