"""Merge several ``bench_quality.py`` results into one JSON and one plot (a column per family).

Parallel runs (``quality_h200.sh``) write one file each; this joins their rows. ``FILE:TAG``
appends ``[TAG]`` to the method names of that file, so variants of one method (e.g. 12 step
ranges, finer bands) stay apart; ``--drop METHOD...`` leaves methods out of the plot (they stay
in the JSON). Rows keep their own settings under ``sources``.

    python benchmarks/merge_quality.py /tmp/q/*_bands/quality_*.json /tmp/q/wan_r12/quality_wan_r12.json:r12 \\
        --out benchmarks/results/quality_h200.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_quality import plot, print_table, write_atomic  # noqa: E402


def merge(sources: list[str]) -> dict:
    rows, settings = [], []
    for source in sources:
        path, _, tag = source.partition(":")
        report = json.loads(Path(path).read_text())
        if report.get("partial"):
            print(f"note: {path} is partial (its run stopped early)", file=sys.stderr)
        for row in report["rows"]:
            row = dict(row)
            row["pipeline"] = row["family"]  # one column per family, whichever run it came from
            if tag:
                row["method"] = f"{row['method']}[{tag}]"
            row["source"] = Path(path).name
            rows.append(row)
        settings.append({"file": Path(path).name, "tag": tag, "partial": bool(report.get("partial")),
                         "settings": report.get("settings")})
    return {"sources": settings, "rows": rows}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", nargs="+", metavar="FILE[:TAG]")
    parser.add_argument("--drop", nargs="*", default=[], metavar="METHOD", help="methods left out of the plot")
    parser.add_argument("--out", required=True, help="the merged JSON; the plot goes beside it as .png")
    args = parser.parse_args(argv)
    merged = merge(args.results)
    out = Path(args.out)
    write_atomic(out, json.dumps(merged, indent=2) + "\n")
    shown = [r for r in merged["rows"] if r["method"] not in args.drop]
    png = plot(shown, out.with_suffix(".png"))
    print_table(merged["rows"])
    print(f"wrote {out}" + (f" and {png}" if png else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
