"""What the family processors share: the prepare -> attend -> finish skeleton and the family record.

A family processor reproduces its stock diffusers processor line for line except for the
attention call. The call is split into three overridable steps so a subclass changes one
without copying the others:

* :meth:`SparseAttnProcessor.prepare`: the stock projections, norms and RoPE, ending in
  q, k, v as ``(B, H, N, D)`` views plus where the tokens are (:class:`AttentionCall`);
* :meth:`SparseAttnProcessor.attend`: the attention call itself. This is the seam the search
  overrides to score candidate modes on a layer's real q, k, v;
* :meth:`SparseAttnProcessor.finish`: the stock output projection and text/video split.

Dense calls (warm-up steps, and all-FULL layers under ``backend="auto"``) take the fastest
dense kernel installed (FA3, FA4; :mod:`..kernels.dense`), else the stock attention path. The
stock path is exactly what diffusers computes; ``transformer.set_attention_backend(...)`` forces it.

Inside ``torch.compile`` / ``torch.export``, ``attend`` runs in the custom op
``diffusers_sparse_vdit::layer_attention``, which picks the plan at run time (see :mod:`.hook`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from diffusers.models.attention_dispatch import dispatch_attention_fn

from ..kernels import sparse_attention
from ..kernels.attention import BACKENDS
from ..kernels.dense import choose_dense_backend, dense_attention_fast
from ..layout import TokenLayout
from ..modes import Mode
from ..plan import SparsePlan, build_plan
from .parallel import ulysses_attention, ulysses_degree

if TYPE_CHECKING:
    from ..config import SparseVDiTConfig
    from .hook import SparseVDiTState

__all__ = ["AttentionCall", "Family", "SparseAttnProcessor"]


@dataclass
class AttentionCall:
    """One attention call after the stock projections, norms and RoPE."""

    query: torch.Tensor  # (B, H, N, D), any strides: usually a view of diffusers' (B, N, H, D)
    key: torch.Tensor
    value: torch.Tensor
    text_tokens: int  # text tokens in the joint sequence (0 in Wan self-attention)
    attention_mask: torch.Tensor | None = None  # the stock mask, for the dense path


class SparseAttnProcessor:
    """Base of the per-family processors: one instance per target attention layer.

    ``config`` is the mode map, ``layer`` this module's index in ``config.target_modules``,
    ``state`` the transformer-wide :class:`~.hook.SparseVDiTState` (grid and step of the call in
    progress). Instances are made by :func:`~.apply.apply_sparse_vdit`.
    """

    #: where the family puts text tokens in the joint sequence ("none", "before", "after")
    text_position = "none"
    # Like the stock processors: ModelMixin.set_attention_backend() sets this, and the dense
    # path honours it.
    _attention_backend = None
    # Like the stock processors: transformer.enable_parallelism() sets this under context
    # parallelism, and the attention then runs through .parallel.ulysses_attention.
    _parallel_config = None

    def __init__(self, config: SparseVDiTConfig, layer: int, state: SparseVDiTState, *, backend: str = "auto"):
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; choose one of {BACKENDS}")
        self.config = config
        self.layer = layer
        self.state = state
        self.backend = backend
        self._plans: dict[tuple[int, TokenLayout], SparsePlan | None] = {}
        # what a compiled graph passes to layer_attention: a tensor, so regional compilation
        # does not guard on (and recompile for) each block's layer index
        self._layer_index = torch.tensor(layer)

    @property
    def module_name(self) -> str:
        return self.config.target_modules[self.layer]

    # The three steps --------------------------------------------------------------------
    def prepare(self, attn, hidden_states, encoder_hidden_states, attention_mask, rotary_emb) -> AttentionCall:
        raise NotImplementedError

    def attend(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        plan: SparsePlan | None,
        *,
        layout: TokenLayout | None = None,
        text_lengths: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Attention of ``(B, H, N, D)`` q, k, v; returns ``(B, H, N, D)`` with q's strides.

        ``plan`` is None for a dense call; ``layout`` is the call's token layout (None while the
        grid is unknown), ``text_lengths`` the valid text tokens per batch item for the sparse
        kernel and ``attention_mask`` the same padding as the stock mask, for the dense path.
        """
        if plan is None:
            key_lengths = self.dense_key_lengths(layout, text_lengths) if attention_mask is not None else None
            # a backend set with set_attention_backend() asks for diffusers' own path
            fast = choose_dense_backend(
                query, attention_mask, key_lengths=key_lengths, stock_requested=self._attention_backend is not None
            )
            if fast != "stock":
                return dense_attention_fast(fast, query, key, value, key_lengths)
            return self.dense_attention(query, key, value, attention_mask)
        return sparse_attention(query, key, value, plan, backend=self.backend, text_lengths=text_lengths)

    def finish(self, attn, out: torch.Tensor, call: AttentionCall):
        raise NotImplementedError

    @staticmethod
    def dense_key_lengths(layout: TokenLayout | None, text_lengths: torch.Tensor | None) -> torch.Tensor | None:
        """Keys each batch item keeps under the padding mask, when they are a prefix of the sequence, else None.

        Text after video padded at its end (HunyuanVideo) keeps the first ``video + text_lengths[b]``
        keys, as the transformer's mask does (the hook reads the lengths from the same
        ``encoder_attention_mask``); the fast dense kernels take that as key counts.
        """
        if layout is None or text_lengths is None or layout.text_position != "after":
            return None
        return layout.video_tokens + text_lengths

    # Shared machinery -------------------------------------------------------------------
    def run(self, attn, hidden_states, encoder_hidden_states, attention_mask, rotary_emb):
        call = self.prepare(attn, hidden_states, encoder_hidden_states, attention_mask, rotary_emb)
        if self._parallel_config is not None:
            out = ulysses_attention(self, call)
        elif torch.compiler.is_compiling():
            out = torch.ops.diffusers_sparse_vdit.layer_attention(
                call.query, call.key, call.value, call.attention_mask, call.text_tokens,
                self.state.token, self._layer_index, self.state.hook_id,
            )  # fmt: skip
        else:
            out = self.attend_call(call.query, call.key, call.value, call.text_tokens, call.attention_mask)
        return self.finish(attn, out, call)

    def attend_call(self, query, key, value, text_tokens: int, attention_mask) -> torch.Tensor:
        """``attend`` with this call's layout and plan, as the hook resolved them for this step."""
        layout = self.layout(query.shape[2], text_tokens)
        plan = self.state.plans.get(self.layer) if layout is not None else None
        text_lengths = self.state.text_lengths if attention_mask is not None else None  # padded prompts
        return self.attend(
            query, key, value, plan, layout=layout, text_lengths=text_lengths, attention_mask=attention_mask
        )

    def dense_attention(self, query, key, value, attention_mask):
        """The stock attention call (diffusers' dispatcher, (B, N, H, D) in and out)."""
        out = dispatch_attention_fn(
            query.transpose(1, 2),
            key.transpose(1, 2),
            value.transpose(1, 2),
            attn_mask=attention_mask,
            dropout_p=0.0,
            is_causal=False,
            backend=self._attention_backend,
        )
        return out.transpose(1, 2)

    def whole_sequence_tokens(self, local_tokens: int, text_tokens: int) -> int:
        """Tokens of the whole joint sequence: under Ulysses each rank holds 1/W of the video and all the text."""
        return (local_tokens - text_tokens) * ulysses_degree(self._parallel_config) + text_tokens

    def layout(self, num_tokens: int, text_tokens: int) -> TokenLayout | None:
        """This call's token layout as the hook recorded it; None while the grid is unknown."""
        layout = self.state.layout
        if layout is None:
            return None
        if layout.num_tokens != num_tokens or layout.text_tokens != text_tokens:
            raise RuntimeError(
                f"{type(self).__name__} (layer {self.layer}, {self.config.target_modules[self.layer]}): the "
                f"transformer's input gives {layout}, but this attention call sees {num_tokens} tokens "
                f"({text_tokens} text). Sparse-vDiT needs the whole sequence in one attention call: for context "
                "parallelism use Ulysses with cp_plan=diffusers_sparse_vdit.context_parallel_plan(transformer); token "
                "merging or dropping are not supported: remove them or remove_sparse_vdit()."
            )
        return layout

    def plan(self, layout: TokenLayout | None) -> SparsePlan | None:
        """The plan for a call with this layout at the state's step, or None when it runs dense.

        Called by the hook, eagerly, at the start of every transformer call; cached per step range
        and layout.
        """
        if layout is None:  # grid unknown: the call that bound SparseVDiTProcessor (see binding.py)
            return None
        phase = self.state.phase  # None: dense (warm-up); else the map's step range
        if phase is None:
            return None
        key = (phase, layout)
        try:
            return self._plans[key]
        except KeyError:
            pass
        specs = self.config.head_specs(self.layer, self.state.step)
        precision = self.config.head_precisions(self.layer, self.state.step)
        # Under "auto" an all-FULL layer is plain dense attention on the fastest dense kernel
        # installed (FA3/FA4 run 1.1-1.2x ours all-FULL on the H200, DESIGN §6b; else the stock
        # path, exactly what diffusers computes), unless some head asks for FP8, which only our
        # kernels compute. An explicit backend runs the chosen kernel for every layer with a map.
        dense = self.backend == "auto" and all(s.mode is Mode.FULL and p == "native" for s, p in zip(specs, precision))
        plan = self._plans[key] = None if dense else build_plan(specs, layout, self.config.tile_size, precision=precision)
        return plan

    def __repr__(self) -> str:
        return f"{type(self).__name__}(layer={self.layer}, backend={self.backend!r})"


@torch.library.custom_op("diffusers_sparse_vdit::layer_attention", mutates_args=())
def _layer_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    text_tokens: int,
    token: torch.Tensor,  # from observe_call: orders this op after the call's step is known
    layer: torch.Tensor,
    hook_id: int,
) -> torch.Tensor:
    """One sparse layer's attention in a compiled or exported graph, with the plan chosen at run time."""
    from .hook import live_hook

    processor = live_hook(hook_id).processors[int(layer)]
    out = processor.attend_call(query, key, value, text_tokens, attention_mask)
    return out if out.stride() == query.stride() else torch.empty_like(query).copy_(out)


@_layer_attention.register_fake
def _(query, key, value, attention_mask, text_tokens, token, layer, hook_id):
    return torch.empty_like(query)


@dataclass(frozen=True)
class Family:
    """How one model family is made sparse: which modules, which processors, where the grid is."""

    name: str  # a key of config.FAMILIES
    processor_cls: type[SparseAttnProcessor]
    # attention modules that become sparse, as full-match regexes over module names (no
    # ".processor"); their order in the model is the layer order of the mode map
    target_patterns: tuple[str, ...]
    # fresh stock processors: for target modules, and for the model's other attention modules
    stock_target_processor: Callable[[], object]
    stock_other_processor: Callable[[], object]
    # latent (frames, height, width) after patchify, from the transformer config and the
    # hidden_states its forward receives
    latent_grid: Callable[[object, torch.Tensor], tuple[int, int, int]]
    # the stock processor that the model's fuse_qkv_projections() sets on the targets, if it sets one
    # (the family processor then reads the fused projection; see SparseVDiTHook.check_processors)
    fused_stock_processor: type | None = None
    # text tokens in the joint sequence and, when some are padding, the valid ones per batch item
    # (B,), from the transformer's forward arguments
    call_text: Callable[[dict], tuple[int, torch.Tensor | None]] = lambda arguments: (0, None)
    # the forward arguments (tensors or None) besides hidden_states and timestep that call_text reads;
    # a compiled graph hands exactly these to the hook at run time
    call_inputs: tuple[str, ...] = ("encoder_hidden_states", "encoder_attention_mask")

    def is_target(self, module_name: str) -> bool:
        return any(re.fullmatch(p, module_name) for p in self.target_patterns)

    def target_modules(self, transformer) -> list[str]:
        """Names of the transformer's sparse target attention modules, in model order."""
        names = [key.removesuffix(".processor") for key in transformer.attn_processors]
        return [n for n in names if self.is_target(n)]

    def stock_processor(self, module_name: str):
        return self.stock_target_processor() if self.is_target(module_name) else self.stock_other_processor()
