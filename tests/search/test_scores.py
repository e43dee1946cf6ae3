"""Scores on disk: round trip, merging, and clear errors for anything else."""

import dataclasses
import json
import os
import shutil

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from diffusers_sparse_vdit.search import ScoreSet, solve_budget

from .helpers import random_scores


def test_round_trip_and_solving_again(tmp_path):
    scores = random_scores(ranges=2)
    scores.save(tmp_path)
    loaded = ScoreSet.load(tmp_path)
    for name in ("errors", "counts", "densities", "stripe_mass"):
        assert torch.equal(getattr(loaded, name), getattr(scores, name))
    assert loaded.candidates == scores.candidates and loaded.layout == scores.layout
    assert loaded.metadata == scores.metadata and loaded.step_ranges == scores.step_ranges
    a = solve_budget(scores, target_speedup=3.0).config
    b = solve_budget(loaded, target_speedup=3.0).config
    assert a == b
    with safe_open(str(tmp_path / "scores.safetensors"), "pt") as f:  # the tensor file describes itself
        assert json.loads(f.metadata()["sparse_vdit_scores"])["kind"] == "sparse_vdit_scores"


def test_merge_weights_by_calls():
    a, b = random_scores(seed=1), random_scores(seed=2)
    b.counts *= 3
    merged = a.merge(b)
    torch.testing.assert_close(merged.errors, (a.errors + 3 * b.errors) / 4)
    assert merged.counts.tolist() == (a.counts * 4).tolist()
    with pytest.raises(ValueError, match="same layout"):
        a.merge(random_scores(heads=5))


def _write(tmp_path, scores=None):
    (scores or random_scores()).save(tmp_path)
    return tmp_path / "scores.json", tmp_path / "scores.safetensors"


def _write_pair(folder, data, tensors):
    """Scores as a save writes them (the safetensors header repeats scores.json), whatever they hold."""
    text = json.dumps(data)
    (folder / "scores.json").write_text(text)
    save_file(tensors, str(folder / "scores.safetensors"), metadata={"format": "pt", "sparse_vdit_scores": text})


def test_corrupt_and_foreign_files_are_rejected(tmp_path):
    js, st = _write(tmp_path)
    st.write_bytes(st.read_bytes()[:100])
    with pytest.raises(ValueError, match="not a readable safetensors"):
        ScoreSet.load(tmp_path)

    js, st = _write(tmp_path)
    js.write_text("{not json")
    with pytest.raises(ValueError, match="not a readable"):
        ScoreSet.load(tmp_path)

    # a mode map's config.json where scores are expected
    result = solve_budget(random_scores(), target_speedup=2.0)
    result.config.save_files(tmp_path / "map")
    (tmp_path / "map" / "scores.json").write_text((tmp_path / "map" / "config.json").read_text())
    with pytest.raises(ValueError, match="not diffusers-sparse-vdit search scores"):
        ScoreSet.load(tmp_path / "map")

    with pytest.raises(ValueError, match="not a readable"):
        ScoreSet.load(tmp_path / "nowhere")


def test_files_of_two_runs_or_a_stopped_save_are_refused(tmp_path, monkeypatch):
    random_scores(seed=1).save(tmp_path)
    other = random_scores(seed=2, ranges=2).save(tmp_path / "other")
    shutil.copy(other / "scores.json", tmp_path)
    with pytest.raises(ValueError, match="scores.json and .*scores.safetensors do not belong together.*re-run the scoring"):
        ScoreSet.load(tmp_path)

    random_scores(seed=1).save(tmp_path)
    replace = os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst: replace(src, dst) if dst.name != "scores.json" else 1 / 0)
    with pytest.raises(ZeroDivisionError):
        random_scores(seed=2, ranges=2).save(tmp_path)  # stopped between the two files
    monkeypatch.undo()
    with pytest.raises(ValueError, match="do not belong together"):
        ScoreSet.load(tmp_path)

    js, st = _write(tmp_path)
    save_file(load_file(str(st)), str(st))  # no header
    with pytest.raises(ValueError, match="has no copy of scores.json in its header"):
        ScoreSet.load(tmp_path)


@pytest.mark.parametrize("edit,match", [
    (lambda d, t: t.update(errors=t["errors"].fill_(float("nan"))), "finite"),
    (lambda d, t: t.update(errors=-t["errors"] - 1), ">= 0"),
    (lambda d, t: t.update(errors=t["errors"].float()), "float64"),
    (lambda d, t: t.pop("stripe_mass"), r"must hold exactly the arrays .*holds \[.counts., .densities., .errors.\]"),
    (lambda d, t: t.update(densities=t["densities"][:-1]), "densities"),
    (lambda d, t: d.update(num_heads=7), "says"),
    (lambda d, t: d.update(schema_version=99), "schema_version"),
    (lambda d, t: d["candidates"].append({"mode": "BANANA"}), "unknown mode"),
    (lambda d, t: d.update(candidates=[c for c in d["candidates"] if c["mode"] != "FULL"]), "FULL"),
    (lambda d, t: d.update(step_ranges=[[0, 10], [10, -1]]), "step_ranges"),
    (lambda d, t: d.update(layout={"frames": 0, "height": 8, "width": 8}), "frames"),
    (lambda d, t: d.pop("metric"), r"scores.json: missing keys \['metric'\].*re-run the scoring"),
    (lambda d, t: d.update(tile_size=16.0), "'tile_size' must be an integer >= 0, got 16.0"),
    (lambda d, t: d.update(sample_tiles=True), "'sample_tiles' must be an integer >= 0, got true"),
    (lambda d, t: d.update(step_ranges=[[0, -1.0]]), r"step_ranges must be \[start, end\] integer pairs"),
    (lambda d, t: d.update(metadata=["x"]), "metadata must be a dict"),
    (lambda d, t: t.update(extra=torch.zeros(1)), r"must hold exactly the arrays .*'extra'"),
])
def test_invalid_contents_are_rejected(tmp_path, edit, match):
    js, st = _write(tmp_path)
    data, tensors = json.loads(js.read_text()), load_file(str(st))
    edit(data, tensors)
    _write_pair(tmp_path, data, tensors)
    with pytest.raises(ValueError, match=match):
        ScoreSet.load(tmp_path)


def _with_fp8(scores, seed=0):
    g = torch.Generator().manual_seed(seed)
    scores.fp8_errors = torch.rand(scores.errors.shape[:3], generator=g, dtype=torch.float64) * 0.1
    scores.validate()
    return scores


def test_fp8_errors_round_trip_split_and_merge(tmp_path):
    scores = _with_fp8(random_scores(ranges=2))
    scores.save(tmp_path)
    loaded = ScoreSet.load(tmp_path)
    assert torch.equal(loaded.fp8_errors, scores.fp8_errors)
    assert "FP8 attention error per head" in loaded.summary()
    assert torch.equal(scores.with_ranges([0, 1, 1], [[0, 20], [20, 30], [30, -1]]).fp8_errors,
                       scores.fp8_errors[[0, 1, 1]])
    other = _with_fp8(random_scores(ranges=2, seed=1), seed=1)
    other.counts *= 3
    torch.testing.assert_close(scores.merge(other).fp8_errors, (scores.fp8_errors + 3 * other.fp8_errors) / 4)
    assert scores.merge(random_scores(ranges=2)).fp8_errors is None  # one run without: not measured


def test_scores_without_fp8_errors_still_load(tmp_path):
    random_scores().save(tmp_path)  # as scores of earlier versions are
    assert "fp8_errors" not in load_file(tmp_path / "scores.safetensors")
    assert ScoreSet.load(tmp_path).fp8_errors is None


def test_bad_fp8_errors_are_refused():
    with pytest.raises(ValueError, match=r"fp8_errors must be None or a float64 tensor of finite values >= 0 shaped \(1, 3, 4\)"):
        dataclasses.replace(random_scores(), fp8_errors=torch.full((1, 3, 4), -1.0, dtype=torch.float64))
    with pytest.raises(ValueError, match="fp8_errors must be None or a float64 tensor"):
        dataclasses.replace(random_scores(), fp8_errors=torch.zeros(1, 3, 5, dtype=torch.float64))
