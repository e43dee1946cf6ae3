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

The two experts of a pipeline (Wan2.2 A14B's ``transformer`` and ``transformer_2``) share one
:class:`StepClock`, so the low-noise expert's first call is the step after the high-noise
expert's last, and a map's step indices count the whole schedule.

A tensor timestep counts by its largest entry (per-token timesteps, as in Wan2.2 TI2V, carry
the step's noise level there). Pipelines reset the state after every generation
(``maybe_free_model_hooks`` resets stateful diffusers hooks), so the next one starts at step 0
even if its first timestep equals the last one's. Schedulers that evaluate the model twice per
step at different timesteps (Heun) count two steps.

Compiled and exported transformers. Inside ``torch.compile`` or ``torch.export`` the step rule
(which reads the timestep's value) runs as the custom op ``diffusers_sparse_vdit::observe_call``
at run time, and each sparse layer's attention as ``diffusers_sparse_vdit::layer_attention``,
which picks the layer's plan from this state at run time. So one graph serves every step, dense
warm-up included, with no graph break, and regional compilation traces one block for all layers
(the layer index reaches the op as a tensor, not as a constant to guard on).

Processors replaced behind the map's back. Before each eager call the hook checks that every
target module still holds its sparse processor: CogVideoX's ``fuse_qkv_projections()`` swaps in
``FusedCogVideoXAttnProcessor2_0``, and the hook puts the sparse processor (which reads the fused
projection) back; any other replacement (``set_attn_processor``) is warned about once, with how
to re-apply the map.
"""

from __future__ import annotations

import functools
import inspect
import itertools
import weakref

import torch
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.hooks.hooks import BaseState

from ..layout import TokenLayout
from ..logs import get_logger

logger = get_logger(__name__)

__all__ = ["HOOK_NAME", "SparseVDiTHook", "SparseVDiTState", "StepClock", "get_sparse_vdit_hook"]

HOOK_NAME = "sparse_vdit"

# Compiled graphs name a hook by an integer id (custom ops take no Python objects).
_LIVE_HOOKS: weakref.WeakValueDictionary[int, SparseVDiTHook] = weakref.WeakValueDictionary()
_hook_ids = itertools.count()


class StepClock:
    """The denoising step, from the timesteps of consecutive calls (rule: module docstring)."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.timestep: float | None = None
        self.step: int | None = None

    def tick(self, timestep: float) -> int:
        if self.timestep is None or timestep > self.timestep:
            self.step = 0
        elif timestep < self.timestep:
            self.step += 1
        self.timestep = timestep
        return self.step


class SparseVDiTState(BaseState):
    """Grid, timestep and step of the transformer call in progress, shared by its processors.

    ``clock`` counts the steps; the experts of one pipeline pass the same one.
    """

    def __init__(self, clock: StepClock | None = None):
        self.hook_id: int | None = None  # which SparseVDiTHook this is, for compiled graphs
        self.balance_heads = True  # under Ulysses: balance heads across ranks (see parallel.py)
        self.logged_shares: set = set()  # (phase, layout, ranks) whose per-rank work was logged
        self.clock = clock or StepClock()
        self.reset()

    @property
    def timestep(self) -> float | None:
        return self.clock.timestep

    @property
    def step(self) -> int | None:
        return self.clock.step

    def reset(self) -> None:
        self.clock.reset()
        self.grid: tuple[int, int, int] | None = None  # latent (frames, height, width) after patchify
        # What the processors select their plans by: None for a dense call, else the map's step
        # range. It changes only at the warm-up's end and at step-range boundaries, so a compiled
        # transformer (which guards on what it reads) recompiles at most that often.
        self.phase: int | None = None
        # Resolved once per call, eagerly, for every layer: the processors only look them up,
        # so nothing data-dependent (or plan building) happens inside a compiled graph.
        self.layout: TokenLayout | None = None
        self.text_lengths: torch.Tensor | None = None  # (B,) valid text tokens when some are padding
        self.plans: dict[int, object] = {}  # layer -> SparsePlan, or None for a dense call
        # Orders every layer's attention op after the call's observe op in a compiled graph.
        self.token = torch.empty(0)

    def begin_call(self, grid: tuple[int, int, int], timestep: float, config=None) -> None:
        self.clock.tick(timestep)
        self.grid = tuple(grid)
        if config is not None:
            self.phase = None if config.is_dense(self.step, timestep) else config.range_index(self.step)

    def __repr__(self) -> str:
        return f"SparseVDiTState(grid={self.grid}, timestep={self.timestep}, step={self.step})"


class SparseVDiTHook(ModelHook):
    """Records each call's grid and step; remembers the processors to restore on removal."""

    _is_stateful = True

    def __init__(self, family, config, backend: str, original_processors: dict, clock: StepClock | None = None):
        super().__init__()
        self.family = family
        self.config = config
        self.backend = backend
        self.original_processors = original_processors
        self.state = SparseVDiTState(clock)
        # set by apply_sparse_vdit, in layer order: the sparse processors and their attention modules
        self.processors: list = []
        self.modules: list = []
        self.id = self.state.hook_id = next(_hook_ids)
        _LIVE_HOOKS[self.id] = self
        self._warned_replaced = False

    def initialize_hook(self, module):
        self._transformer_config = module.config
        self._parameter_names = list(_forward_signature(type(module)).parameters)[1:]  # without self
        return module

    def pre_forward(self, module, *args, **kwargs):
        arguments = {**dict(zip(self._parameter_names, args)), **kwargs}
        if torch.compiler.is_compiling():
            self.state.token = torch.ops.diffusers_sparse_vdit.observe_call(
                self.id,
                arguments["hidden_states"],
                torch.as_tensor(arguments["timestep"]),
                [arguments.get(name) for name in self.family.call_inputs],
            )
        else:
            self.check_processors()
            self.observe(arguments)
        return args, kwargs

    def observe(self, arguments: dict) -> None:
        """Record one transformer call from its forward arguments (by name)."""
        grid = self.family.latent_grid(self._transformer_config, arguments["hidden_states"])
        state = self.state
        state.begin_call(grid, _timestep_value(arguments["timestep"]), self.config)
        text_tokens, state.text_lengths = self.family.call_text(arguments)
        position = self.family.processor_cls.text_position if text_tokens else "none"
        state.layout = TokenLayout(*grid, text_tokens=text_tokens, text_position=position)
        state.plans = {p.layer: p.plan(state.layout) for p in self.processors}

    def reset_state(self, module):
        self.state.reset()
        return module

    def check_processors(self) -> None:
        """Put back sparse processors that fused projections replaced; warn once about other replacements."""
        replaced = []
        for processor, attn in zip(self.processors, self.modules, strict=True):
            current = attn.processor
            if current is processor:
                continue
            if self.family.fused_stock_processor is not None and type(current) is self.family.fused_stock_processor:
                attn.set_processor(processor)  # our processor reads the fused projection as the fused stock one does
                logger.info(f"{processor.module_name}: fused projections kept the Sparse-vDiT processor")
            else:
                replaced.append((processor.module_name, type(current).__name__))
        if replaced and not self._warned_replaced:
            self._warned_replaced = True
            (name, kind), more = replaced[0], len(replaced) - 1
            logger.warning(
                f"{name}{f' and {more} more' if more else ''} no longer hold their Sparse-vDiT processor "
                f"(replaced by {kind}, e.g. with set_attn_processor), so those layers ignore the map. "
                "Re-apply it with apply_sparse_vdit(pipe, map) after changing processors, or remove it with "
                "remove_sparse_vdit(pipe)."
            )


def live_hook(hook_id: int) -> SparseVDiTHook:
    """The hook a compiled graph names by id; a clear error once its map is gone."""
    hook = _LIVE_HOOKS.get(hook_id)
    if hook is None:
        raise RuntimeError(
            "this compiled or exported graph belongs to a Sparse-vDiT map that was removed or replaced (or made in "
            "another process); compile or export the transformer again after apply_sparse_vdit"
        )
    return hook


@torch.library.custom_op("diffusers_sparse_vdit::observe_call", mutates_args=())
def _observe_call(
    hook_id: int,
    hidden_states: torch.Tensor,
    timestep: torch.Tensor,
    call_inputs: list[torch.Tensor | None],  # the family's call_inputs, in order
) -> torch.Tensor:
    """The hook's observe at run time, for compiled and exported graphs; returns the ordering token."""
    hook = live_hook(hook_id)
    hook.observe(
        {"hidden_states": hidden_states, "timestep": timestep, **dict(zip(hook.family.call_inputs, call_inputs))}
    )
    return hidden_states.new_empty(0)


@_observe_call.register_fake
def _(hook_id, hidden_states, timestep, call_inputs):
    return hidden_states.new_empty(0)


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
