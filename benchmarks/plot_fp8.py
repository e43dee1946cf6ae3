"""Plot an FP8 benchmark JSON (``bench_fp8.py``): TFLOP/s on computed tiles per shape and plan.

Per shape, for each plan, bars for our 16-bit kernel, our FP8 kernel alone (K/V quantized beforehand)
and the FP8 call with its quantization pass; horizontal lines for the dense peers of the run (FA3 in
bf16, FA3's FP8 forward) where they were installed. Needs matplotlib.

    python benchmarks/plot_fp8.py benchmarks/results/fp8_h200_v10_fa3.json
"""

from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from plot_kernel import cli  # noqa: E402

BARS = (("ours-bf16", "ours, 16-bit", "#4c72b0"), ("ours-fp8-kernel", "ours, FP8 kernel", "#dd8452"),
        ("ours-fp8", "ours, FP8 call (with quantization)", "#c44e52"))
LINES = (("fa3", "FA3 dense, bf16", "--"), ("fa3-fp8", "FA3 dense, FP8", ":"))


def bars(rows: list[dict]) -> dict:
    """{shape: {"plans": [plan, ...], impl: [TFLOP/s per plan], "peers": {impl: TFLOP/s}}} from the timed rows."""
    out: dict = defaultdict(lambda: {"plans": [], "peers": {}, **{impl: [] for impl, _, _ in BARS}})
    for r in rows:
        if not r.get("tflops"):
            continue  # not installed, or not timed
        shape = out[r["shape"]]
        if r["plan"] == "dense":
            shape["peers"][r["impl"]] = r["tflops"]
        elif r["impl"] in shape:
            if r["plan"] not in shape["plans"]:
                shape["plans"].append(r["plan"])
            shape[r["impl"]].append(r["tflops"])
    return {name: shape for name, shape in out.items() if shape["plans"]}


def plot(data: dict, title: str, path: Path) -> Path:
    from matplotlib.figure import Figure

    shapes = list(bars(data["rows"]).items())
    if not shapes:
        raise ValueError("no rows of our kernels in this JSON")
    fig = Figure(figsize=(4.4 * len(shapes), 3.8), layout="constrained")
    axes = fig.subplots(1, len(shapes), sharey=True, squeeze=False)[0]
    width = 0.8 / len(BARS)
    for ax, (shape, got) in zip(axes, shapes):
        xs = range(len(got["plans"]))
        for k, (impl, label, color) in enumerate(BARS):
            ax.bar([x + (k - 1) * width for x in xs][:len(got[impl])], got[impl], width, label=label, color=color)
        for impl, label, style in LINES:
            if impl in got["peers"]:
                ax.axhline(got["peers"][impl], ls=style, color="#333333", lw=1.2, label=label)
        ax.set_xticks(list(xs), labels=[p.replace("DIAGONAL", "DIAG") for p in got["plans"]], fontsize=8)
        ax.set_title(shape, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("TFLOP/s on computed tiles")
    axes[0].legend(fontsize=7, loc="lower left")
    fig.suptitle(title, fontsize=11)
    fig.savefig(path, dpi=110)
    return path


if __name__ == "__main__":
    cli(plot, __doc__, "FP8 against 16 bits: ")
