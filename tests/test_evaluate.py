"""diffusers_sparse_vdit.evaluate: video metrics, dense-vs-sparse runs on a tiny pipeline, files."""

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from diffusers_sparse_vdit import ModeSpec
from diffusers_sparse_vdit import evaluate as evaluate_module
from diffusers_sparse_vdit.evaluate import Evaluation, as_video, compare_videos, evaluate_map, save_video
from diffusers_sparse_vdit.loading import call_defaults
from diffusers_sparse_vdit.processors import apply_sparse_vdit, get_sparse_vdit_hook
from diffusers_sparse_vdit.testing import tiny_mode_map, tiny_pipeline

pytest.importorskip("torchmetrics")

FULL, SKIP = ModeSpec.full(), ModeSpec.skip()


def video(frames=5, height=24, width=32, seed=0):
    return torch.rand(frames, 3, height, width, generator=torch.Generator().manual_seed(seed))


# Videos -----------------------------------------------------------------------------------
def test_as_video_takes_what_pipelines_return():
    v = video()
    channels_last = v.permute(0, 2, 3, 1).numpy()  # output_type="np"
    uint8 = (channels_last * 255).round().astype(np.uint8)
    pil = [Image.fromarray(frame) for frame in uint8]  # output_type="pil"
    assert torch.equal(as_video(v[None]), v)  # output_type="pt", batch of one
    assert torch.equal(as_video(channels_last), v)
    assert torch.allclose(as_video(pil), v, atol=0.5 / 255 + 1e-6)
    assert torch.allclose(as_video(uint8[None]), v, atol=0.5 / 255 + 1e-6)
    with pytest.raises(ValueError, match="batch of 2"):
        as_video(torch.stack([v, v]))
    with pytest.raises(ValueError, match="4 dimensions"):
        as_video(v[0])


# Metrics ----------------------------------------------------------------------------------
def test_identical_videos():
    v = video()
    m = compare_videos(v, v.clone(), lpips=False)
    assert m["psnr"] == math.inf and m["max_abs_diff"] == 0 and m["frames"] == 5
    assert m["ssim"] == pytest.approx(1.0, abs=1e-5)
    assert m["lpips"] is None and m["unavailable"] == {"lpips": "not requested"}


def test_psnr_is_over_all_frames_and_ssim_drops_with_noise():
    dense = video()
    noise = 0.05 * torch.randn(dense.shape, generator=torch.Generator().manual_seed(1))
    sparse = (dense + noise).clamp(0, 1)
    m = compare_videos(dense, sparse, lpips=False)
    assert m["psnr"] == pytest.approx(10 * math.log10(1 / float((dense - sparse).square().mean())), rel=1e-4)
    assert 0 < m["ssim"] < 0.99
    worse = compare_videos(dense, (dense + 4 * noise).clamp(0, 1), lpips=False)
    assert worse["psnr"] < m["psnr"] and worse["ssim"] < m["ssim"]


def test_long_videos_are_measured_in_chunks_with_the_same_result():
    dense, sparse = video(frames=20), video(frames=20, seed=1)
    whole = evaluate_module._chunked(ssim_metric(), sparse, dense, frames=20)
    assert evaluate_module._chunked(ssim_metric(), sparse, dense, frames=3) == pytest.approx(whole, rel=1e-5)
    m = compare_videos(dense, sparse, lpips=False)
    assert m["ssim"] == pytest.approx(whole, rel=1e-5)
    assert m["psnr"] == pytest.approx(10 * math.log10(1 / float((dense - sparse).square().mean())), rel=1e-4)


def ssim_metric():
    from torchmetrics.image import StructuralSimilarityIndexMeasure

    return StructuralSimilarityIndexMeasure(data_range=1.0)


def test_a_metric_that_cannot_be_computed_says_why():
    m = compare_videos(video(height=4, width=4), video(height=4, width=4, seed=1), lpips=False)
    assert m["ssim"] is None and "Padding size" in m["unavailable"]["ssim"]
    assert math.isfinite(m["psnr"])
    with pytest.raises(ValueError, match="differ in shape"):
        compare_videos(video(), video(frames=4))


def test_lpips_unavailable_or_computed(monkeypatch):
    dense, sparse = video(), video(seed=1)
    monkeypatch.setattr(
        evaluate_module, "_lpips_metric", lambda: (None, "LPIPS needs torchvision: pip install torchvision")
    )
    m = compare_videos(dense, sparse)
    assert m["lpips"] is None and "torchvision" in m["unavailable"]["lpips"]

    class FakeLPIPS:  # stands for torchmetrics' metric: updated with (sparse, dense) frames in [0, 1]
        frames = 0

        def update(self, a, b):
            assert a.shape == b.shape and a.shape[1:] == (3, 24, 32) and 0 <= a.min() and a.max() <= 1
            self.frames += a.shape[0]

        def compute(self):
            return torch.tensor(0.05 * self.frames)

        def reset(self):
            self.frames = 0

    monkeypatch.setattr(evaluate_module, "_lpips_metric", lambda: (FakeLPIPS(), None))
    m = compare_videos(dense, sparse)
    assert m["lpips"] == pytest.approx(0.25) and "lpips" not in m["unavailable"]  # all 5 frames


def test_lpips_without_torchvision_says_so(monkeypatch):
    real_find_spec = evaluate_module.importlib.util.find_spec
    monkeypatch.setattr(
        evaluate_module.importlib.util,
        "find_spec",
        lambda name: None if name == "torchvision" else real_find_spec(name),
    )
    evaluate_module._lpips_metric.cache_clear()
    try:
        metric, reason = evaluate_module._lpips_metric()
    finally:
        evaluate_module._lpips_metric.cache_clear()
    assert metric is None and "pip install torchvision" in reason


# Dense against sparse ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def pipe():
    return tiny_pipeline("wan")


def tiny_map(pipe, layers):
    return tiny_mode_map(pipe.transformer, layers)


def test_an_all_full_map_reproduces_the_dense_video(pipe):
    # backend "auto" runs all-FULL layers with the stock attention: the very same video
    report = evaluate_map(
        pipe,
        tiny_map(pipe, [[FULL] * 3] * 2),
        "a cat",
        num_inference_steps=2,
        lpips=False,
        **call_defaults("wan"),
    )
    assert torch.equal(report.dense, report.sparse) and report.metrics["psnr"] == math.inf
    assert report.dense.shape == (9, 3, 32, 48)


def test_evaluate_map_compares_times_and_removes_the_map(pipe):
    config = tiny_map(pipe, [[FULL, SKIP, ModeSpec.diagonal(1.0)], [SKIP, FULL, ModeSpec.vertical_stripe(1)]])
    report = evaluate_map(pipe, config, "a cat", seed=3, num_inference_steps=2, backend="torch", **call_defaults("wan"))
    assert get_sparse_vdit_hook(pipe.transformer) is None  # dense again
    assert 0 < report.metrics["psnr"] < math.inf and report.metrics["ssim"] < 1
    for run in ("dense", "sparse"):
        assert 0 < report.timings[run]["transformer_s"] <= report.timings[run]["total_s"]
    assert report.speedup > 0 and report.transformer_speedup > 0
    s = report.settings
    assert (s["seed"], s["num_inference_steps"], s["height"], s["width"], s["num_frames"]) == (3, 2, 32, 48, 9)
    assert s["map"]["mode_counts"]["SKIP"] == 2 and s["map"]["source"] is None
    text = report.summary()
    for line in ("dense", "sparse", "speedup", "PSNR", "SSIM", "LPIPS"):
        assert line in text


def test_evaluate_times_both_experts_of_a_wan22_pipeline(monkeypatch):
    import itertools
    import types

    import diffusers_sparse_vdit.evaluate as evaluate_module

    wan22 = tiny_pipeline("wan2.2")
    low = tiny_mode_map(wan22.transformer_2, [[FULL] * 3] * 2)
    config = tiny_mode_map(wan22.transformer, [[FULL] * 3] * 2, transformer_2=low)
    # a clock that ticks once a reading: each timed forward then lasts exactly 1
    ticks = itertools.count()
    monkeypatch.setattr(evaluate_module, "time", types.SimpleNamespace(perf_counter=lambda: float(next(ticks))))
    report = evaluate_map(wan22, config, "a cat", num_inference_steps=4, warmup=False, lpips=False,
                          **call_defaults("wan"))
    assert get_sparse_vdit_hook(wan22.transformer_2) is None
    for run in ("dense", "sparse"):  # 4 steps, CFG: 4 calls of transformer and 4 of transformer_2
        assert report.timings[run]["transformer_s"] == 8


def test_evaluate_map_wants_a_dense_pipeline(pipe):
    config = tiny_map(pipe, [[FULL] * 3] * 2)
    apply_sparse_vdit(pipe, config, backend="torch")
    try:
        with pytest.raises(ValueError, match="already applied"):
            evaluate_map(pipe, config, "a cat", num_inference_steps=1)
    finally:
        from diffusers_sparse_vdit.processors import remove_sparse_vdit

        remove_sparse_vdit(pipe)


# Files ------------------------------------------------------------------------------------
def test_save_video_falls_back_to_png_frames(tmp_path, monkeypatch):
    monkeypatch.setattr(evaluate_module, "_can_write_mp4", lambda: False)
    v = video(frames=3)
    path = save_video(v, tmp_path / "clip")
    frames = sorted(path.glob("*.png"))
    assert [f.name for f in frames] == ["frame_0000.png", "frame_0001.png", "frame_0002.png"]
    assert torch.allclose(as_video([Image.open(f) for f in frames]), v, atol=0.5 / 255 + 1e-6)


@pytest.mark.skipif(not evaluate_module._can_write_mp4(), reason="needs imageio and imageio-ffmpeg")
def test_save_video_writes_mp4(tmp_path):
    path = save_video(video(frames=3, height=32, width=32), tmp_path / "clip")
    assert path.suffix == ".mp4" and path.stat().st_size > 0


def test_report_is_strict_json(tmp_path, pipe, monkeypatch):
    monkeypatch.setattr(evaluate_module, "_can_write_mp4", lambda: False)
    report = evaluate_map(
        pipe,
        tiny_map(pipe, [[FULL] * 3] * 2),
        "a cat",
        num_inference_steps=1,
        warmup=False,
        lpips=False,
        **call_defaults("wan"),
    )
    paths = report.save(tmp_path / "eval")
    data = json.loads(paths["report"].read_text(), parse_constant=lambda c: pytest.fail(f"non-standard JSON {c}"))
    assert data["metrics"]["psnr"] == "inf"  # identical videos
    assert set(data) == {"settings", "metrics", "timings", "speedup", "versions"}
    assert paths["dense"].is_dir() and len(list(paths["sparse"].glob("*.png"))) == 9


def test_save_into_an_earlier_runs_folder_leaves_no_stale_frames(tmp_path, monkeypatch):
    monkeypatch.setattr(evaluate_module, "_can_write_mp4", lambda: False)
    metrics = {"psnr": math.inf, "ssim": 1.0, "lpips": None, "unavailable": {"lpips": "off"}}
    timings = {"dense": {"total_s": 1.0, "transformer_s": 0.5}, "sparse": {"total_s": 1.0, "transformer_s": 0.5}}
    long, short = video(frames=5), video(frames=3)
    Evaluation(long, long, metrics, timings).save(tmp_path)
    (tmp_path / "dense.mp4").write_bytes(b"an older run's mp4")  # written where imageio was installed
    (tmp_path / "dense" / "notes.txt").write_text("mine")
    Evaluation(short, short, metrics, timings).save(tmp_path)
    for name in ("dense", "sparse"):
        assert sorted(p.name for p in (tmp_path / name).glob("*.png")) == [f"frame_{i:04d}.png" for i in range(3)]
    assert not (tmp_path / "dense.mp4").exists() and (tmp_path / "dense" / "notes.txt").exists()
