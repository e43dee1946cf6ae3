"""Wan2.2 pipelines: one map for both experts (A14B), and per-token timesteps (TI2V-5B)."""

import pytest
import torch

from diffusers_sparse_vdit import SparseVDiTProcessor
from diffusers_sparse_vdit.processors import apply_sparse_vdit, get_sparse_vdit_hook, remove_sparse_vdit
from diffusers_sparse_vdit.processors.wan import WanSparseAttnProcessor
from diffusers_sparse_vdit.testing import tiny_pipeline, tiny_pipeline_inputs

from .common import ALL_FULL, MIXED, mode_map

STEPS = 4  # the tiny Wan2.2 runs steps 0-1 on transformer, 2-3 on transformer_2


def _generate(pipe, variant="wan2.2", steps=STEPS):
    with torch.no_grad():
        return pipe(**tiny_pipeline_inputs(variant, num_inference_steps=steps)).frames


def _two_expert_map(pipe, high=MIXED, low=MIXED, **kwargs):
    return mode_map(pipe.transformer, high, transformer_2=mode_map(pipe.transformer_2, low, **kwargs), **kwargs)


@pytest.fixture(scope="module")
def wan22():
    pipe = tiny_pipeline("wan2.2")
    pipe.set_progress_bar_config(disable=True)
    return pipe, _generate(pipe)


def _targets(transformer):
    return [transformer.blocks[i].attn1.processor for i in range(2)]


def test_one_map_makes_both_experts_sparse_with_global_steps(wan22):
    pipe, dense = wan22
    seen = []

    class Recorder(WanSparseAttnProcessor):
        def attend(self, query, key, value, plan, **kwargs):
            seen.append((self.config.transformer_2 is None, self.layer, self.state.step))
            return super().attend(query, key, value, plan, **kwargs)

    apply_sparse_vdit(pipe, _two_expert_map(pipe), backend="torch", processor_cls=Recorder)
    try:
        for transformer in (pipe.transformer, pipe.transformer_2):
            assert all(type(p) is Recorder for p in _targets(transformer))
            assert type(transformer.blocks[0].attn2.processor) is not Recorder  # cross-attention stays stock
        hooks = [get_sparse_vdit_hook(t) for t in (pipe.transformer, pipe.transformer_2)]
        assert hooks[0].state.clock is hooks[1].state.clock
        frames = _generate(pipe)
    finally:
        remove_sparse_vdit(pipe)
    assert torch.isfinite(frames).all() and (frames - dense).abs().max() > 1e-4
    # cond + uncond per step; the low-noise expert's first step is step 2, not 0
    high = [(layer, step) for is_low, layer, step in seen if not is_low]
    low = [(layer, step) for is_low, layer, step in seen if is_low]
    assert high == [(layer, step) for step in (0, 1) for _ in range(2) for layer in (0, 1)]
    assert low == [(layer, step) for step in (2, 3) for _ in range(2) for layer in (0, 1)]


@pytest.mark.parametrize("sparse", ["none", "transformer", "transformer_2"])
def test_each_expert_follows_its_own_map(wan22, sparse):
    pipe, dense = wan22
    config = _two_expert_map(
        pipe, high=MIXED if sparse == "transformer" else ALL_FULL, low=MIXED if sparse == "transformer_2" else ALL_FULL
    )
    apply_sparse_vdit(pipe, config, backend="torch")
    try:
        for transformer in (pipe.transformer, pipe.transformer_2):
            assert all(isinstance(p, WanSparseAttnProcessor) for p in _targets(transformer))
        frames = _generate(pipe)
    finally:
        remove_sparse_vdit(pipe)
    if sparse == "none":
        torch.testing.assert_close(frames, dense)
    else:
        assert (frames - dense).abs().max() > 1e-4


def test_remove_restores_both_experts(wan22):
    pipe, dense = wan22
    before = [list(t.attn_processors.values()) for t in (pipe.transformer, pipe.transformer_2)]
    apply_sparse_vdit(pipe, _two_expert_map(pipe), backend="torch")
    remove_sparse_vdit(pipe)
    after = [list(t.attn_processors.values()) for t in (pipe.transformer, pipe.transformer_2)]
    assert all(a is b for x, y in zip(before, after) for a, b in zip(x, y))
    assert get_sparse_vdit_hook(pipe.transformer) is None and get_sparse_vdit_hook(pipe.transformer_2) is None
    torch.testing.assert_close(_generate(pipe), dense)


def test_two_expert_map_refuses_one_transformer(wan22):
    pipe, _ = wan22
    config = _two_expert_map(pipe)
    with pytest.raises(ValueError, match="covers two experts.*apply it to the pipeline"):
        apply_sparse_vdit(pipe.transformer, config)
    with pytest.raises(ValueError, match="without transformer_2"):
        apply_sparse_vdit(tiny_pipeline("wan"), config)
    stock = dict(pipe.transformer.attn_processors)
    pipe.transformer.set_attn_processor(SparseVDiTProcessor(config))
    try:
        with pytest.raises(ValueError, match="covers two experts"):
            _generate(pipe, steps=1)
    finally:
        pipe.transformer.set_attn_processor(stock)
    assert get_sparse_vdit_hook(pipe.transformer) is None


def test_a_bad_second_expert_changes_nothing(wan22):
    pipe, _ = wan22
    config = _two_expert_map(pipe)
    config.transformer_2.num_heads = 4  # as a map of another model size would have
    with pytest.raises(ValueError, match="pipe.transformer_2: .*4 heads"):
        apply_sparse_vdit(pipe, config)
    assert get_sparse_vdit_hook(pipe.transformer) is None


def test_one_transformer_map_on_a_two_expert_pipeline_warns(wan22, caplog):
    pipe, _ = wan22
    apply_sparse_vdit(pipe, mode_map(pipe.transformer))
    try:
        assert "covers one" in caplog.text
        assert get_sparse_vdit_hook(pipe.transformer_2) is None
    finally:
        remove_sparse_vdit(pipe)


def test_ti2v_per_token_timesteps_generate_with_a_map():
    pipe = tiny_pipeline("wan2.2-ti2v")
    pipe.set_progress_bar_config(disable=True)
    dense = _generate(pipe, "wan2.2-ti2v", steps=2)
    steps = []

    class Recorder(WanSparseAttnProcessor):
        def attend(self, query, key, value, plan, **kwargs):
            steps.append((self.state.step, plan is not None))
            return super().attend(query, key, value, plan, **kwargs)

    apply_sparse_vdit(pipe, mode_map(pipe.transformer), backend="torch", processor_cls=Recorder)
    frames = _generate(pipe, "wan2.2-ti2v", steps=2)
    assert torch.isfinite(frames).all() and (frames - dense).abs().max() > 1e-4
    assert steps == [(step, True) for step in (0, 1) for _ in range(2) for _ in range(2)]
