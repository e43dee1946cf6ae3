"""Plot a kernel benchmark JSON: fraction of ideal against tile density, per shape and mode.

Solid lines are ours, dashed lines FlexAttention on the same tile lists (where the run timed it);
the grey line at 1.0 is the dense efficiency of the run's fastest dense kernel for that shape (named in
each panel's title; cuDNN in files older than v10), the dotted one cuDNN on the same work per query
row (all queries against density x N keys; where the run timed it). Needs matplotlib.

    python benchmarks/plot_kernel.py benchmarks/results/kernel_h200_v8.json
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diffusers_sparse_vdit import Mode  # noqa: E402
from diffusers_sparse_vdit.plots import MODE_COLORS  # noqa: E402

MODES = (Mode.FULL, Mode.DIAGONAL, Mode.MULTI_DIAGONAL, Mode.VERTICAL_STRIPE)


def curves(rows: list[dict]) -> dict:
    """{shape: {(impl, mode name): [(tile density, fraction of ideal), ...]}} from the ours/flex rows,
    and cuDNN's equal-work rows as ``("cudnn", "EQUAL_WORK")``."""
    out: dict = defaultdict(lambda: defaultdict(list))
    cudnn_dense = {}  # cuDNN's own dense fraction of ideal per shape: below 1 when FA3/FA4 was faster
    for r in rows:
        if r.get("impl") == "sdpa-cudnn" and r.get("plan") == "dense":
            cudnn_dense[r["shape"]] = r["fraction_of_ideal"]
        if r.get("impl") == "sdpa-cudnn-equal-work":
            out[r["shape"]][("cudnn", "EQUAL_WORK")].append((r["tile_density"], r["fraction_of_ideal"]))
            continue
        if r.get("impl") not in ("ours", "flex", "fa4-sparse") or "@" not in r.get("plan", "") or "ms" not in r:
            continue
        mode = r["plan"].split("@")[0]
        out[r["shape"]][(r["impl"], mode)].append((r["tile_density"], r["fraction_of_ideal"]))
    for shape, per_shape in out.items():
        full = {impl: pts for (impl, mode), pts in per_shape.items() if mode == "FULL"}
        for (impl, mode), pts in per_shape.items():
            if impl == "cudnn":
                pts.append((1.0, cudnn_dense.get(shape, 1.0)))  # cuDNN's dense run itself
            elif mode != "FULL":
                pts.extend(full.get(impl, []))  # every mode ends at the all-FULL plan
            pts.sort()
    return out


def baselines(rows: list[dict]) -> dict[str, str]:
    """{shape: the dense kernel its fractions of ideal are against} (files older than v10 name none: cuDNN)."""
    out = {}
    for r in rows:
        if "shape" in r:
            out.setdefault(r["shape"], r.get("baseline", "cuDNN"))
    return out


def plot(data: dict, title: str, path: Path) -> Path:
    from matplotlib.figure import Figure

    shapes, baseline_of = list(curves(data["rows"]).items()), baselines(data["rows"])
    if not shapes:
        raise ValueError("no 'ours' rows with per-mode plans in this JSON")
    fig = Figure(figsize=(4.2 * len(shapes), 3.6), layout="constrained")
    axes = fig.subplots(1, len(shapes), sharey=True, squeeze=False)[0]
    for ax, (shape, lines) in zip(axes, shapes):
        ax.axhline(1.0, color="#999999", lw=1)
        if ("cudnn", "EQUAL_WORK") in lines:
            xs, ys = zip(*lines[("cudnn", "EQUAL_WORK")])
            ax.plot(xs, ys, ":", color="#555555", lw=1.2, label="cuDNN, same work per row")
        for mode in MODES:
            for impl, style in (("ours", "-"), ("flex", "--"), ("fa4-sparse", ":")):
                pts = lines.get((impl, mode.name))
                if pts and (mode is not Mode.FULL or impl == "ours"):
                    xs, ys = zip(*pts)
                    label = f"{mode.name}" if impl == "ours" else None
                    ax.plot(xs, ys, style, marker="o", ms=3, color=MODE_COLORS[mode], label=label)
        ax.set_xscale("log")
        ax.set_xticks([0.1, 0.25, 0.5, 1.0], labels=["0.1", "0.25", "0.5", "1"])
        ax.set_title(f"{shape}\n1.0 = {baseline_of[shape]}, the fastest dense kernel", fontsize=10)
        ax.set_xlabel("tile density")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("fraction of ideal")
    axes[0].legend(fontsize=8, loc="lower left", title="ours (solid), Flex (dashed), FA4 block-sparse (dotted)",
                   title_fontsize=8)
    fig.suptitle(title, fontsize=11)
    fig.savefig(path, dpi=110)
    return path


def cli(plot_fn, description: str, heading: str = ""):
    """A plot script's command line (this one's and ``plot_fp8.py``'s): a benchmark JSON in, ``plot_fn``'s PNG out,
    titled with ``heading`` and the run's device and versions."""
    parser = argparse.ArgumentParser(description=description.split("\n")[0])
    parser.add_argument("json", type=Path)
    parser.add_argument("--out", type=Path, help="PNG path (default: the JSON's with .png)")
    args = parser.parse_args()
    data = json.loads(args.json.read_text())
    meta = data.get("meta", {})
    title = f"{heading}{meta.get('device', '?')}, {meta.get('dtype', '')}, triton {meta.get('triton', '?')}"
    print(plot_fn(data, title, args.out or args.json.with_suffix(".png")))


if __name__ == "__main__":
    cli(plot, __doc__)
