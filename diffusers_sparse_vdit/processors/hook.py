"""The transformer-level hook: records the latent grid, timestep and denoising step of each call.

Attention processors see token sequences, not the latent grid, and never the step. A diffusers
``ModelHook`` on the transformer (registered in its ``HookRegistry`` under :data:`HOOK_NAME`,
the way diffusers' cache hooks are) reads them from the transformer's forward arguments into a
:class:`SparseVDiTState` that every sparse processor of that transformer holds.

Step counting. Pipelines do not tell the transformer which step it is on, so the step is
derived from the timestep of consecutive calls:

* the first call, or a call whose timestep is *higher* than the previous one, is step 0 (a
  new generation: denoising only lowers the timestep);
* a lower timestep is the next step;
* an equal timestep is the same step, so classifier-free guidance counts one step whether it
  runs as two calls (Wan, HunyuanVideo) or as one call with batch 2 (CogVideoX).

A tensor timestep counts by its largest entry (per-token timesteps, as in Wan2.2 TI2V, carry
the step's noise level there). Pipelines reset the state after every generation
(``maybe_free_model_hooks`` resets stateful diffusers hooks), so the next one starts at step 0
even if its first timestep equals the last one's. Schedulers that evaluate the model twice per
step at different timesteps (Heun) count two steps.
"""

from __future__ import annotations

import functools
import inspect

import torch
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.hooks.hooks import BaseState

from ..layout import TokenLayout

__all__ = ["HOOK_NAME", "SparseVDiTHook", "SparseVDiTState", "get_sparse_vdit_hook"]

HOOK_NAME = "sparse_vdit"


class SparseVDiTState(BaseState):
    """Grid, timestep and step of the transformer call in progress, shared by its processors."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.grid: tuple[int, int, int] | None = None  # latent (frames, height, width) after patchify
        self.timestep: float | None = None
        self.step: int | None = None
        # What the processors select their plans by: None for a dense call, else the map's step
        # range. It changes only at the warm-up's end and at step-range boundaries, so a compiled
        # transformer (which guards on what it reads) recompiles at most that often.
        self.phase: int | None = None
        # Resolved once per call, eagerly, for every layer: the processors only look them up,
        # so nothing data-dependent (or plan building) happens inside a compiled graph.
        self.layout: TokenLayout | None = None
        self.text_lengths: torch.Tensor | None = None  # (B,) valid text tokens when some are padding
        self.plans: dict[int, object] = {}  # layer -> SparsePlan, or None for a dense call

    def begin_call(self, grid: tuple[int, int, int], timestep: float, config=None) -> None:
        if self.timestep is None or timestep > self.timestep:
            self.step = 0
        elif timestep < self.timestep:
            self.step += 1
        self.grid, self.timestep = tuple(grid), timestep
        if config is not None:
            self.phase = None if config.is_dense(self.step, timestep) else config.range_index(self.step)

    def __repr__(self) -> str:
        return f"SparseVDiTState(grid={self.grid}, timestep={self.timestep}, step={self.step})"


class SparseVDiTHook(ModelHook):
    """Records each call's grid and step; remembers the processors to restore on removal."""

    _is_stateful = True

    def __init__(self, family, config, backend: str, original_processors: dict):
        super().__init__()
        self.family = family
        self.config = config
        self.backend = backend
        self.original_processors = original_processors
        self.state = SparseVDiTState()
        self.processors: list = []  # the sparse processors of this transformer (set by apply_sparse_vdit)

    def pre_forward(self, module, *args, **kwargs):
        self.observe(module, args, kwargs)
        return args, kwargs

    # Eager even inside torch.compile: the step rule reads the timestep's value. This is the one
    # graph break of a compiled transformer, at its entry, before any computation.
    @torch.compiler.disable
    def observe(self, module, args, kwargs) -> None:
        """Record one transformer call from its forward arguments."""
        arguments = _forward_signature(type(module)).bind_partial(module, *args, **kwargs).arguments
        grid = self.family.latent_grid(module.config, arguments["hidden_states"])
        state = self.state
        state.begin_call(grid, _timestep_value(arguments["timestep"]), self.config)
        text_tokens, state.text_lengths = self.family.call_text(arguments)
        position = self.family.processor_cls.text_position if text_tokens else "none"
        state.layout = TokenLayout(*grid, text_tokens=text_tokens, text_position=position)
        state.plans = {p.layer: p.plan(state.layout) for p in self.processors}

    def reset_state(self, module):
        self.state.reset()
        return module


def get_sparse_vdit_hook(transformer) -> SparseVDiTHook | None:
    """The Sparse-vDiT hook of a transformer, or None when no map is applied."""
    registry = getattr(transformer, "_diffusers_hook", None)
    return registry.get_hook(HOOK_NAME) if isinstance(registry, HookRegistry) else None


@functools.cache
def _forward_signature(cls) -> inspect.Signature:
    return inspect.signature(cls.forward)


def _timestep_value(timestep) -> float:
    # One host sync per transformer call: the step rule needs the value.
    if isinstance(timestep, torch.Tensor):
        return float(timestep.detach().max())
    return float(timestep)
