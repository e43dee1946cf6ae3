import torch

from diffusers_sparse_vdit import TokenLayout
from diffusers_sparse_vdit.search import ScoreSet, candidate_densities, default_candidates

LAYOUT, TILE = TokenLayout(8, 8, 8), 16


def random_scores(layers=3, heads=4, ranges=1, seed=0, **metadata) -> ScoreSet:
    """Scores with random errors (FULL exact) on the 8x8x8 layout."""
    g = torch.Generator().manual_seed(seed)
    cands = default_candidates(LAYOUT, TILE)
    dens = candidate_densities(cands, LAYOUT, TILE)
    shape = (ranges, layers, heads, len(cands))
    # errors fall with density, with per-head scale and noise, like real scores
    errors = (1 - dens) * torch.rand(shape[:3] + (1,), generator=g, dtype=torch.float64) * 0.2
    errors = errors * (0.5 + torch.rand(shape, generator=g, dtype=torch.float64))
    errors[..., 0] = 0
    mass = torch.rand(ranges, layers, heads, LAYOUT.video_tiles(TILE), generator=g, dtype=torch.float64)
    meta = {"family": "wan", "base_model": "Wan-AI/Wan2.1-T2V-1.3B-Diffusers",
            "target_modules": [f"blocks.{i}.attn1" for i in range(layers)], "num_inference_steps": 50,
            "prompts": ["a cat", "a dog"], "height": 128, "width": 128, "num_frames": 29}
    meta.update(metadata)
    step_ranges = [[0, 20], [20, -1]] if ranges == 2 else [[0, -1]]
    return ScoreSet(LAYOUT, TILE, cands, errors, torch.full((ranges, layers), 6, dtype=torch.int64), dens, mass,
                    "projected", step_ranges, 8, meta)
