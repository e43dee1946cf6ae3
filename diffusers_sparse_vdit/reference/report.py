"""Evidence that a reference pipeline's attention is learned: mass per mode, and pictures.

``python -m diffusers_sparse_vdit.reference.report wan [--prompts 2]`` generates held-out
captions and, at an early, a middle and a late denoising step, measures for every
(layer, head) the share of each video query's attention mass (softmax over all keys, text
included) that falls inside each mode's mask at about the same tile density (0.25 by
default, at the reference tile): DIAGONAL, MULTI_DIAGONAL, and the best VERTICAL_STRIPE set
of that size (the heaviest key tiles, an upper bound for the mode). A head that attends
uniformly keeps about the density; a spatial head keeps most of its mass in the band.

Writes ``attention_report.json`` and ``attention_report.png`` (mass heat maps, and the
attention of one query of the middle frame for the most spatial, most temporal and most
global heads) into the pipeline's folder, or ``--out``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from ..layout import TokenLayout
from ..modes import Mode, ModeSpec
from ..plan import build_plan

MODES = ("DIAGONAL", "MULTI_DIAGONAL", "VERTICAL_STRIPE")


class AttentionProbe:
    """Accumulates per-(phase, layer, head) mass kept by each mode's mask on the probed steps."""

    def __init__(self, num_layers: int, num_heads: int, steps: dict[str, int], density: float, tile_size: int):
        self.steps = steps  # phase -> step index
        self.density, self.tile_size = density, tile_size
        self.mass = {p: torch.zeros(len(MODES), num_layers, num_heads, dtype=torch.float64) for p in steps}
        self.calls = {p: torch.zeros(num_layers, dtype=torch.float64) for p in steps}
        self.maps: dict[tuple[int, int], torch.Tensor] = {}  # (layer, head) -> one query's attention, late step
        self.masks: dict | None = None
        self.key_tiles: torch.Tensor | None = None  # tile of every key, for the best-stripes bound
        self.layout: TokenLayout | None = None
        self.widths: dict[str, float] = {}

    def _masks(self, layout: TokenLayout) -> dict[str, torch.Tensor]:
        if self.masks is None:
            from ..baselines import band_width_for

            self.layout = layout
            self.masks = {}
            for name in ("DIAGONAL", "MULTI_DIAGONAL"):
                width = band_width_for(Mode[name], self.density, layout, self.tile_size)
                spec = ModeSpec.diagonal(width) if name == "DIAGONAL" else ModeSpec.multi_diagonal(width)
                plan = build_plan([spec], layout, tile_size=self.tile_size)
                self.widths[name] = width
                self.masks[name] = plan.dense_mask()[0]
            self.key_tiles = torch.arange(layout.num_tokens) // self.tile_size
        return self.masks

    @torch.no_grad()
    def observe(self, layer: int, step: int, query, key, layout: TokenLayout):
        phase = next((p for p, s in self.steps.items() if s == step), None)
        if phase is None:
            return
        masks = self._masks(layout)
        video = slice(layout.video_start, layout.video_start + layout.video_tokens)
        scale = query.shape[-1] ** -0.5
        for b in range(query.shape[0]):
            q, k = query[b, :, video].float().cpu(), key[b].float().cpu()
            probs = torch.softmax(q @ k.transpose(-1, -2) * scale, dim=-1)  # (H, video rows, N)
            kept = [(probs * masks[m][video].to(probs.dtype)).sum(-1).mean(-1) for m in MODES[:2]]
            # best stripes: the heaviest key tiles (by mass summed over all video queries)
            n_tiles = int(self.key_tiles[-1]) + 1
            tile_mass = torch.zeros(probs.shape[0], n_tiles).index_add_(1, self.key_tiles, probs.sum(1))
            top = tile_mass.topk(max(1, round(self.density * n_tiles)), dim=1).values.sum(1)
            kept.append(top / probs.shape[1])
            self.mass[phase][:, layer] += torch.stack(kept).double()
            self.calls[phase][layer] += 1
            if phase == "late" and b == 0:
                centre = (layout.frames // 2) * layout.frame_tokens + layout.frame_tokens // 2 + layout.width // 2
                for h in range(probs.shape[0]):
                    self.maps[(layer, h)] = probs[h, centre, video].reshape(layout.frames, layout.height, layout.width)

    def result(self) -> dict:
        out = {}
        for phase, mass in self.mass.items():
            mean = mass / self.calls[phase].clamp(min=1)[None, :, None]
            out[phase] = {m: mean[i].tolist() for i, m in enumerate(MODES)}
        return out


def probe_pipeline(pipe, info: dict, prompts: list[str], *, density: float = 0.25, seed: int = 0) -> AttentionProbe:
    """Run ``prompts`` through ``pipe`` with an :class:`AttentionProbe` on every target layer."""
    from ..config import SparseVDiTConfig
    from ..processors import apply_sparse_vdit, family_of, remove_sparse_vdit, sparse_targets

    transformer = pipe.transformer
    family, targets = family_of(transformer), sparse_targets(transformer)
    heads = transformer.get_submodule(targets[0]).heads
    steps = int(info["generate"]["num_inference_steps"])
    probe = AttentionProbe(len(targets), heads, {"early": 1, "middle": steps // 2, "late": steps - 1}, density,
                           int(info["tile_size"]))

    class ProbeProcessor(family.processor_cls):
        def attend(self, query, key, value, plan, *, layout=None, text_lengths=None, attention_mask=None):
            if layout is not None and self.state.step is not None:
                probe.observe(self.layer, self.state.step, query, key, layout)
            return super().attend(query, key, value, None, layout=layout, text_lengths=text_lengths,
                                  attention_mask=attention_mask)

    full = SparseVDiTConfig.from_specs([[ModeSpec.full()] * heads] * len(targets), family=family.name,
                                       transformer_class=type(transformer).__name__, target_modules=targets,
                                       tile_size=int(info["tile_size"]))
    apply_sparse_vdit(pipe, full, backend="torch", processor_cls=ProbeProcessor)
    try:
        for i, prompt in enumerate(prompts):
            pipe(prompt, generator=torch.Generator().manual_seed(seed + i), output_type="latent", **info["generate"])
    finally:
        remove_sparse_vdit(pipe)
    return probe


def plot_report(probe: AttentionProbe, result: dict, title: str, path: Path) -> Path:
    from matplotlib.figure import Figure

    phases = list(result)
    fig = Figure(figsize=(3.2 * len(MODES) + 1, 2.6 * len(phases) + 3.2), layout="constrained")
    grid = fig.add_gridspec(len(phases) + 2, len(MODES))
    for r, phase in enumerate(phases):
        for c, mode in enumerate(MODES):
            ax = fig.add_subplot(grid[r, c])
            image = ax.imshow(torch.tensor(result[phase][mode]).numpy(), vmin=0, vmax=1, cmap="viridis")
            ax.set_title(f"{mode} @ {probe.density:.2f}, {phase} step", fontsize=8)
            ax.set_xlabel("head", fontsize=7)
            ax.set_ylabel("layer", fontsize=7)
    fig.colorbar(image, ax=fig.axes, shrink=0.6, label="attention mass kept")
    late = {m: torch.tensor(result["late"][m]) for m in MODES}
    picks = []
    for mode in MODES:  # the head that keeps the most mass in each mode, late in denoising
        flat = late[mode].flatten()
        order = flat.argsort(descending=True)
        for index in order.tolist():
            head = divmod(index, late[mode].shape[1])
            if head not in [p[1] for p in picks]:
                picks.append((mode, head))
                break
    for c, (mode, (layer, head)) in enumerate(picks):
        ax = fig.add_subplot(grid[len(phases):, c])
        frames = probe.maps[(layer, head)]
        strip = torch.cat(list(frames / frames.max()), dim=1).numpy()
        ax.imshow(strip, cmap="magma")
        ax.set_title(f"layer {layer} head {head} (most {mode}): one query of the\nmiddle frame over "
                     f"{frames.shape[0]} frames", fontsize=8)
        ax.set_axis_off()
    fig.suptitle(title)
    fig.savefig(path, dpi=110)
    return path


def main(argv=None) -> None:
    from . import load_reference, reference_path

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("reference", help="a family name under reference_models/, or a folder")
    parser.add_argument("--prompts", type=int, default=2, help="held-out captions to probe")
    parser.add_argument("--density", type=float, default=0.25)
    parser.add_argument("--out", type=Path, default=None, help="folder for the report (default: the pipeline's)")
    args = parser.parse_args(argv)
    pipe, info = load_reference(args.reference)
    probe = probe_pipeline(pipe, info, info["heldout_prompts"][: args.prompts], density=args.density)
    result = probe.result()
    out = args.out or reference_path(args.reference)
    summary = {phase: {m: float(torch.tensor(v).max()) for m, v in modes.items()} for phase, modes in result.items()}
    report = {"family": info["family"], "density": args.density, "tile_size": info["tile_size"],
              "band_widths_frames": probe.widths, "steps": probe.steps, "prompts": args.prompts,
              "max_mass_kept": summary, "mass_kept": result}
    (out / "attention_report.json").write_text(json.dumps(report, indent=1) + "\n")
    plot_report(probe, result, f"{info['family']} reference: attention mass kept per head", out / "attention_report.png")
    for phase, modes in summary.items():
        print(f"{phase:>7}: most mass kept by one head: " + ", ".join(f"{m} {v:.2f}" for m, v in modes.items()))


if __name__ == "__main__":
    main()
