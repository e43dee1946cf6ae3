"""Sparse attention processors for diffusers' video transformers, and how to install them.

Two routes, same result:

* ``transformer.set_attn_processor(SparseVDiTProcessor.from_pretrained(repo))``: the diffusers
  idiom; the object binds to the transformer at its first forward (see :mod:`.binding`);
* ``apply_sparse_vdit(pipe, repo)`` / ``remove_sparse_vdit(pipe)``: explicit, immediate and
  reversible (see :mod:`.apply`); both install a map with :func:`.install.install`.

One thin processor per family (:mod:`.wan`, :mod:`.hunyuan_video`, :mod:`.cogvideox`,
:mod:`.hunyuan_video15`) keeps
the stock projections, norms, RoPE and output path and replaces only the attention call.
"""

from .apply import apply_sparse_vdit, remove_sparse_vdit
from .base import AttentionCall, Family, SparseAttnProcessor
from .binding import SparseVDiTProcessor
from .cogvideox import CogVideoXSparseAttnProcessor
from .hook import HOOK_NAME, SparseVDiTHook, SparseVDiTState, get_sparse_vdit_hook
from .hunyuan_video import HunyuanVideoSparseAttnProcessor
from .hunyuan_video15 import HunyuanVideo15SparseAttnProcessor
from .install import FAMILY_REGISTRY, context_parallel_plan, family_of, load_config, sparse_targets
from .wan import WanSparseAttnProcessor

__all__ = [
    "SparseVDiTProcessor",
    "apply_sparse_vdit",
    "remove_sparse_vdit",
    "sparse_targets",
    "family_of",
    "load_config",
    "context_parallel_plan",
    "get_sparse_vdit_hook",
    "SparseAttnProcessor",
    "WanSparseAttnProcessor",
    "HunyuanVideoSparseAttnProcessor",
    "HunyuanVideo15SparseAttnProcessor",
    "CogVideoXSparseAttnProcessor",
    "AttentionCall",
    "Family",
    "FAMILY_REGISTRY",
    "SparseVDiTHook",
    "SparseVDiTState",
    "HOOK_NAME",
]
