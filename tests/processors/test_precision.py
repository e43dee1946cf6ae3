"""FP8 heads: the processors build their plans with the map's precision per head."""

import torch

from diffusers_sparse_vdit.processors import apply_sparse_vdit, family_of, remove_sparse_vdit
from diffusers_sparse_vdit.processors.parallel import _rank_plan
from diffusers_sparse_vdit.testing import tiny_pipeline, tiny_pipeline_inputs, tiny_transformer_inputs

from .common import ALL_FULL, forward, mode_map, twins


class PlanRecorder:
    def attend(self, query, key, value, plan, **kwargs):
        type(self).plans.append(plan)
        return super().attend(query, key, value, plan, **kwargs)


def _recorder(transformer):
    return type("Recorder", (PlanRecorder, family_of(transformer).processor_cls), {"plans": []})


def _generate(pipe, config, **kwargs):
    recorder = _recorder(pipe.transformer)
    apply_sparse_vdit(pipe, config, backend="torch", processor_cls=recorder, **kwargs)
    with torch.no_grad():
        frames = pipe(**tiny_pipeline_inputs("wan")).frames
    remove_sparse_vdit(pipe)
    return frames, recorder.plans


def test_an_fp8_map_runs_its_heads_in_fp8_and_stays_close_to_the_native_map():
    pipe = tiny_pipeline("wan")
    pipe.set_progress_bar_config(disable=True)
    native_map = mode_map(pipe.transformer)
    native, native_plans = _generate(pipe, native_map)
    fp8, fp8_plans = _generate(pipe, native_map.with_precision("fp8"))
    overridden, overridden_plans = _generate(pipe, native_map, precision="fp8")

    assert all(p.fp8_heads == [] for p in native_plans)
    # every computed head in fp8; layer 1's SKIP head computes nothing, in any precision
    assert [p.precision for p in fp8_plans[:2]] == [("fp8",) * 3] * 2
    assert [p.fp8_heads for p in fp8_plans[:2]] == [[0, 1, 2], [0, 2]]
    assert [p.precision for p in overridden_plans] == [p.precision for p in fp8_plans]
    assert torch.equal(overridden, fp8)
    # the torch backend simulates the FP8 rounding exactly: a small, nonzero change
    change = (fp8 - native).abs().max()
    assert 0 < change < 0.05, change
    assert not native_map.precision.any()  # the override made a new map


def test_an_all_full_layer_with_fp8_heads_is_not_sent_to_the_dense_kernels():
    sparse, _ = twins("wan")
    inputs = tiny_transformer_inputs(sparse)
    for precision, expect_plans in (("native", False), ("fp8", True)):
        recorder = _recorder(sparse)
        apply_sparse_vdit(sparse, mode_map(sparse, ALL_FULL), processor_cls=recorder, precision=precision)
        forward(sparse, inputs)
        assert [plan is not None for plan in recorder.plans] == [expect_plans] * 2
        if expect_plans:
            assert recorder.plans[0].fp8_heads == [0, 1, 2]


def test_a_rank_under_ulysses_keeps_its_heads_precision():
    sparse, _ = twins("wan")
    config = mode_map(sparse).with_precision("fp8", heads=torch.tensor([[[True, False, True], [False, True, False]]]))
    apply_sparse_vdit(sparse, config, backend="torch")
    forward(sparse, tiny_transformer_inputs(sparse))
    processor = sparse.blocks[0].attn1.processor
    plan = processor.plan(processor.state.layout)
    assert plan.precision == ("fp8", "native", "fp8")
    assert _rank_plan(processor, plan, (1, 2)).precision == ("native", "fp8")
