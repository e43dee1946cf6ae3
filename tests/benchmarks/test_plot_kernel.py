"""The kernel-benchmark plot reads the committed JSON the README shows."""

import json
from pathlib import Path

import pytest

from . import load_benchmark

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results" / "kernel_h200_v8.json"


def test_curves_group_rows_by_shape_impl_and_mode():
    rows = json.loads(RESULTS.read_text())["rows"]
    curves = load_benchmark("plot_kernel").curves(rows)
    assert set(curves) == {"wan2.1-1.3b-480p", "cogvideox1.5-768p", "hunyuanvideo-720p"}
    wan = curves["wan2.1-1.3b-480p"]
    diag = wan[("ours", "DIAGONAL")]
    assert [round(d, 1) for d, _ in diag] == [0.1, 0.3, 0.5, 1.0]  # densities ascending, ending at all-FULL
    expected = {r["tile_density"]: r["fraction_of_ideal"] for r in rows
                if r.get("shape") == "wan2.1-1.3b-480p" and r.get("impl") == "ours" and r["plan"].startswith("DIAGONAL@")}
    assert all(expected[d] == f for d, f in diag[:3])
    assert ("flex", "MULTI_DIAGONAL") in wan and ("ours-by-mode", "MIXED") not in wan
    cudnn = wan[("cudnn", "EQUAL_WORK")]  # cuDNN on density x N keys, ending at the dense run
    assert [round(d, 2) for d, _ in cudnn] == [0.1, 0.25, 0.5, 1.0] and cudnn[-1][1] == 1.0


def test_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    script = load_benchmark("plot_kernel")
    path = script.plot(json.loads(RESULTS.read_text()), "test", tmp_path / "k.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="no 'ours' rows"):
        script.plot({"rows": []}, "empty", tmp_path / "e.png")


def test_each_panel_names_its_own_baseline():
    """v10 runs have a baseline per shape (FA3 at Wan and HunyuanVideo, FA4 dense at CogVideoX1.5)."""
    script = load_benchmark("plot_kernel")
    v10 = json.loads((RESULTS.parent / "kernel_h200_v10_fa4.json").read_text())["rows"]
    assert script.baselines(v10) == {"wan2.1-1.3b-480p": "fa3", "cogvideox1.5-768p": "fa4-dense", "hunyuanvideo-720p": "fa3"}
    assert set(script.baselines(json.loads(RESULTS.read_text())["rows"]).values()) == {"cuDNN"}  # before v10
    cudnn = script.curves(v10)["wan2.1-1.3b-480p"][("cudnn", "EQUAL_WORK")]
    assert cudnn[-1] == (1.0, pytest.approx(0.823, abs=1e-3))  # cuDNN's dense run, 0.82 of FA3's rate
