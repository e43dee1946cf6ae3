"""diffusers-sparse-vdit: per-head sparse attention for video diffusion transformers (Sparse-vDiT)."""

from .balance import RankShares, rank_shares
from .config import SparseVDiTConfig
from .kernels import sparse_attention
from .layout import TokenLayout
from .modes import Mode, ModeSpec
from .plan import SparsePlan, build_plan
from .plots import plot_mode_map

__version__ = "0.1.0"

# The processors import diffusers' model code: load them on first use, so the kernels and
# plans stay importable without paying for it.
_PROCESSORS = ("SparseVDiTProcessor", "apply_sparse_vdit", "remove_sparse_vdit", "context_parallel_plan")

__all__ = [
    "Mode",
    "ModeSpec",
    "TokenLayout",
    "SparsePlan",
    "build_plan",
    "sparse_attention",
    "SparseVDiTConfig",
    "plot_mode_map",
    "rank_shares",
    "RankShares",
    *_PROCESSORS,
    "__version__",
]


def __getattr__(name):
    if name in _PROCESSORS:
        from . import processors

        return getattr(processors, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
