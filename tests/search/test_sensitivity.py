"""Sensitivity: what each entry's error does to the final latents, and how the solver uses it."""

import pytest
import torch

from diffusers_sparse_vdit.search import ScoreSet, calibrate, measure_sensitivity, solve_budget, solve_choices
from diffusers_sparse_vdit.testing import tiny_pipeline

from .helpers import random_scores
from .test_runner import PROMPTS, run


def test_the_solver_spends_budget_where_errors_move_the_output():
    scores = random_scores(ranges=2)
    plain = solve_budget(scores, target_density=0.4)
    # range 0's errors matter 100x more than range 1's: it keeps more of its attention
    weighted = solve_budget(scores.with_sensitivity(torch.tensor([[10.0] * 3, [0.1] * 3], dtype=torch.float64)),
                            target_density=0.4)
    dens = lambda r: scores.densities[r.choices].mean(dim=(1, 2))  # noqa: E731
    assert dens(weighted)[0] > dens(plain)[0] and dens(weighted)[1] < dens(plain)[1]
    assert weighted.attention_density <= 0.4 + 1e-9


def test_sensitivity_is_saved_validated_and_dropped_by_merge(tmp_path):
    scores = random_scores(ranges=2).with_sensitivity(torch.tensor([[2.0, 1.0, 0.5], [1.0, 1.0, 1.0]], dtype=torch.float64))
    loaded = ScoreSet.load(scores.save(tmp_path))
    assert torch.equal(loaded.sensitivity, scores.sensitivity)
    assert torch.equal(loaded.weighted_errors, scores.errors * scores.sensitivity[..., None, None])
    assert scores.merge(scores).sensitivity is None  # measured on one run: measure again
    for bad in (torch.zeros(2, 3, dtype=torch.float64), torch.ones(3, 2, dtype=torch.float64),
                torch.tensor([[1.0, float("nan"), 1.0]] * 2, dtype=torch.float64)):
        with pytest.raises(ValueError, match="sensitivity must be"):
            scores.with_sensitivity(bad)


def test_given_choices_make_a_map_and_are_checked():
    scores = random_scores(ranges=2)
    choices = torch.full(scores.errors.shape[:3], scores.full_index)
    assert solve_choices(scores, choices).attention_density == pytest.approx(1.0)
    with pytest.raises(ValueError, match="shaped"):
        solve_choices(scores, choices[0])
    with pytest.raises(ValueError, match="index"):
        solve_choices(scores, choices + 100)


@pytest.mark.parametrize("groups", ["ranges", "layers"])
def test_measured_on_a_tiny_pipeline(groups):
    pipe = tiny_pipeline("wan")
    before = dict(pipe.transformer.attn_processors)
    kwargs = run(pipe, "wan")
    scores = calibrate(pipe, PROMPTS[:1], step_ranges=[[0, 2], [2, -1]], **kwargs)
    weighted = measure_sensitivity(pipe, scores, PROMPTS[:1], target_density=0.5, groups=groups, backend="torch",
                                   pipeline_kwargs=kwargs["pipeline_kwargs"], progress=False)
    assert all(pipe.transformer.attn_processors[k] is v for k, v in before.items())  # the pipeline is as it was
    w = weighted.sensitivity
    assert w.shape == (2, 2) and torch.isfinite(w).all() and (w > 0).all()
    if groups == "ranges":
        assert torch.equal(w[:, 0], w[:, 1])  # one weight per step range
    steps = torch.tensor([2.0, 1.0], dtype=torch.float64)[:, None].expand(2, 2)  # range 0 has 2 steps, range 1 has 1
    assert float((w * steps).sum() / steps.sum()) == pytest.approx(1.0)
    info = weighted.metadata["sensitivity"]
    assert info["groups"] == groups and info["final_error_everywhere"] > 0
    measured = torch.tensor(info["measured"])
    assert (measured[torch.isfinite(measured)] > 0).all()  # the probes really ran sparse
    assert scores.sensitivity is None  # the input is left alone
    with pytest.raises(ValueError, match="groups"):
        measure_sensitivity(pipe, scores, PROMPTS[:1], groups="heads")


def test_a_target_with_nothing_to_probe_keeps_the_scores_unweighted(caplog, monkeypatch):
    from diffusers_sparse_vdit.search import runner, sensitivity

    tried = []

    def nothing_to_probe(pipe, scores, prompts, *, target_density, **kwargs):
        tried.append(target_density)
        raise ValueError("the probe map is dense everywhere")

    monkeypatch.setattr(sensitivity, "measure_sensitivity", nothing_to_probe)
    scores = random_scores(ranges=2)
    with caplog.at_level("WARNING", logger="diffusers.sparse_vdit"):
        out = runner.sensitive(None, scores, PROMPTS[:1], 0.6)
    assert tried == [0.25, 0.6]  # the sparser probe first, then the target itself
    assert out is scores and out.sensitivity is None  # the calibration stays usable
    assert "no sensitivity measured" in caplog.text


def test_a_probe_with_nothing_sparse_is_refused_before_generating(monkeypatch):
    from diffusers_sparse_vdit.search import sensitivity

    pipe = tiny_pipeline("wan")
    kwargs = run(pipe, "wan")
    scores = calibrate(pipe, PROMPTS[:1], step_ranges=[[0, 2], [2, -1]], **kwargs)
    monkeypatch.setattr(sensitivity, "_final_latents", lambda *a, **k: pytest.fail("generated for nothing"))
    with pytest.raises(ValueError, match="dense everywhere"):  # density 1: the best map is all FULL
        measure_sensitivity(pipe, scores, PROMPTS[:1], target_density=1.0, backend="torch", progress=False,
                            pipeline_kwargs=kwargs["pipeline_kwargs"])
