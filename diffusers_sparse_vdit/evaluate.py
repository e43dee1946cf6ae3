"""Dense against sparse: how close the videos are, and how much faster the sparse run is.

* :func:`compare_videos`: PSNR, SSIM and LPIPS of one video against another, through
  torchmetrics (``pip install 'diffusers-sparse-vdit[eval]'``). LPIPS needs torchvision and
  pretrained network weights that torchmetrics downloads on first use; when it cannot have
  them the metric is reported unavailable, with the reason, and the others still are.
* :func:`evaluate_map`: generates the same prompt from the same seed with the stock (dense)
  attention and with a mode map applied, times both, and compares them.
* :func:`save_video`: an MP4 through diffusers' ``export_to_video`` when imageio and ffmpeg
  are there, else the frames as PNG files.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["compare_videos", "as_video", "evaluate_map", "Evaluation", "save_video", "INSTALL_HINT"]

INSTALL_HINT = "pip install torchmetrics (or pip install 'diffusers-sparse-vdit[eval]')"


# Videos -----------------------------------------------------------------------------------
def as_video(video) -> torch.Tensor:
    """A video as float32 ``(frames, 3, height, width)`` in [0, 1], on the CPU.

    Takes what pipelines return for one video: a tensor (``output_type="pt"``, with or without
    the batch dimension of 1), an array (``output_type="np"``, channels last), or a list of
    PIL images (``output_type="pil"``); uint8 values are scaled from 0..255.
    """
    if isinstance(video, (list, tuple)):
        video = np.stack([np.asarray(frame) for frame in video])
    video = torch.as_tensor(video).detach().cpu()
    if video.dim() == 5:
        if video.shape[0] != 1:
            raise ValueError(f"expected one video, got a batch of {video.shape[0]}: pass frames[i]")
        video = video[0]
    if video.dim() != 4:
        raise ValueError(
            f"expected a video of 4 dimensions (frames, channels, height, width), got {tuple(video.shape)}"
        )
    if video.shape[1] not in (1, 3) and video.shape[-1] in (1, 3):  # channels last (numpy, PIL)
        video = video.permute(0, 3, 1, 2)
    scale = 255.0 if video.dtype == torch.uint8 else 1.0
    return video.float().div(scale).clamp(0, 1)


# Metrics ----------------------------------------------------------------------------------
def compare_videos(dense, sparse, *, lpips: bool = True) -> dict[str, Any]:
    """How close ``sparse`` is to the reference ``dense`` (two videos of the same shape).

    Returns ``psnr`` (dB, over all pixels of all frames; ``inf`` when identical), ``ssim``
    (mean over frames; 1 = identical), ``lpips`` (AlexNet, mean over frames; 0 = identical),
    ``max_abs_diff`` and ``frames``; a metric that cannot be computed is None, with the reason
    in ``unavailable[name]``.
    """
    try:
        from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure
    except ImportError:
        raise ImportError(f"compare_videos needs torchmetrics: {INSTALL_HINT}") from None
    dense, sparse = as_video(dense), as_video(sparse)
    if dense.shape != sparse.shape:
        raise ValueError(f"the videos differ in shape: {tuple(dense.shape)} and {tuple(sparse.shape)}")

    result: dict[str, Any] = {
        "frames": dense.shape[0],
        "max_abs_diff": float((dense - sparse).abs().max()),
        "unavailable": {},
    }
    # Frames are the batch: SSIM and LPIPS average per-frame scores, PSNR is one MSE over all
    # pixels. The metrics accumulate over chunks of frames: a real video (81 frames of 768x1360)
    # would take tens of GB of intermediate maps at once.
    result["psnr"] = _chunked(PeakSignalNoiseRatio(data_range=1.0), sparse, dense)
    try:
        result["ssim"] = _chunked(StructuralSimilarityIndexMeasure(data_range=1.0), sparse, dense)
    except (ValueError, RuntimeError) as e:  # frames smaller than SSIM's 11-pixel window
        result["ssim"] = None
        result["unavailable"]["ssim"] = str(e)
    result["lpips"] = None
    if not lpips:
        result["unavailable"]["lpips"] = "not requested"
    else:
        metric, reason = _lpips_metric()
        if metric is None:
            result["unavailable"]["lpips"] = reason
        else:
            result["lpips"] = _chunked(metric, sparse, dense)
    return result


def _chunked(metric, preds: torch.Tensor, target: torch.Tensor, frames: int = 8) -> float:
    """A torchmetrics metric over a video, updated a few frames at a time, then reset for reuse."""
    with torch.no_grad():
        for i in range(0, preds.shape[0], frames):
            metric.update(preds[i : i + frames], target[i : i + frames])
        value = float(metric.compute())
    metric.reset()
    return value


@functools.cache
def _lpips_metric():
    """torchmetrics' LPIPS (AlexNet) or None and why not; built once a process (it may download weights)."""
    if importlib.util.find_spec("torchvision") is None:  # torchmetrics builds LPIPS on torchvision's AlexNet
        return None, "LPIPS needs torchvision: pip install torchvision"
    from torchmetrics.image import LearnedPerceptualImagePatchSimilarity

    try:
        return LearnedPerceptualImagePatchSimilarity(net_type="alex", normalize=True).eval(), None
    except Exception as e:  # noqa: BLE001 -- any failure to fetch or build the network means "unavailable"
        return None, f"LPIPS could not load its pretrained network (it downloads weights on first use): {e}"


# Timed generation -------------------------------------------------------------------------
@contextlib.contextmanager
def _transformer_timer(transformers, seconds: list[float]):
    """Adds up the wall time of the transformers' forwards (the part sparse attention speeds up)."""
    cuda = next(transformers[0].parameters()).is_cuda
    start = []

    def sync():
        if cuda:
            torch.cuda.synchronize()

    def before(module, args):
        sync()
        start.append(time.perf_counter())

    def after(module, args, output):
        sync()
        seconds.append(time.perf_counter() - start.pop())

    handles = [h for t in transformers for h in (t.register_forward_pre_hook(before), t.register_forward_hook(after))]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _generate(pipe, prompt, *, seed, num_inference_steps, **call):
    """One video (float32 ``(F, 3, H, W)``), its wall time and its transformer time, in seconds."""
    device = pipe._execution_device
    generator = torch.Generator(device="cpu").manual_seed(seed)  # same noise on any device
    transformer_seconds: list[float] = []
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    # both experts of a Wan2.2 A14B pipeline
    transformers = [t for t in (pipe.transformer, getattr(pipe, "transformer_2", None)) if t is not None]
    with _transformer_timer(transformers, transformer_seconds):
        frames = pipe(
            prompt=prompt, num_inference_steps=num_inference_steps, generator=generator, output_type="pt", **call
        ).frames
    if device.type == "cuda":
        torch.cuda.synchronize()
    return as_video(frames[0]), time.perf_counter() - start, sum(transformer_seconds)


@dataclass
class Evaluation:
    """Dense and sparse videos of one prompt and seed, their metrics and timings."""

    dense: torch.Tensor  # float32 (F, 3, H, W) in [0, 1]
    sparse: torch.Tensor
    metrics: dict[str, Any]
    timings: dict[str, dict[str, float]]  # {"dense"|"sparse": {"total_s", "transformer_s"}}
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def speedup(self) -> float:
        """End-to-end: text encoding, denoising and VAE decoding."""
        return self.timings["dense"]["total_s"] / self.timings["sparse"]["total_s"]

    @property
    def transformer_speedup(self) -> float:
        """Of the transformer forwards alone, where attention is."""
        dense, sparse = self.timings["dense"]["transformer_s"], self.timings["sparse"]["transformer_s"]
        return dense / sparse if sparse > 0 else math.inf

    def to_dict(self) -> dict[str, Any]:
        """The report (no videos): settings, metrics, timings, speedups, versions."""
        import diffusers

        from . import __version__

        return {
            "settings": self.settings,
            "metrics": self.metrics,
            "timings": self.timings,
            "speedup": {"end_to_end": self.speedup, "transformer": self.transformer_speedup},
            "versions": {
                "diffusers-sparse-vdit": __version__,
                "diffusers": diffusers.__version__,
                "torch": torch.__version__,
            },
        }

    def summary(self) -> str:
        s, m, t = self.settings, self.metrics, self.timings
        what = " with map ".join(str(x) for x in (s.get("model"), s["map"].get("source")) if x)
        size = "x".join(str(s[k]) for k in ("height", "width") if s.get(k)) or "default size"
        frames = f", {s['num_frames']} frames" if s.get("num_frames") else ""
        lines = [
            f"Sparse-vDiT evaluation{': ' + what if what else ''}",
            f"prompt {s['prompt']!r}, {s['num_inference_steps']} steps, {size}{frames}, seed {s['seed']}, "
            f"sparse backend {s['backend']}, dense attention {s['dense_attention_backend']}",
            f"{'':<8}{'total':>10}{'transformer':>14}",
            f"{'dense':<8}{t['dense']['total_s']:>9.2f}s{t['dense']['transformer_s']:>13.2f}s",
            f"{'sparse':<8}{t['sparse']['total_s']:>9.2f}s{t['sparse']['transformer_s']:>13.2f}s",
            f"{'speedup':<8}{self.speedup:>9.2f}x{self.transformer_speedup:>13.2f}x",
            f"PSNR   {m['psnr']:.2f} dB" if math.isfinite(m["psnr"]) else "PSNR   inf (identical videos)",
        ]
        for name, fmt in (("ssim", "SSIM   {:.4f}"), ("lpips", "LPIPS  {:.4f}")):
            value = m.get(name)
            lines.append(
                fmt.format(value) if value is not None else f"{name.upper():<6} unavailable ({m['unavailable'][name]})"
            )
        return "\n".join(lines)

    __str__ = summary

    def save(self, directory: str | Path, *, fps: int = 16) -> dict[str, Path]:
        """Write ``dense`` and ``sparse`` videos (:func:`save_video`) and ``report.json`` into ``directory``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for name in ("dense", "sparse"):
            _remove_video(directory / name)  # an earlier run's longer video would leave frames behind
        paths = {name: save_video(getattr(self, name), directory / name, fps=fps) for name in ("dense", "sparse")}
        paths["report"] = directory / "report.json"
        paths["report"].write_text(json.dumps(_jsonable(self.to_dict()), indent=2) + "\n")
        return paths


def evaluate_map(
    pipe,
    mode_map,
    prompt: str,
    *,
    seed: int = 0,
    num_inference_steps: int = 50,
    backend: str = "auto",
    warmup: bool = True,
    lpips: bool = True,
    **call_kwargs,
) -> Evaluation:
    """Generate ``prompt`` dense, then with ``mode_map`` applied, from the same seed; compare and time.

    ``mode_map``: a :class:`~diffusers_sparse_vdit.SparseVDiTConfig`, a folder or a Hub repo id.
    ``call_kwargs`` go to the pipeline (``height``, ``width``, ``num_frames``, ``guidance_scale``...).
    The dense run uses the transformer's attention as it is set (diffusers' default backend
    unless ``set_attention_backend`` chose another). With ``warmup``, each configuration first
    runs a short generation (the map's dense warm-up steps plus one sparse step) so that kernel
    compilation and autotuning stay out of the timings. The map is removed again at the end.
    """
    from .config import SparseVDiTConfig
    from .processors import apply_sparse_vdit, remove_sparse_vdit
    from .processors.hook import get_sparse_vdit_hook

    config = mode_map if isinstance(mode_map, SparseVDiTConfig) else SparseVDiTConfig.from_pretrained(mode_map)
    if get_sparse_vdit_hook(pipe.transformer) is not None:
        raise ValueError(
            "a Sparse-vDiT map is already applied to this pipeline: remove_sparse_vdit(pipe) first, "
            "so that the dense run is dense"
        )
    warmup_steps = min(num_inference_steps, config.dense_warmup_steps + 1)
    call = dict(prompt=prompt, seed=seed, num_inference_steps=num_inference_steps, **call_kwargs)

    def run():
        if warmup:
            _generate(pipe, **{**call, "num_inference_steps": warmup_steps})
        return _generate(pipe, **call)

    dense, dense_s, dense_transformer_s = run()
    apply_sparse_vdit(pipe, config, backend=backend)
    try:
        sparse, sparse_s, sparse_transformer_s = run()
    finally:
        remove_sparse_vdit(pipe)
    return Evaluation(
        dense=dense,
        sparse=sparse,
        metrics=compare_videos(dense, sparse, lpips=lpips),
        timings={
            "dense": {"total_s": dense_s, "transformer_s": dense_transformer_s},
            "sparse": {"total_s": sparse_s, "transformer_s": sparse_transformer_s},
        },
        settings={
            "prompt": prompt,
            "seed": seed,
            "num_inference_steps": num_inference_steps,
            "backend": backend,
            "warmup": warmup,
            "device": str(pipe._execution_device),
            "dtype": str(pipe.transformer.dtype).removeprefix("torch."),
            "dense_attention_backend": _attention_backend(pipe.transformer),
            "map": {
                "source": None if mode_map is config else str(mode_map),
                "family": config.family,
                "base_model": config.base_model,
                "mode_counts": config.mode_counts(),
                "dense_warmup_steps": config.dense_warmup_steps,
            },
            **{k: v for k, v in call_kwargs.items() if isinstance(v, (str, int, float, bool))},
        },
    )


def _attention_backend(transformer) -> str:
    """The attention backend the dense run used, as diffusers names it."""
    backends = {getattr(p, "_attention_backend", None) for p in transformer.attn_processors.values()}
    backends.discard(None)
    if not backends:
        return "default"
    return ", ".join(sorted(str(getattr(b, "value", b)) for b in backends))


# Files ------------------------------------------------------------------------------------
def save_video(video, path: str | Path, *, fps: int = 16) -> Path:
    """Write ``path``.mp4 with diffusers' ``export_to_video`` when imageio and imageio-ffmpeg
    are installed, else ``path``/frame_0000.png, ... Returns what was written."""
    from diffusers.utils import export_to_video
    from PIL import Image

    frames = as_video(video).permute(0, 2, 3, 1).numpy()  # (F, H, W, C) floats, as export_to_video takes
    path = Path(path)
    if _can_write_mp4():
        return Path(export_to_video(list(frames), str(path.with_suffix(".mp4")), fps=fps))
    path.mkdir(parents=True, exist_ok=True)
    for i, frame in enumerate(frames):
        Image.fromarray((frame * 255).round().astype(np.uint8)).save(path / f"frame_{i:04d}.png")
    return path


def _remove_video(path: Path) -> None:
    """Remove what :func:`save_video` wrote at ``path``: ``path``.mp4, or ``path``/frame_*.png (the folder if then empty)."""
    path.with_suffix(".mp4").unlink(missing_ok=True)
    if path.is_dir():
        for frame in path.glob("frame_*.png"):
            frame.unlink()
        if not any(path.iterdir()):
            path.rmdir()


def _can_write_mp4() -> bool:
    # export_to_video writes through imageio's ffmpeg plugin (without imageio it falls back to OpenCV)
    return all(importlib.util.find_spec(name) is not None for name in ("imageio", "imageio_ffmpeg"))


def _jsonable(value):
    """Strict JSON: non-finite floats (PSNR of identical videos) become strings."""
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value
