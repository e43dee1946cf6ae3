"""Nsight Compute CSVs (``ncu --csv --page raw``, one profiled launch each) side by side, one column per file.

    python benchmarks/ncu_table.py OUT/ncu_gluon.csv OUT/ncu_fa4.csv

Prints the counters named in ``METRICS`` and the largest warp stall reasons (cycles per issued
instruction); a counter missing from a file shows as ``-``.
"""

from __future__ import annotations

import argparse
import csv
import re
from pathlib import Path

METRICS = {
    "time (us)": "gpu__time_duration.sum",
    "grid size": "launch__grid_size",
    "registers / thread": "launch__registers_per_thread",
    "tensor pipe active %": "sm__pipe_tensor_cycles_active.avg.pct_of_peak_sustained_active",
    "wgmma issued % of peak": "sm__inst_executed_pipe_tensor_op_gmma.avg.pct_of_peak_sustained_active",
    "MUFU (xu) issued %": "sm__inst_executed_pipe_xu.avg.pct_of_peak_sustained_active",
    "SM throughput %": "sm__throughput.avg.pct_of_peak_sustained_elapsed",
    "achieved occupancy %": "sm__warps_active.avg.pct_of_peak_sustained_active",
    "DRAM throughput %": "dram__throughput.avg.pct_of_peak_sustained_elapsed",
    "L2 throughput %": "lts__throughput.avg.pct_of_peak_sustained_elapsed",
    "L2 hit rate %": "lts__t_sector_hit_rate.pct",  # K/V reuse across the query tiles of a head
    "DRAM bytes read": "dram__bytes_read.sum",
    "issue slots busy %": "smsp__issue_active.avg.pct_of_peak_sustained_active",
    "eligible warps / cycle": "smsp__warps_eligible.avg.per_cycle_active",
    "instructions issued": "smsp__inst_executed.sum",
    "FMA pipe issued %": "sm__inst_executed_pipe_fma.avg.pct_of_peak_sustained_active",
    "ALU pipe issued %": "sm__inst_executed_pipe_alu.avg.pct_of_peak_sustained_active",
}
STALL = re.compile(r"smsp__average_warps_issue_stalled_(\w+)_per_issue_active\.ratio")
TOP_STALLS = 8


def ncu_metrics() -> str:
    """The ``ncu --metrics`` argument that collects every counter this table prints."""
    return ",".join([*METRICS.values(), "regex:" + STALL.pattern.replace(r"(\w+)", ".*")])


def read_ncu_csv(path) -> dict[str, str]:
    """The first profiled launch of an ncu raw-page CSV as ``{metric: value}`` (the app's own output lines skipped)."""
    lines = Path(path).read_text().splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith('"ID"')), None)
    if start is None:
        raise ValueError(f"{path}: no ncu CSV header (a line starting with \"ID\"); did the profiled launch run?")
    rows = [r for r in csv.reader(lines[start:]) if r]
    header, data = rows[0], [r for r in rows[1:] if r[0].strip()]  # a units row has an empty ID
    if not data:
        raise ValueError(f"{path}: ncu wrote a header but no profiled launch (check --kernel-name and --launch-skip)")
    return dict(zip(header, data[0]))


def number(text: str | None) -> float | None:
    try:
        return float(text.replace(",", ""))
    except (AttributeError, ValueError):
        return None


def table(results: dict[str, dict[str, str]]) -> str:
    """Rows of counters, one column per profiled kernel."""
    names = list(results)
    values = {label: [number(results[n].get(metric)) for n in names] for label, metric in METRICS.items()}
    values["time (us)"] = [None if t is None else t / 1e3 for t in values["time (us)"]]  # ncu reports ns
    stalls = sorted({m.group(1) for r in results.values() for key in r if (m := STALL.fullmatch(key))})
    stall_values = {
        f"stall {s}": [number(results[n].get(f"smsp__average_warps_issue_stalled_{s}_per_issue_active.ratio")) for n in names]
        for s in stalls
    }
    top = sorted(stall_values.items(), key=lambda item: -max((x or 0.0) for x in item[1]))[:TOP_STALLS]
    width = max(12, *(len(n) for n in names))
    lines = [f"{'counter':28s} " + " ".join(f"{n:>{width}s}" for n in names)]
    for label, row in [*values.items(), *top]:
        lines.append(f"{label:28s} " + " ".join(f"{'-':>{width}s}" if x is None else f"{x:>{width},.2f}" for x in row))
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("csv", nargs="*", help="ncu --csv --page raw outputs; the column is the file's stem")
    parser.add_argument("--metrics", action="store_true", help="print the ncu --metrics argument for these counters")
    args = parser.parse_args(argv)
    if args.metrics:
        return print(ncu_metrics())
    results = {}
    for path in args.csv:
        try:
            results[Path(path).stem] = read_ncu_csv(path)
        except (OSError, ValueError) as e:
            print(f"skipped: {e}")
    if results:
        print(table(results))


if __name__ == "__main__":
    main()
