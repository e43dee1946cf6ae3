"""ncu_table reads ncu's raw-page CSVs (the app's own lines before the header) and prints them side by side."""

from pathlib import Path

import pytest

from . import load_benchmark

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "benchmarks" / "results" / "ncu" / "ncu_wan2.1-1.3b-480p_gluon.csv"  # a real ncu output (v9)


@pytest.fixture(scope="module")
def ncu_table():
    return load_benchmark("ncu_table")


def test_reads_a_real_ncu_csv(ncu_table):
    result = ncu_table.read_ncu_csv(FIXTURE)
    assert result["Kernel Name"] == "_sparse_attention_ws_fwd"
    assert ncu_table.number(result["gpu__time_duration.sum"]) == 9_723_776


def test_side_by_side_table(ncu_table, tmp_path, capsys):
    other = tmp_path / "fa4.csv"  # a second kernel with fewer counters
    other.write_text('"ID","Kernel Name","gpu__time_duration.sum","smsp__average_warps_issue_stalled_gmma_per_issue_active.ratio"\n'
                     '"","","nsecond",""\n"0","flash_fwd","9,000,000","0.50"\n')
    ncu_table.main([str(FIXTURE), str(other)])
    out = capsys.readouterr().out
    lines = {line.split("  ")[0]: line for line in out.splitlines()}
    assert "ncu_wan2.1-1.3b-480p_gluon" in out.splitlines()[0] and "fa4" in out.splitlines()[0]
    assert lines["time (us)"].split()[-2:] == ["9,723.78", "9,000.00"]
    assert lines["tensor pipe active %"].split()[-2:] == ["77.52", "-"]
    assert lines["stall gmma"].split()[-2:] == ["0.18", "0.50"]


def test_a_csv_without_a_launch_says_why(ncu_table, tmp_path, capsys):
    empty = tmp_path / "empty.csv"
    empty.write_text("==PROF== No kernels were profiled.\n")
    with pytest.raises(ValueError, match="no ncu CSV header"):
        ncu_table.read_ncu_csv(empty)
    ncu_table.main([str(empty)])
    assert "skipped" in capsys.readouterr().out


def test_metrics_argument_collects_what_the_table_prints(ncu_table, capsys):
    import re

    ncu_table.main(["--metrics"])
    names = capsys.readouterr().out.strip().split(",")
    assert "sm__warps_active.avg.pct_of_peak_sustained_active" in names  # achieved occupancy
    stall = re.compile(names[-1].removeprefix("regex:"))
    assert stall.fullmatch("smsp__average_warps_issue_stalled_barrier_per_issue_active.ratio")
