"""Sparse maps under diffusers' Ulysses context parallelism: two gloo processes match one process."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from diffusers import ContextParallelConfig
from diffusers.models._modeling_parallel import ParallelConfig, TensorParallelConfig
from safetensors.torch import load_file

from diffusers_sparse_vdit import (
    ModeSpec,
    TokenLayout,
    apply_sparse_vdit,
    context_parallel_plan,
    rank_shares,
    remove_sparse_vdit,
)
from diffusers_sparse_vdit.balance import balanced_head_order
from diffusers_sparse_vdit.processors.parallel import COGVIDEOX_CP_PLAN, _JointOrder, check_parallel_config
from diffusers_sparse_vdit.testing import tiny_transformer

from .parallel_cases import CASES, UNEVEN, case_inputs, case_map, case_transformer

needs_gloo = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="needs torch.distributed with gloo"
)
LAYOUT = TokenLayout(3, 4, 5)  # the cases' grid


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_process_outputs(tmp_path_factory):
    """Every case's outputs from rank 0 of two gloo processes under ContextParallelConfig(ulysses_degree=2)."""
    out = tmp_path_factory.mktemp("ulysses")
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(_free_port()), str(Path(__file__).with_name("_ulysses_worker.py")), str(out)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240, cwd=root)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return out


@needs_gloo
@pytest.mark.parametrize("name", list(CASES))
def test_ulysses_degree_2_matches_one_process(two_process_outputs, name):
    case = CASES[name]
    transformer = case_transformer(case)
    if case.get("map", True):
        apply_sparse_vdit(transformer, case_map(transformer, case), backend="torch")
    got = load_file(two_process_outputs / f"{name}.safetensors")
    with torch.no_grad():
        for step, inputs in enumerate(case_inputs(transformer, case)):  # dense warm-up, then the map
            torch.testing.assert_close(got[f"step{step}"], transformer(**inputs)[0], rtol=1e-5, atol=1e-5)


def test_balance_moves_a_full_head_to_the_other_rank():
    # layer 0 in model order: rank 0 holds both FULL heads
    assert balanced_head_order(tuple(UNEVEN[0]), LAYOUT, 16, 2) == (0, 3, 1, 2)
    assert balanced_head_order((ModeSpec.full(),) * 4, LAYOUT, 16, 2) is None  # already even: no copies


def test_rank_shares_report_each_ranks_work():
    config = case_map(tiny_transformer("wan", num_attention_heads=4), {})
    even, model_order = rank_shares(config, LAYOUT, 2), rank_shares(config, LAYOUT, 2, balance=False)
    assert sum(even.shares) == pytest.approx(1.0) and sum(model_order.shares) == pytest.approx(1.0)
    assert even.imbalance < model_order.imbalance
    assert model_order.shares[0] > 0.6  # two FULL heads of layer 0
    assert "balanced" in str(even) and "model order" in str(model_order)
    with pytest.raises(ValueError, match="does not divide 4"):
        rank_shares(config, LAYOUT, 3)


@pytest.mark.parametrize("position", ["before", "after"])
def test_joint_order_gathers_one_text_copy_and_scatters_it_to_every_rank(position):
    video, text, world = 3, 2, 2
    canonical = torch.arange(world * video + text)
    canonical_video = canonical[text:] if position == "before" else canonical[:-text]
    canonical_text = canonical[:text] if position == "before" else canonical[-text:]
    ranks = [canonical_video[r * video : (r + 1) * video] for r in range(world)]
    gathered = torch.cat([torch.cat([canonical_text, v] if position == "before" else [v, canonical_text]) for v in ranks])
    order = _JointOrder(video, text, position, world)
    assert torch.equal(gathered[order.gather], canonical)
    assert torch.equal(canonical[order.scatter], gathered)


@pytest.mark.parametrize(
    "parallel_config, match",
    [
        (ParallelConfig(context_parallel_config=ContextParallelConfig(ring_degree=2)), "ulysses_degree=N"),
        (ParallelConfig(context_parallel_config=ContextParallelConfig(ring_degree=2, ulysses_degree=2)), "not ring"),
        (ParallelConfig(context_parallel_config=ContextParallelConfig(ulysses_degree=2, ulysses_anything=True)), "ulysses_anything"),
        (ParallelConfig(tensor_parallel_config=TensorParallelConfig(tp_degree=2)), "Ulysses"),
    ],
)
def test_ring_hybrid_and_other_layouts_are_refused_naming_ulysses(parallel_config, match):
    with pytest.raises(ValueError, match=match):
        check_parallel_config(parallel_config, "here")
    transformer = tiny_transformer("wan", num_attention_heads=4)
    transformer._parallel_config = parallel_config  # as enable_parallelism() leaves it
    with pytest.raises(ValueError, match=match):
        apply_sparse_vdit(transformer, case_map(transformer, {}))


def test_context_parallel_plan_per_family():
    wan = tiny_transformer("wan")
    assert context_parallel_plan(wan) is type(wan)._cp_plan
    assert context_parallel_plan(tiny_transformer("cogvideox")) is COGVIDEOX_CP_PLAN
    with pytest.raises(ValueError, match="token_replace"):
        context_parallel_plan(tiny_transformer("hunyuan_video", image_condition_type="token_replace"))


def _ulysses_2():
    return ParallelConfig(context_parallel_config=ContextParallelConfig(ulysses_degree=2))


def test_a_map_applied_after_enable_parallelism_takes_its_config_and_removal_hands_it_back():
    transformer = tiny_transformer("wan", num_attention_heads=4)
    transformer._parallel_config = parallel_config = _ulysses_2()  # as enable_parallelism() leaves it
    apply_sparse_vdit(transformer, case_map(transformer, {}))
    assert transformer.blocks[0].attn1.processor._parallel_config is parallel_config
    remove_sparse_vdit(transformer)
    assert type(transformer.blocks[0].attn1.processor).__name__ == "WanAttnProcessor"
    assert transformer.blocks[0].attn1.processor._parallel_config is parallel_config  # diffusers' own Ulysses


def test_removal_under_the_text_whole_plan_warns_that_stock_processors_are_wrong(caplog):
    transformer = tiny_transformer("hunyuan_video", num_attention_heads=4)
    transformer._parallel_config = _ulysses_2()
    apply_sparse_vdit(transformer, case_map(transformer, {}))
    remove_sparse_vdit(transformer)
    assert "give wrong results" in caplog.text
