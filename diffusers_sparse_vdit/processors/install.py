"""What installing a mode map on one transformer takes: the family of a transformer, the checks that a
map was made for it, and :func:`install`, the work behind both routes (:func:`~.apply.apply_sparse_vdit`
and :class:`~.binding.SparseVDiTProcessor`, which both build on this module).
"""

from __future__ import annotations

import logging
from pathlib import Path

from diffusers.hooks import HookRegistry

from ..config import FAMILIES, SparseVDiTConfig
from ..kernels.attention import BACKENDS
from ..logs import get_logger, log_once
from .base import Family, SparseAttnProcessor
from .cogvideox import COGVIDEOX
from .hook import HOOK_NAME, SparseVDiTHook, StepClock, get_sparse_vdit_hook
from .hunyuan_video import HUNYUAN_VIDEO
from .hunyuan_video15 import HUNYUAN_VIDEO15
from .parallel import CP_PLANS, check_parallel_config, ulysses_degree
from .wan import WAN

logger = get_logger(__name__)

__all__ = [
    "install",
    "validate",
    "family_of",
    "sparse_targets",
    "load_config",
    "transformer_of",
    "context_parallel_plan",
    "architecture",
    "model_id",
    "PendingMap",
    "FAMILY_REGISTRY",
]

FAMILY_REGISTRY: dict[str, Family] = {f.name: f for f in (WAN, HUNYUAN_VIDEO, COGVIDEOX, HUNYUAN_VIDEO15)}

# Entries of a transformer's config that fix the shape of its attention. The search records them in
# the map (calibration["transformer_config"]): CogVideoX and CogVideoX1.5 share the class, the layer
# and the head counts, and differ only in patch_size_t.
ARCHITECTURE_KEYS = (
    "num_layers",
    "num_single_layers",
    "num_attention_heads",
    "attention_head_dim",
    "patch_size",
    "patch_size_t",
)


class PendingMap:
    """Base of attention processors that carry a map not installed yet (:class:`~.binding.SparseVDiTProcessor`).

    :func:`install` takes one left on a module for that module's stock processor.
    """


def install(
    transformer,
    config: SparseVDiTConfig,
    *,
    backend: str = "auto",
    processor_cls=None,
    balance_heads: bool = True,
    clock: StepClock | None = None,
) -> SparseVDiTHook:
    """Validate ``config`` against ``transformer`` and install it (the work behind both routes).

    ``clock``: the step counter, shared by the experts of one pipeline (default: the hook's own)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {BACKENDS}")
    family = family_of(transformer)
    targets = validate(family, config, transformer)
    cls = processor_cls or family.processor_cls
    if not (isinstance(cls, type) and issubclass(cls, family.processor_cls)):
        raise TypeError(f"processor_cls must subclass {family.processor_cls.__name__} for a {family.name} model")

    # enable_parallelism() before the map: the processors take its config (after it, it sets theirs)
    parallel_config = getattr(transformer, "_parallel_config", None)
    check_parallel_config(parallel_config, f"apply_sparse_vdit on {type(transformer).__name__}")
    current = transformer.attn_processors

    # A placeholder left on a module (PendingMap) stands for that module's stock processor.
    def settled(key, processor):
        if isinstance(processor, PendingMap):
            return family.stock_processor(key.removesuffix(".processor"))
        return processor

    previous = get_sparse_vdit_hook(transformer)
    if previous is not None:
        originals = previous.original_processors
        transformer._diffusers_hook.remove_hook(HOOK_NAME, recurse=False)
        logger.info(f"replacing the Sparse-vDiT map already applied to {type(transformer).__name__}")
    else:
        originals = {key: settled(key, p) for key, p in current.items()}

    hook = SparseVDiTHook(family, config, backend, originals, clock)
    hook.state.balance_heads = balance_heads
    layer_of = {name: i for i, name in enumerate(targets)}
    processors = {}
    for key, processor in current.items():
        name = key.removesuffix(".processor")
        if name in layer_of:
            sparse = cls(config, layer_of[name], hook.state, backend=backend)
            # keep a backend chosen with set_attention_backend() for the dense path
            sparse._attention_backend = getattr(processor, "_attention_backend", None)
            sparse._parallel_config = parallel_config if ulysses_degree(parallel_config) > 1 else None
            processors[key] = sparse
        else:
            processors[key] = settled(key, processor)
    hook.processors = [p for p in processors.values() if isinstance(p, SparseAttnProcessor)]
    modules = dict(transformer.named_modules())
    hook.modules = [modules[name] for name in targets]
    transformer.set_attn_processor(processors)
    HookRegistry.check_if_exists_or_initialize(transformer).register_hook(hook, HOOK_NAME)
    counts = ", ".join(f"{k} {v}" for k, v in config.mode_counts().items() if v)
    logger.info(
        f"Sparse-vDiT map applied to {len(targets)} attention layers of {type(transformer).__name__} "
        f"({config.num_ranges} step range(s); heads: {counts}; backend {backend!r})"
    )
    return hook


def validate(family: Family, config: SparseVDiTConfig, transformer) -> list[str]:
    """Check that a map was made for this model; returns the model's target modules."""
    model = type(transformer).__name__
    made_for = f"{config.transformer_class} (family {config.family!r})"
    fix = "load the map made for this checkpoint, or run `sparse-vdit search` on it to make one"
    if config.family != family.name or config.transformer_class != model:
        raise ValueError(
            f"this Sparse-vDiT map was made for {made_for}, but the model is {model} (family {family.name!r}): {fix}"
        )
    targets = family.target_modules(transformer)
    if len(targets) != config.num_layers:
        raise ValueError(
            f"this Sparse-vDiT map covers {config.num_layers} attention layers "
            f"({_span(config.target_modules)}), but this {model} has {len(targets)} ({_span(targets)}); "
            f"the map was made for another model size: {fix}"
        )
    for i, (ours, theirs) in enumerate(zip(config.target_modules, targets, strict=True)):
        if ours != theirs:
            raise ValueError(
                f"this Sparse-vDiT map's layer {i} is {ours!r}, but this {model}'s is {theirs!r}: "
                f"the map was made for another architecture: {fix}"
            )
    modules = dict(transformer.named_modules())
    heads = {modules[name].heads for name in targets}
    if heads != {config.num_heads}:
        raise ValueError(
            f"this Sparse-vDiT map has {config.num_heads} heads per layer, but this {model}'s attention layers have "
            f"{'/'.join(map(str, sorted(heads)))}: the map was made for another model size: {fix}"
        )
    recorded = config.calibration.get("transformer_config", {})
    actual = architecture(transformer)
    differ = [key for key in recorded if key in actual and recorded[key] != actual[key]]
    if differ:
        raise ValueError(
            f"this Sparse-vDiT map was made for a {model} with "
            + ", ".join(f"{key}={recorded[key]!r}" for key in differ)
            + ", but this one has "
            + ", ".join(f"{key}={actual[key]!r}" for key in differ)
            + f" (e.g. a CogVideoX map on CogVideoX1.5): {fix}"
        )
    name = model_id(transformer)
    if config.base_model and name and config.base_model.casefold() != name.casefold():
        log_once(
            __name__, logging.WARNING,
            f"this Sparse-vDiT map was calibrated on {config.base_model}, but the transformer was loaded from {name}; "
            "a map chosen for other weights may cost more quality than measured"
        )
    return targets


def architecture(transformer) -> dict:
    """The entries of ``transformer.config`` (:data:`ARCHITECTURE_KEYS`) a map is only valid for, as JSON values."""
    config = transformer.config
    entries = {key: config[key] for key in ARCHITECTURE_KEYS if key in config}
    return {key: list(value) if isinstance(value, tuple) else value for key, value in entries.items()}


def model_id(pipe_or_transformer) -> str | None:
    """The Hub repo id a pipeline or transformer was loaded from, if known (also from a folder of the HF cache)."""
    for obj in (pipe_or_transformer, getattr(pipe_or_transformer, "transformer", None)):
        name = getattr(getattr(obj, "config", None), "_name_or_path", None)
        if not name:
            continue
        if not Path(name).is_dir():
            return name
        # the HF cache keeps a repo's files under models--{org}--{name}/snapshots/{commit}/
        cached = [part for part in Path(name).parts if part.startswith("models--")]
        if cached:
            return cached[-1].removeprefix("models--").replace("--", "/", 1)
    return None


def family_of(transformer) -> Family:
    """The :class:`~.base.Family` of a transformer (by class), or a ValueError naming the supported ones."""
    name = type(transformer).__name__
    for family_name, classes in FAMILIES.items():
        if name in classes:
            return FAMILY_REGISTRY[family_name]
    supported = ", ".join(c for classes in FAMILIES.values() for c in classes)
    raise ValueError(f"Sparse-vDiT supports {supported}; got {name}")


def sparse_targets(transformer) -> list[str]:
    """Names of the attention modules a mode map for this transformer covers, in layer order."""
    return family_of(transformer).target_modules(transformer)


def load_config(pretrained_model_name_or_path, **hub_kwargs) -> SparseVDiTConfig:
    """Load a mode map from a Hub repo id or a local folder."""
    return SparseVDiTConfig.from_pretrained(pretrained_model_name_or_path, **hub_kwargs)


def transformer_of(pipe_or_transformer):
    """The transformer of a pipeline (``pipe.transformer``), or the transformer itself."""
    transformer = getattr(pipe_or_transformer, "transformer", pipe_or_transformer)
    if transformer is None or not hasattr(transformer, "set_attn_processor"):
        raise TypeError(
            "expected a diffusers pipeline with a transformer, or a transformer; "
            f"got {type(pipe_or_transformer).__name__}"
        )
    return transformer


def _span(names: list[str]) -> str:
    return names[0] if len(names) == 1 else f"{names[0]} ... {names[-1]}" if names else "none"


def context_parallel_plan(pipe_or_transformer) -> dict:
    """The ``cp_plan`` for ``transformer.enable_parallelism`` under a Sparse-vDiT map (any of the three families).

    Wan: the model's own ``_cp_plan``. CogVideoX and HunyuanVideo have none in diffusers 0.42;
    ours splits the video tokens and keeps the text whole on every rank (module docstring).

    Example::

        transformer.enable_parallelism(
            config=ContextParallelConfig(ulysses_degree=world_size), cp_plan=context_parallel_plan(transformer)
        )
    """
    transformer = transformer_of(pipe_or_transformer)
    family = family_of(transformer)
    if family.name == "hunyuan_video" and transformer.config.get("image_condition_type") == "token_replace":
        raise ValueError(
            "HunyuanVideo image-to-video with token_replace conditioning treats the first frame's tokens apart, "
            "which a split sequence cannot do; run it without context parallelism"
        )
    plan = CP_PLANS.get(family.name, type(transformer)._cp_plan)
    if plan is None:
        raise ValueError(f"{type(transformer).__name__} has no context-parallel plan")
    return plan
