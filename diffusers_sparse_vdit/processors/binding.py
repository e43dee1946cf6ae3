"""``SparseVDiTProcessor``: a mode map that binds itself through ``set_attn_processor``.

``transformer.set_attn_processor(SparseVDiTProcessor.from_pretrained(repo))`` sets one object
on every attention module, cross-attention and HunyuanVideo's token refiner included, and
diffusers tells the object nothing about the transformer. So the object is a placeholder that
binds lazily:

1. On construction it registers a global module forward pre-hook (weakly referenced: it goes
   away with the object).
2. At the first forward of a diffusers transformer whose attention modules hold it, the hook
   validates the map against that transformer (a mismatch raises a ValueError there, and again
   on every call until the map is replaced), then does what :func:`~.apply.apply_sparse_vdit`
   does: target modules get per-layer sparse processors, every other module holding the
   placeholder gets a fresh stock processor (``WanAttnProcessor``, ``AttnProcessor2_0``, ...),
   and the grid/step hook is registered in the transformer's ``HookRegistry``.
3. The global hook removes itself.

The call during which binding happens has already started, and a global pre-hook sees only
positional arguments (pipelines pass keywords), so that call cannot be made sparse while it runs.
A one-shot global forward hook (which sees the keyword arguments) therefore runs it again once
it returns, now through the grid/step hook, and returns that result: the first call is exact,
and every call gives what :func:`~.apply.apply_sparse_vdit` gives. The cost is one extra
transformer forward, once per binding; stateful diffusers hooks (caches) are reset before the
re-run so they do not see the discarded pass.

``remove_sparse_vdit`` then restores fresh stock processors (the ones the placeholder
replaced are gone). One placeholder binds to one transformer.
"""

from __future__ import annotations

import weakref
from pathlib import Path

from diffusers.models.attention import AttentionMixin
from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook

from ..config import SparseVDiTConfig
from ..kernels.attention import BACKENDS
from ..logs import get_logger
from .install import PendingMap, install, load_config

logger = get_logger(__name__)

__all__ = ["SparseVDiTProcessor"]


class SparseVDiTProcessor(PendingMap):
    """A Sparse-vDiT mode map as an attention processor for ``transformer.set_attn_processor``.

    Example::

        pipe = WanPipeline.from_pretrained("Wan-AI/Wan2.1-T2V-1.3B-Diffusers", torch_dtype=torch.bfloat16).to("cuda")
        pipe.transformer.set_attn_processor(SparseVDiTProcessor.from_pretrained("someone/wan21-1.3b-sparse-vdit"))
        video = pipe(prompt, num_frames=81, height=480, width=832).frames[0]

    Only the map's target modules change behaviour; see the module docstring for how the
    object binds to the transformer at its first forward.
    """

    def __init__(self, config: SparseVDiTConfig, *, backend: str = "auto"):
        if not isinstance(config, SparseVDiTConfig):
            raise TypeError(f"SparseVDiTProcessor takes a SparseVDiTConfig, got {type(config).__name__}")
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; choose one of {BACKENDS}")
        self.config = config
        self.backend = backend
        self._bound_to: str | None = None  # class name of the transformer this bound to
        self_ref = weakref.ref(self)

        def bind_at_first_forward(module, args):
            processor = self_ref()
            if processor is not None:
                processor._maybe_bind(module)

        self._handle = register_module_forward_pre_hook(bind_at_first_forward)
        weakref.finalize(self, self._handle.remove)

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: str | Path, *, backend: str = "auto", **hub_kwargs
    ) -> SparseVDiTProcessor:
        """Load a mode map from a Hub repo id or local folder (``hub_kwargs``: revision, token, cache_dir, ...)."""
        return cls(load_config(pretrained_model_name_or_path, **hub_kwargs), backend=backend)

    def disarm(self) -> None:
        """Stop waiting for a transformer to bind to (``apply_sparse_vdit`` binds explicitly)."""
        self._handle.remove()

    def __call__(self, attn, hidden_states, *args, **kwargs):
        where = f"it was bound to a {self._bound_to} already" if self._bound_to else "it was never bound"
        raise RuntimeError(
            f"an attention module called SparseVDiTProcessor directly ({where}). The placeholder binds to its "
            "transformer at that transformer's first forward and replaces itself with per-layer processors; "
            "call the transformer rather than its blocks, use one SparseVDiTProcessor per transformer, or bind "
            "explicitly with apply_sparse_vdit(transformer, processor)."
        )

    def _maybe_bind(self, module) -> None:
        # Cheap rejections first: this runs before every module forward until binding.
        if not isinstance(module, AttentionMixin) or not any(
            getattr(m, "processor", None) is self for m in module.modules()
        ):
            return
        if self.config.transformer_2 is not None:
            raise ValueError(
                "this Sparse-vDiT map covers two experts (transformer and transformer_2): set on one transformer it "
                "would leave the other dense, and count its steps from the wrong start. Apply it to the pipeline: "
                "apply_sparse_vdit(pipe, map)"
            )
        install(module, self.config, backend=self.backend)  # validates; raises on a mismatch
        self.disarm()
        self._bound_to = type(module).__name__
        _rerun_at_end_of_call(module)
        logger.info(f"SparseVDiTProcessor bound to {type(module).__name__}; its first call runs twice")

    def __repr__(self) -> str:
        return f"SparseVDiTProcessor({self.config!r}, backend={self.backend!r})"


def _rerun_at_end_of_call(transformer) -> None:
    """Replace the binding call's result by the same call through the installed map."""
    transformer_ref = weakref.ref(transformer)

    # If the binding call raises, this fires at the end of the next successful call instead,
    # which then also runs twice with the same result.
    def rerun(module, args, kwargs, output):
        if module is transformer_ref():
            handle.remove()
            module._diffusers_hook.reset_stateful_hooks()
            return module.forward(*args, **kwargs)  # the HookRegistry's forward, our hook included
        return None

    handle = register_module_forward_hook(rerun, with_kwargs=True)
