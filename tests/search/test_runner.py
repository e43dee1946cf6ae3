"""The calibration runner on tiny random-weight pipelines of every family."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from diffusers_sparse_vdit import SparseVDiTConfig, TokenLayout, apply_sparse_vdit, remove_sparse_vdit
from diffusers_sparse_vdit.processors.install import architecture
from diffusers_sparse_vdit.search import DEFAULT_PROMPTS, ScoreSet, calibrate, load_prompts, search, solve_budget
from diffusers_sparse_vdit.testing import tiny_pipeline, tiny_pipeline_inputs

SIZE = dict(height=64, width=96, num_frames=9)  # 72 video tokens: 5 tiles of 16, room for sparse masks
PROMPTS = ["a cat walks in the city", "a dog runs on the beach"]


def extra_args(variant):
    # the tiny pipelines' own call settings besides size and steps (short text, HunyuanVideo's template)
    inputs = tiny_pipeline_inputs(variant)
    skip = {"prompt", "generator", "output_type", "num_inference_steps", *SIZE}
    return {k: v for k, v in inputs.items() if k not in skip}


def run(pipe, variant, **kwargs):
    kwargs = {"num_inference_steps": 3, "tile_size": 16, "sample_tiles": 4, "backend": "torch",
              "progress": False, "pipeline_kwargs": extra_args(variant), **SIZE, **kwargs}
    return kwargs


@pytest.mark.parametrize(
    "variant",
    ["wan", "hunyuan_video", "cogvideox", "cogvideox1.5", "hunyuan_video15", "wan_i2v", "cogvideox1.5_i2v", "hunyuan_video_i2v"],
)
def test_search_save_reload_apply_generate(variant, tmp_path):
    pipe = tiny_pipeline(variant)
    before = dict(pipe.transformer.attn_processors)
    result = search(pipe, PROMPTS, target_speedup=1.6, **run(pipe, variant))
    after = dict(pipe.transformer.attn_processors)
    assert all(after[k] is v for k, v in before.items())  # calibration left the pipeline as it was
    assert result.attention_speedup >= 1.6 - 1e-6  # the budget is met (coarse tiny candidates may beat it)
    counts = result.config.mode_counts()
    assert counts["FULL"] < sum(counts.values())  # something went sparse
    assert result.config.calibration["num_prompts"] == 2

    result.config.save_pretrained(tmp_path)
    config = SparseVDiTConfig.from_pretrained(tmp_path)
    assert config == result.config
    apply_sparse_vdit(pipe, config, backend="torch")
    video = pipe(**{**tiny_pipeline_inputs(variant), "generator": torch.Generator().manual_seed(0)}).frames
    remove_sparse_vdit(pipe)
    assert torch.isfinite(torch.as_tensor(video)).all()


def test_warmup_steps_are_not_scored_and_step_ranges_are_kept():
    pipe = tiny_pipeline("wan")
    scores = calibrate(pipe, PROMPTS[:1], dense_warmup_steps=1, step_ranges=[[0, 2], [2, -1]], **run(pipe, "wan"))
    # 3 steps, CFG as two calls a step: step 0 is warm-up, step 1 in range 0, step 2 in range 1
    assert scores.counts.tolist() == [[2, 2], [2, 2]]
    assert scores.metadata["dense_warmup_steps"] == 1 and scores.metadata["layout"]["frames"] == 3
    # what apply_sparse_vdit compares the map with (CogVideoX vs CogVideoX1.5 differ only there)
    recorded = scores.metadata["transformer_config"]
    assert recorded == architecture(pipe.transformer) and {"num_layers", "num_attention_heads", "patch_size"} <= set(recorded)
    with pytest.raises(ValueError, match="leaves no step"):
        calibrate(pipe, PROMPTS[:1], dense_warmup_steps=3, **run(pipe, "wan"))


def test_greedy_propagation_differs_from_dense():
    pipe = tiny_pipeline("wan")
    # one step, so the first layer sees the same input in both runs; a permissive rule, so the
    # greedy run really carries sparse outputs on
    dense = calibrate(pipe, PROMPTS[:1], **run(pipe, "wan", num_inference_steps=1))
    greedy = calibrate(pipe, PROMPTS[:1], propagate="greedy", lam=0.01, epsilon=10.0,
                       **run(pipe, "wan", num_inference_steps=1))
    torch.testing.assert_close(dense.errors[:, 0], greedy.errors[:, 0])
    assert not torch.allclose(dense.errors[:, 1], greedy.errors[:, 1])  # later layers see the sparse error


def test_progress_bar_counts_prompts_times_steps(monkeypatch):
    import diffusers_sparse_vdit.search.runner as runner

    totals, updates = [], []

    class Bar:
        def __init__(self, total, **kwargs):
            totals.append(total)

        def update(self, n):
            updates.append(n)

        def close(self):
            pass

    monkeypatch.setattr(runner, "tqdm", Bar)
    pipe = tiny_pipeline("wan")
    calibrate(pipe, PROMPTS, **run(pipe, "wan"))
    assert totals == [6] and sum(updates) == 6


@pytest.mark.parametrize(
    "progress, pipe_config, diffusers_bars, shown",
    [
        (None, {}, True, True),
        (None, {"disable": True}, True, False),  # pipe.set_progress_bar_config(disable=True)
        (None, {}, False, False),  # diffusers.utils.logging.disable_progress_bar()
        (True, {"disable": True}, False, True),  # an explicit argument wins
        (False, {}, True, False),
    ],
)
def test_progress_bar_follows_diffusers_settings(monkeypatch, progress, pipe_config, diffusers_bars, shown):
    import diffusers_sparse_vdit.search.runner as runner
    from diffusers.utils import logging

    bars = []

    class Bar:
        def __init__(self, total, **kwargs):
            bars.append(kwargs)

        def update(self, n):
            pass

        def close(self):
            pass

    monkeypatch.setattr(runner, "tqdm", Bar)
    pipe = tiny_pipeline("wan")
    pipe.set_progress_bar_config(**pipe_config, leave=False)
    try:
        if not diffusers_bars:
            logging.disable_progress_bar()
        calibrate(pipe, PROMPTS[:1], **run(pipe, "wan", num_inference_steps=1, progress=progress))
    finally:
        logging.enable_progress_bar()
    assert len(bars) == 1 and bars[0]["disable"] is not shown
    assert bars[0]["leave"] is False  # the pipeline's other bar settings carry over
    assert pipe._progress_bar_config == {**pipe_config, "leave": False}  # restored


def test_prompts_files(tmp_path):
    assert load_prompts(None) == list(DEFAULT_PROMPTS) and len(DEFAULT_PROMPTS) == 8
    path = tmp_path / "prompts.txt"
    path.write_text("# calibration prompts\n\na cat\n  a dog  \n")
    assert load_prompts(path) == ["a cat", "a dog"]
    path.write_text("# nothing\n\n")
    with pytest.raises(ValueError, match="holds no prompts"):
        load_prompts(path)
    path.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(ValueError, match="UTF-8"):
        load_prompts(path)
    with pytest.raises(FileNotFoundError):
        load_prompts(tmp_path / "missing.txt")


def test_refuses_a_pipeline_that_already_runs_a_map():
    pipe = tiny_pipeline("wan")
    result = search(pipe, PROMPTS[:1], target_speedup=1.5, **run(pipe, "wan"))
    apply_sparse_vdit(pipe, result.config, backend="torch")
    with pytest.raises(ValueError, match="remove_sparse_vdit"):
        calibrate(pipe, PROMPTS[:1], **run(pipe, "wan"))


def test_two_processes_merge_to_the_single_process_scores(tmp_path):
    worker = Path(__file__).with_name("_calibrate_worker.py")
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", str(worker), str(tmp_path)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    merged = ScoreSet.load(tmp_path)

    pipe = tiny_pipeline("wan")
    single = calibrate(pipe, ["a cat walks", "a dog runs", "the city at night"], num_inference_steps=2, tile_size=16,
                       sample_tiles=4, backend="torch", progress=False, pipeline_kwargs={"max_sequence_length": 16},
                       height=32, width=48, num_frames=9)  # as the worker calibrates
    assert torch.equal(merged.counts, single.counts)
    torch.testing.assert_close(merged.errors, single.errors, rtol=1e-5, atol=1e-9)


def test_equal_step_ranges_start_after_the_warm_up_and_are_capped():
    from diffusers_sparse_vdit.search.runner import equal_step_ranges

    assert equal_step_ranges(12, 4) == [[0, 3], [3, 6], [6, 9], [9, -1]]
    assert equal_step_ranges(50, 4, dense_warmup_steps=10) == [[0, 20], [20, 30], [30, 40], [40, -1]]
    assert equal_step_ranges(3, 8) == [[0, 1], [1, 2], [2, -1]]  # one range a step at most
    assert equal_step_ranges(5, 1) == [[0, -1]]
    # the dense last steps are a range of their own; the count is capped at the steps between
    assert equal_step_ranges(4, 8, dense_warmup_steps=1, dense_last_steps=1) == [[0, 2], [2, 3], [3, -1]]
    assert equal_step_ranges(10, 2, dense_last_steps=2) == [[0, 4], [4, 8], [8, -1]]
    with pytest.raises(ValueError, match="no step after"):
        equal_step_ranges(4, 2, dense_warmup_steps=4)


def test_an_image_to_video_pipeline_without_its_picture_is_refused():
    pipe = tiny_pipeline("cogvideox_i2v")
    kwargs = run(pipe, "cogvideox_i2v")
    del kwargs["pipeline_kwargs"]["image"]
    with pytest.raises(ValueError, match="CogVideoXImageToVideoPipeline is an image-to-video pipeline.*'image'"):
        calibrate(pipe, PROMPTS[:1], **kwargs)


def test_text_lengths_that_differ_within_a_step_are_scored_together():
    # HunyuanVideo-I2V encodes the negative prompt with 8 image tokens, the prompt with 4: two layouts a step
    pipe = tiny_pipeline("hunyuan_video_i2v")
    scores = calibrate(pipe, PROMPTS[:1], **run(pipe, "hunyuan_video_i2v"))
    assert scores.metadata["text_tokens_scored"] == [16, 20]
    assert scores.layout.text_tokens == 16 and scores.counts.tolist() == [[6, 6]]  # 3 steps x 2 calls, per layer


def test_one_run_scores_one_video_grid():
    from diffusers_sparse_vdit.search.runner import _Calibration

    calibration = _Calibration([None, None], 3, 0, {"tile_size": 16})
    first = calibration.scorer_for(TokenLayout(3, 4, 6, text_tokens=16, text_position="after"))
    assert calibration.scorer_for(TokenLayout(3, 4, 6, text_tokens=20, text_position="after")) is not first
    with pytest.raises(ValueError, match="one video grid"):
        calibration.scorer_for(TokenLayout(3, 2, 3, text_tokens=16, text_position="after"))


def test_search_with_fp8_keeps_the_heads_over_the_threshold_native():
    pipe = tiny_pipeline("wan")
    result = search(pipe, PROMPTS[:1], target_speedup=1.6, step_ranges=None, sensitivity=None,
                    precision="fp8", fp8_max_error=1.0, **run(pipe, "wan"))
    config = result.config
    assert config.precision.all() and config.calibration["solver"]["fp8_max_error"] == 1.0
    scores = calibrate(pipe, PROMPTS[:1], **run(pipe, "wan"))
    assert scores.fp8_errors.shape == (1, 2, 3) and (scores.fp8_errors > 0).all()
    threshold = float(scores.fp8_errors.median())
    config = solve_budget(scores, target_speedup=1.6, precision="fp8", fp8_max_error=threshold).config
    assert torch.equal(config.precision.bool(), scores.fp8_errors <= threshold) and 0 < config.precision.sum() < 6
    with pytest.raises(ValueError, match="leave fp8_calls at 1 or more"):
        search(pipe, PROMPTS[:1], target_speedup=1.6, precision="fp8", fp8_calls=0, **run(pipe, "wan"))
    with pytest.raises(ValueError, match="unknown precision 'bf16'"):
        search(pipe, PROMPTS[:1], precision="bf16", **run(pipe, "wan"))
