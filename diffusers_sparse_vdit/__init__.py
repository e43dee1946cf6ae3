"""diffusers-sparse-vdit: per-head sparse attention for video diffusion transformers (Sparse-vDiT)."""

from .kernels import sparse_attention
from .layout import TokenLayout
from .modes import Mode, ModeSpec
from .plan import SparsePlan, build_plan

__version__ = "0.1.0"

__all__ = ["Mode", "ModeSpec", "TokenLayout", "SparsePlan", "build_plan", "sparse_attention", "__version__"]
