"""Whole tiny pipelines generate frames with a sparse map (2 steps, classifier-free guidance)."""

import pytest
import torch

from diffusers_sparse_vdit.processors import SparseVDiTProcessor, apply_sparse_vdit, family_of, get_sparse_vdit_hook
from diffusers_sparse_vdit.testing import I2V_VARIANTS, PIPELINE_VARIANTS, tiny_pipeline, tiny_pipeline_inputs

from .common import mode_map

# steps each sparse layer sees over 2 steps: CFG as two transformer calls, or as batch 2 (CogVideoX)
STEPS = {
    "wan": [0, 0, 1, 1], "hunyuan_video": [0, 0, 1, 1], "cogvideox": [0, 1], "cogvideox1.5": [0, 1],
    "hunyuan_video15": [0, 0, 1, 1], "wan2.2-ti2v": [0, 0, 1, 1],
}  # fmt: skip


class StepRecorder:
    def attend(self, query, key, value, plan, **kwargs):
        type(self).steps.append((self.layer, self.state.step, plan is not None))
        return super().attend(query, key, value, plan, **kwargs)


def _generate(pipe, variant):
    with torch.no_grad():
        return pipe(**tiny_pipeline_inputs(variant)).frames


# I2V: test_i2v.py; Wan2.2's two experts: test_experts.py
@pytest.mark.parametrize("variant", [v for v in PIPELINE_VARIANTS if v not in (*I2V_VARIANTS, "wan2.2")])
def test_pipeline_generates_with_a_sparse_map(variant):
    pipe = tiny_pipeline(variant)
    pipe.set_progress_bar_config(disable=True)
    stock = _generate(pipe, variant)

    recorder = type("Recorder", (StepRecorder, family_of(pipe.transformer).processor_cls), {"steps": []})
    apply_sparse_vdit(pipe, mode_map(pipe.transformer), backend="torch", processor_cls=recorder)
    frames = _generate(pipe, variant)

    assert frames.shape == stock.shape == (1, 9, 3, 32, 48) and torch.isfinite(frames).all()
    assert (frames - stock).abs().max() > 1e-4
    assert recorder.steps == [(layer, step, True) for step in STEPS[variant] for layer in (0, 1)]
    assert get_sparse_vdit_hook(pipe.transformer).state.step is None  # the pipeline reset it at the end


def test_pipeline_with_set_attn_processor():
    pipe = tiny_pipeline("wan")
    pipe.set_progress_bar_config(disable=True)
    explicit = tiny_pipeline("wan")
    explicit.set_progress_bar_config(disable=True)
    config = mode_map(pipe.transformer)  # no warm-up: the first call is sparse too

    pipe.transformer.set_attn_processor(SparseVDiTProcessor(config, backend="torch"))
    apply_sparse_vdit(explicit, config, backend="torch")
    assert torch.equal(_generate(pipe, "wan"), _generate(explicit, "wan"))
