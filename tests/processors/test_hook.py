"""The transformer hook: latent grid and denoising step of each call, dense warm-up, step ranges."""

import pytest
import torch

from diffusers_sparse_vdit.processors import SparseVDiTState, apply_sparse_vdit, get_sparse_vdit_hook
from diffusers_sparse_vdit.testing import tiny_transformer_inputs

from .common import ALL_FULL, MIXED, forward, mode_map, twins


def test_step_follows_timestep_changes():
    state = SparseVDiTState()
    steps = []
    for t in [900, 900, 800, 800, 700, 950, 950, 500]:
        state.begin_call((1, 2, 3), float(t))
        steps.append(state.step)
    # equal: same step (CFG as two calls); lower: next step; higher: a new generation
    assert steps == [0, 0, 1, 1, 2, 0, 0, 1]
    state.reset()
    assert (state.grid, state.step, state.timestep) == (None, None, None)


def _run_steps(sparse, stock, timesteps, **input_kwargs):
    """Call both transformers at each timestep; returns [(step, sparse output == stock output)]."""
    hook = get_sparse_vdit_hook(sparse)
    seen = []
    for t in timesteps:
        inputs = tiny_transformer_inputs(stock, timestep=t, **input_kwargs)
        same = torch.equal(forward(sparse, inputs), forward(stock, inputs))
        seen.append((hook.state.step, same))
    return seen


def test_cfg_as_two_calls_counts_one_step_and_warmup_is_dense():
    sparse, stock = twins("wan")
    apply_sparse_vdit(sparse, mode_map(sparse, dense_warmup_steps=1), backend="torch")
    # cond and uncond call per step; step 0 is the dense warm-up: exactly the stock output
    seen = _run_steps(sparse, stock, [900, 900, 800, 800, 700])
    assert seen == [(0, True), (0, True), (1, False), (1, False), (2, False)]
    assert get_sparse_vdit_hook(sparse).state.grid == (3, 4, 5)


def test_cfg_as_batch_2_counts_one_step():
    sparse, stock = twins("cogvideox")
    apply_sparse_vdit(sparse, mode_map(sparse, dense_warmup_steps=2), backend="torch")
    seen = _run_steps(sparse, stock, [900, 800, 700], batch_size=2)
    assert seen == [(0, True), (1, True), (2, False)]


def test_rising_timestep_starts_a_new_generation():
    sparse, stock = twins("wan")
    apply_sparse_vdit(sparse, mode_map(sparse, dense_warmup_steps=1), backend="torch")
    seen = _run_steps(sparse, stock, [900, 800, 990, 500])
    assert seen == [(0, True), (1, False), (0, True), (1, False)]


def test_dense_above_timestep():
    sparse, stock = twins("wan")
    apply_sparse_vdit(sparse, mode_map(sparse, dense_above_timestep=850.0), backend="torch")
    assert [same for _, same in _run_steps(sparse, stock, [900, 800])] == [True, False]


def test_step_ranges_switch_maps():
    sparse, stock = twins("hunyuan_video")
    # steps 0-1: all FULL (with backend "auto": stock attention), steps 2+: mixed
    layers = [ALL_FULL, MIXED]
    apply_sparse_vdit(sparse, mode_map(sparse, layers, step_ranges=[[0, 2], [2, -1]]))
    seen = _run_steps(sparse, stock, [900, 800, 700, 600])
    assert seen == [(0, True), (1, True), (2, False), (3, False)]


@pytest.mark.parametrize("timestep", [torch.tensor([700, 700]), torch.tensor([[0.0, 700.0]]), 700, 700.0])
def test_timestep_forms(timestep):
    from diffusers_sparse_vdit.processors.hook import _timestep_value

    # batched, per-token (Wan2.2 TI2V: the largest entry is the step's noise level), Python numbers
    assert _timestep_value(timestep) == 700.0


def test_a_replaced_processor_warns_once_with_how_to_reapply(caplog):
    from diffusers.models.transformers.transformer_wan import WanAttnProcessor
    from diffusers.utils import logging

    sparse, stock = twins("wan")
    apply_sparse_vdit(sparse, mode_map(sparse), backend="torch")
    sparse.blocks[1].attn1.set_processor(WanAttnProcessor())
    inputs = tiny_transformer_inputs(stock)
    logging.enable_propagation()
    try:
        with caplog.at_level("WARNING"):
            forward(sparse, inputs)
            forward(sparse, inputs)
    finally:
        logging.disable_propagation()
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1
    assert "blocks.1.attn1 no longer hold" in warnings[0] and "apply_sparse_vdit" in warnings[0]
