"""diffusers-sparse-vdit: per-head sparse attention for video diffusion transformers (Sparse-vDiT)."""

from .config import SparseVDiTConfig
from .kernels import sparse_attention
from .layout import TokenLayout
from .modes import Mode, ModeSpec
from .plan import SparsePlan, build_plan
from .plots import plot_mode_map

__version__ = "0.1.0"

__all__ = [
    "Mode",
    "ModeSpec",
    "TokenLayout",
    "SparsePlan",
    "build_plan",
    "sparse_attention",
    "SparseVDiTConfig",
    "plot_mode_map",
    "__version__",
]
