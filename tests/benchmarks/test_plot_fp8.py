"""The FP8 benchmark plot reads the committed JSON the README shows."""

import json
from pathlib import Path

import pytest

from . import load_benchmark

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results" / "fp8_h200_v10_fa3.json"


def test_bars_group_the_timed_rows_by_shape_and_plan():
    rows = json.loads(RESULTS.read_text())["rows"]
    got = load_benchmark("plot_fp8").bars(rows)
    assert set(got) == {"wan2.1-1.3b-480p", "cogvideox1.5-768p"}  # the run's time box ended inside HunyuanVideo
    wan = got["wan2.1-1.3b-480p"]
    assert wan["plans"] == ["FULL@1.0", "DIAGONAL@0.25", "DIAGONAL@0.1", "MIXED@0.25"]
    want = {r["plan"]: r["tflops"] for r in rows if r["shape"] == "wan2.1-1.3b-480p" and r["impl"] == "ours-fp8-kernel"}
    assert wan["ours-fp8-kernel"] == [want[p] for p in wan["plans"]]
    assert set(wan["peers"]) == {"fa3", "fa3-fp8"}  # FA4 dense was not installed: no line for it
    assert wan["peers"]["fa3-fp8"] > wan["peers"]["fa3"]


def test_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    script = load_benchmark("plot_fp8")
    path = script.plot(json.loads(RESULTS.read_text()), "test", tmp_path / "f.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="no rows of our kernels"):
        script.plot({"rows": [{"shape": "x", "plan": "dense", "impl": "fa3", "tflops": 700.0}]}, "empty",
                    tmp_path / "e.png")
