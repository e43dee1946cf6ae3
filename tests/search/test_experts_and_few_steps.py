"""The search on Wan2.2-style pipelines (two experts; per-token timesteps) and on few-step schedules."""

import pytest
import torch

from diffusers_sparse_vdit import SparseVDiTConfig, apply_sparse_vdit, remove_sparse_vdit
from diffusers_sparse_vdit.processors import get_sparse_vdit_hook
from diffusers_sparse_vdit.processors.wan import WanSparseAttnProcessor
from diffusers_sparse_vdit.search import ScoreSet, calibrate, search
from diffusers_sparse_vdit.testing import tiny_pipeline, tiny_pipeline_inputs

from .test_runner import PROMPTS, SIZE, run

STEPS = 4  # the tiny Wan2.2 runs steps 0-1 on transformer, 2-3 on transformer_2


def _generate(pipe, variant, **kwargs):
    inputs = {**tiny_pipeline_inputs(variant, num_inference_steps=STEPS), **SIZE, **kwargs}
    with torch.no_grad():
        return pipe(**inputs).frames


@pytest.fixture(scope="module")
def wan22():
    pipe = tiny_pipeline("wan2.2")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_each_expert_is_scored_on_its_own_steps(wan22):
    scores = calibrate(wan22, PROMPTS[:1], step_ranges=[[0, 1], [1, 3], [3, -1]],
                       **run(wan22, "wan2.2", num_inference_steps=STEPS))
    high, low = scores["transformer"], scores["transformer_2"]
    assert high.metadata["expert_steps"] == [0, 2] and low.metadata["expert_steps"] == [2, 4]
    # each keeps the ranges it runs, re-tiled: transformer steps 0 | 1, transformer_2 steps 2 | 3 (CFG: 2 calls)
    assert high.step_ranges == [[0, 1], [1, -1]] and high.counts.tolist() == [[2, 2], [2, 2]]
    assert low.step_ranges == [[0, 3], [3, -1]] and low.counts.tolist() == [[2, 2], [2, 2]]
    assert not torch.equal(high.errors[1], low.errors[0])  # other weights, other scores


def test_search_save_load_apply_generate_with_both_experts(wan22, tmp_path):
    dense = _generate(wan22, "wan2.2")
    result = search(wan22, PROMPTS, dense_warmup_steps=1, lam=0.01, epsilon=10.0,
                    **run(wan22, "wan2.2", num_inference_steps=STEPS))
    config = result.config
    assert config.transformer_2 is not None and set(result.experts) == {"transformer", "transformer_2"}
    for expert in config.experts.values():
        assert expert.mode_counts()["FULL"] < expert.modes.numel()  # both went sparse
    config.save_pretrained(tmp_path)
    loaded = SparseVDiTConfig.from_pretrained(tmp_path)
    assert loaded == config

    apply_sparse_vdit(wan22, tmp_path, backend="torch")
    try:
        for transformer in (wan22.transformer, wan22.transformer_2):
            assert all(isinstance(transformer.blocks[i].attn1.processor, WanSparseAttnProcessor) for i in range(2))
        frames = _generate(wan22, "wan2.2")
    finally:
        remove_sparse_vdit(wan22)
    assert torch.isfinite(frames).all() and (frames - dense).abs().max() > 1e-4
    assert get_sparse_vdit_hook(wan22.transformer_2) is None


def test_scores_of_two_experts_round_trip_and_solve_the_same(wan22, tmp_path):
    from diffusers_sparse_vdit.search.scores import load_expert_scores, save_expert_scores

    scores = calibrate(wan22, PROMPTS[:1], **run(wan22, "wan2.2", num_inference_steps=STEPS))
    save_expert_scores(scores, tmp_path / "scores")
    loaded = load_expert_scores(tmp_path / "scores")
    assert set(loaded) == {"transformer", "transformer_2"}
    assert all(torch.equal(loaded[n].errors, scores[n].errors) for n in scores)
    # a folder of one transformer's scores loads as one ScoreSet, as before
    scores["transformer"].save(tmp_path / "one")
    assert isinstance(load_expert_scores(tmp_path / "one"), ScoreSet)
    # scores of another run beside them are refused
    other = calibrate(wan22, PROMPTS[1:], **run(wan22, "wan2.2", num_inference_steps=STEPS))
    other["transformer_2"].save(tmp_path / "scores" / "transformer_2")
    with pytest.raises(ValueError, match="not from the same calibration run"):
        load_expert_scores(tmp_path / "scores")


def test_ti2v_per_token_timesteps_calibrate_and_generate():
    pipe = tiny_pipeline("wan2.2-ti2v")
    pipe.set_progress_bar_config(disable=True)
    result = search(pipe, PROMPTS[:1], lam=0.01, epsilon=10.0, **run(pipe, "wan2.2-ti2v", num_inference_steps=2))
    assert result.config.transformer_2 is None and result.config.mode_counts()["FULL"] < 6
    dense = _generate(pipe, "wan2.2-ti2v", num_inference_steps=2)
    apply_sparse_vdit(pipe, result.config, backend="torch")
    frames = _generate(pipe, "wan2.2-ti2v", num_inference_steps=2)
    remove_sparse_vdit(pipe)
    assert torch.isfinite(frames).all() and (frames - dense).abs().max() > 1e-4


def test_few_step_schedule_without_guidance():
    """A step-distilled checkpoint's way: 4 steps, CFG off, the first and the last step dense."""
    pipe = tiny_pipeline("wan")
    pipe.set_progress_bar_config(disable=True)
    kwargs = run(pipe, "wan", num_inference_steps=4, guidance_scale=1.0)
    scores = calibrate(pipe, PROMPTS[:1], dense_warmup_fraction=0.25, dense_last_steps=1,
                       step_ranges=[[0, 2], [2, -1]], **kwargs)
    # one call a step (no CFG); steps 0 and 3 are dense and unscored
    assert scores.counts.tolist() == [[1, 1], [1, 1]]
    assert scores.metadata["dense_warmup_steps"] == 1 and scores.metadata["dense_last_steps"] == 1
    result = search(pipe, PROMPTS[:1], dense_warmup_fraction=0.25, dense_last_steps=1, lam=0.01, epsilon=10.0,
                    step_ranges=[[0, 2], [2, -1]], **kwargs)
    config = result.config
    assert config.dense_warmup_steps == 1 and config.step_ranges == [[0, 2], [2, 3], [3, -1]]
    assert config.mode_counts(2)["FULL"] == 6 and config.mode_counts(0)["FULL"] < 6

    seen = []

    class Recorder(WanSparseAttnProcessor):
        def attend(self, query, key, value, plan, **kw):
            seen.append((self.state.step, plan is not None))
            return super().attend(query, key, value, plan, **kw)

    apply_sparse_vdit(pipe, config, processor_cls=Recorder)  # "auto": all-FULL layers run the stock attention
    frames = _generate(pipe, "wan", guidance_scale=1.0)
    remove_sparse_vdit(pipe)
    assert torch.isfinite(frames).all()
    # dense at step 0 (warm-up) and step 3 (an all-FULL range runs the stock attention)
    assert [plan for step, plan in seen if step in (0, 3)] == [False] * 4
    assert all(plan for step, plan in seen if step in (1, 2))
    with pytest.raises(ValueError, match="more dense steps than the schedule's 4"):
        calibrate(pipe, PROMPTS[:1], dense_warmup_steps=3, dense_last_steps=2, **kwargs)
    with pytest.raises(ValueError, match="leaves no step after 2 warm-up steps and 2 last steps"):
        calibrate(pipe, PROMPTS[:1], dense_warmup_steps=2, dense_last_steps=2, **kwargs)


def test_default_step_ranges_and_sensitivity_on_a_few_step_schedule():
    """search()'s defaults (8 step ranges, measured sensitivity) with a target: ranges cut between the dense steps."""
    pipe = tiny_pipeline("wan")
    pipe.set_progress_bar_config(disable=True)
    result = search(pipe, PROMPTS[:1], target_density=0.9, dense_warmup_fraction=0.25, dense_last_steps=1,
                    sensitivity_prompts=1, **run(pipe, "wan", num_inference_steps=4, guidance_scale=1.0))
    config = result.config
    # sparse steps 1 and 2 (8 ranges capped at 2; the warm-up joins the first), the dense last step alone
    assert config.step_ranges == [[0, 2], [2, 3], [3, -1]] and config.dense_warmup_steps == 1
    assert config.mode_counts(2)["FULL"] == 6
    assert config.calibration["sensitivity"]["dense_last_steps"] == 1
    assert result.attention_density <= 0.9 + 1e-9


def test_sensitivity_is_skipped_with_a_note_for_two_experts(wan22, caplog):
    with caplog.at_level("WARNING", logger="diffusers.sparse_vdit"):
        result = search(wan22, PROMPTS[:1], target_density=0.9, sensitivity_prompts=1,
                        **run(wan22, "wan2.2", num_inference_steps=STEPS))
    assert "sensitivity is not measured for two experts' scores" in caplog.text
    assert result.config.transformer_2 is not None and result.attention_density <= 0.9 + 1e-9
    # the default 8 ranges, capped at the 4 steps, each expert keeping its own
    assert result.config.step_ranges == [[0, 1], [1, -1]] and result.config.transformer_2.step_ranges == [[0, 3], [3, -1]]
