"""bench_fp8's table: peers that are not installed, and the speedups against our 16-bit kernel and the fastest dense peer."""

import sys

import pytest

from . import load_benchmark


@pytest.fixture(scope="module")
def bench_fp8():
    return load_benchmark("bench_fp8")


def test_table_shows_each_row(bench_fp8, capsys):
    rows = [
        {"shape": "wan2.1-1.3b-480p", "plan": "dense", "impl": "fa3-fp8", "status": "not installed"},
        {"shape": "wan2.1-1.3b-480p", "plan": "DIAGONAL@0.25", "impl": "ours-fp8", "density": 0.25, "ms": 2.0,
         "tflops": 700.0, "over_ours_bf16": 1.25, "speedup_vs_fastest_dense": 4.5, "rel_err": 0.053},
        {"shape": "wan2.1-1.3b-480p", "plan": "DIAGONAL@0.25", "impl": "fp8-quantize", "density": 0.25, "ms": 0.2,
         "tflops": 7000.0, "over_ours_bf16": 12.5},
    ]
    bench_fp8.print_table(rows)
    lines = capsys.readouterr().out.splitlines()
    assert "fastest 16-bit dense peer" in lines[1]
    assert lines[2].split()[-2:] == ["not", "installed"]
    assert lines[3].split()[-3:] == ["1.25", "4.50", "0.0530"]
    assert lines[4].split()[-1] == "12.50"  # no FA speedup or error for the quantization pass


def test_an_unknown_variant_is_refused_before_anything_runs(bench_fp8, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["bench_fp8.py", "--variants", "4-stages,6-stages"])
    with pytest.raises(SystemExit) as exit_info:
        bench_fp8.main()
    assert exit_info.value.code == 2
    assert "unknown --variants ['6-stages']" in capsys.readouterr().err
