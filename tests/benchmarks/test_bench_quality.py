"""The quality benchmark runs end to end on a tiny pipeline and reports every method."""

import json
import math

import pytest

from . import load_benchmark


def test_a_few_methods_on_tiny_hunyuan_video(tmp_path):
    bench = load_benchmark("bench_quality")
    args = ["--tiny", "hunyuan_video", "--max-prompts", "1", "--densities", "0.5", "--methods", "diagonal", "radial_warmup",
            "--floors", "floor_backend", "--warmup-steps", "1", "--name", "few", "--out", str(tmp_path)]
    assert bench.main(args) == 0
    rows = {r["method"]: r for r in json.loads((tmp_path / "quality_few.json").read_text())["rows"]}
    assert set(rows) == {"diagonal", "radial_warmup", "floor_backend"}
    assert rows["radial_warmup"]["dense_warmup_steps"] == 1
    assert rows["radial_warmup"]["details"]["in_map_density"] == pytest.approx((0.5 * 3 - 1) / 2)
    assert all(r["rel_l2"] > 0 for m, r in rows.items() if m != "floor_backend")
    assert not (tmp_path / "quality_few_scores").exists()  # no calibration without our methods


@pytest.mark.slow  # about 40 s of CPU
def test_tiny_wan_end_to_end(tmp_path, capsys):
    bench = load_benchmark("bench_quality")
    assert bench.main(["--tiny", "wan", "--max-prompts", "1", "--densities", "0.5", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "quality_tiny.json").read_text())
    assert (tmp_path / "quality_tiny.png").stat().st_size > 0
    rows = {r["method"]: r for r in report["rows"]}
    assert set(rows) == {*bench.DEFAULT_METHODS, *bench.FLOORS}
    for method, r in rows.items():
        assert "skipped" not in r, (method, r.get("skipped"))
        assert 0 < r["attention_density"] <= 1 and r["ssim"] is not None
        assert r["rel_l2"] >= 0 and len(r["per_prompt"]) == 1
    assert rows["floor_backend"]["rel_l2"] < 1e-3  # another SDPA backend: rounding only
    assert math.isclose(rows["diagonal"]["attention_density"], 0.5, abs_tol=0.1)
    assert rows["radial"]["token_density"] < rows["radial"]["attention_density"]
    assert rows["ours_warmup"]["dense_warmup_steps"] == 1
    assert (tmp_path / "quality_tiny_wan_scores" / "single" / "settings.json").exists()  # cached for the next run
    assert "ours_ranges" in capsys.readouterr().out  # the table


def test_the_sensitivity_weighted_search_is_measured_once_and_cached(tmp_path, monkeypatch):
    bench = load_benchmark("bench_quality")
    args = ["--tiny", "wan", "--max-prompts", "1", "--densities", "0.5", "--methods", "ours_ranges_sens",
            "--ranges", "3", "--sensitivity-prompts", "1", "--floors", "--name", "sens", "--out", str(tmp_path)]
    assert bench.main(args) == 0
    row = json.loads((tmp_path / "quality_sens.json").read_text())["rows"][0]
    weights = row["details"]["sensitivity"]
    assert len(weights) == 3 and all(w[0] > 0 for w in weights)  # one weight per step range, every layer alike
    assert (tmp_path / "quality_tiny_wan_scores" / "ranges3_sens_ranges" / "settings.json").exists()

    def measured_again(*args, **kwargs):
        raise AssertionError("the cached sensitivity was measured again")

    monkeypatch.setattr(bench, "measure_sensitivity", measured_again)
    assert bench.main(args) == 0  # same settings: read from the cache
