"""bench_kernel --auto: "auto"'s time against the faster of the forced backends, and its table."""

import sys

import pytest

from . import load_benchmark


@pytest.fixture(scope="module")
def bench_kernel():
    return load_benchmark("bench_kernel")


def test_auto_row_compares_with_the_fastest_forced_backend(bench_kernel):
    row = bench_kernel.auto_row("wan2.1-1.3b-480p", "MIXED", 0.39, "fa4", {"auto": 3.5, "gluon": 3.7, "fa4": 3.48})
    assert row["fastest"] == "fa4" and row["auto_over_fastest"] == pytest.approx(3.5 / 3.48)
    assert "auto_over_fastest" not in bench_kernel.auto_row("s", "MIXED", 0.39, "gluon", {"auto": 1.0})  # nothing forced ran


def test_auto_table_flags_a_slower_pick(bench_kernel, capsys):
    rows = [bench_kernel.auto_row("wan2.1-1.3b-480p", "MIXED", 0.39, "fa4", {"auto": 3.5, "gluon": 3.7, "fa4": 3.48}),
            bench_kernel.auto_row("hunyuanvideo-720p", "MIXED", 0.43, "fa4", {"auto": 122.0, "gluon": 119.4, "fa4": 122.0}),
            bench_kernel.auto_row("cogvideox1.5-768p", "MIXED", 0.45, "gluon", {"auto": 23.9, "gluon": 23.9})]
    bench_kernel.print_auto_table(rows)
    lines = capsys.readouterr().out.splitlines()
    assert "SLOWER" not in lines[2] and "SLOWER than gluon" in lines[3]
    assert lines[4].split()[-2:] == ["-", "1.000"]  # FA4 did not run there


def test_auto_flag_parses(bench_kernel, monkeypatch):
    seen = {}
    monkeypatch.setattr(sys, "argv", ["bench_kernel.py", "--auto", "--shapes", "wan2.1-14b-720p", "--out", "x.json"])
    monkeypatch.setattr(bench_kernel.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(bench_kernel, "main_auto", lambda args: seen.update(vars(args)))
    bench_kernel.main()
    assert seen["auto"] and seen["shapes"] == "wan2.1-14b-720p"
