"""Small mode maps, and a Hugging Face cache laid out by hand, for the config / Hub / card tests."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from diffusers_sparse_vdit import ModeSpec, SparseVDiTConfig

ROW = [
    ModeSpec.full(),
    ModeSpec.skip(),
    ModeSpec.diagonal(1.0),
    ModeSpec.multi_diagonal(0.5),
    ModeSpec.vertical_stripe(4),
]

# What diffusers writes for a transformer: a repo holding this is a model, not a mode map.
DIFFUSERS_TRANSFORMER_CONFIG = b"""{
  "_class_name": "WanTransformer3DModel",
  "_diffusers_version": "0.42.1",
  "num_attention_heads": 12,
  "attention_head_dim": 128,
  "num_layers": 30,
  "patch_size": [1, 2, 2]
}
"""


def make_config(layers: int = 3, heads: int = 5, family: str = "wan", **kwargs) -> SparseVDiTConfig:
    """Every mode in every layer, shifted by one head per layer."""
    specs = [[ROW[(h + layer) % len(ROW)] for h in range(heads)] for layer in range(layers)]
    kwargs.setdefault("target_modules", [f"blocks.{i}.attn1" for i in range(layers)])
    return SparseVDiTConfig.from_specs(specs, family=family, **kwargs)


def put_in_hf_cache(cache_dir: Path, repo_id: str, files: dict[str, bytes], *, commit: str, refs=("main",)) -> Path:
    """Lay ``files`` out as huggingface_hub's cache does: content-addressed blobs, a
    ``snapshots/<commit>/`` tree of relative symlinks to them, and ``refs/<name>`` holding the commit."""
    repo = Path(cache_dir) / f"models--{repo_id.replace('/', '--')}"
    for name, data in files.items():
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = repo / "snapshots" / commit / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    for ref in refs:
        (repo / "refs" / ref).parent.mkdir(parents=True, exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
    return repo


def map_files(config: SparseVDiTConfig, tmp: Path, prefix: str = "") -> dict[str, bytes]:
    """The two files of a saved map, by name in the repo (under ``prefix``, a subfolder)."""
    folder = config.save_files(tmp / f"files-{id(config)}")
    return {prefix + name: (folder / name).read_bytes() for name in ("config.json", "mode_map.safetensors")}
