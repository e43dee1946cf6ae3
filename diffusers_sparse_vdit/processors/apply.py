"""``apply_sparse_vdit`` / ``remove_sparse_vdit``: install a mode map on a transformer, and undo it.

Installing a map does two things, both undone by :func:`remove_sparse_vdit`:

1. every target attention module gets its own family processor (layer index, shared state);
   the other attention modules keep their processors;
2. a :class:`~.hook.SparseVDiTHook` in the transformer's ``HookRegistry`` records each call's
   latent grid and denoising step, and remembers the exact processor objects to restore.

A pipeline with two experts (``transformer`` and ``transformer_2``, Wan2.2 A14B) takes a map that
covers both (:attr:`SparseVDiTConfig.transformer_2`): each expert gets its own map, and their hooks
share one step clock, so step indices count the whole schedule.
"""

from __future__ import annotations

import functools
from pathlib import Path

from diffusers.hooks import HookRegistry

from ..config import FAMILIES, SparseVDiTConfig
from ..kernels.attention import BACKENDS
from ..logs import get_logger
from .base import Family, SparseAttnProcessor
from .cogvideox import COGVIDEOX
from .hook import HOOK_NAME, SparseVDiTHook, StepClock, get_sparse_vdit_hook
from .hunyuan_video import HUNYUAN_VIDEO
from .hunyuan_video15 import HUNYUAN_VIDEO15
from .parallel import check_parallel_config, ulysses_degree
from .wan import WAN

logger = get_logger(__name__)

__all__ = [
    "apply_sparse_vdit",
    "remove_sparse_vdit",
    "family_of",
    "sparse_targets",
    "load_config",
    "architecture",
    "model_id",
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


def apply_sparse_vdit(
    pipe_or_transformer,
    config_or_repo_or_processor,
    *,
    backend: str = "auto",
    processor_cls: type[SparseAttnProcessor] | None = None,
    balance_heads: bool = True,
    precision: str | None = None,
) -> None:
    """Make a transformer's target attention layers sparse with a Sparse-vDiT mode map.

    Args:
        pipe_or_transformer: a pipeline (its ``transformer``, and ``transformer_2`` when the map
            covers two experts) or a Wan, HunyuanVideo or CogVideoX transformer.
        config_or_repo_or_processor: a :class:`SparseVDiTConfig`, a Hub repo id or local folder
            holding one, or a :class:`SparseVDiTProcessor` (its map and backend are used).
        backend: ``"auto"`` (our Gluon kernel on Hopper GPUs, Triton on other CUDA GPUs, the PyTorch
            reference elsewhere; all-FULL layers and dense warm-up steps use the stock attention),
            ``"gluon"``, ``"triton"``, ``"torch"`` or ``"flex"``.
        processor_cls: a subclass of the family processor to install instead (for code that
            overrides a step, e.g. ``attend``).
        balance_heads: under Ulysses context parallelism, permute each layer's heads so that every rank's
            share of the attention work is about even (exact; see :mod:`.parallel` and docs/parallel.md).
        precision: None (default) runs each head in the precision the map gives it; ``"native"`` or
            ``"fp8"`` sets every head of the map (both experts') to it (:meth:`SparseVDiTConfig.with_precision`).
            FP8 heads compute Q, K, P and V in float8 e4m3: fast on Hopper GPUs, an exact simulation
            of the same rounding elsewhere (to measure quality, not for speed).

    Applying again replaces the previous map; :func:`remove_sparse_vdit` restores the processors
    from before the first one.

    Example::

        pipe = WanPipeline.from_pretrained("Wan-AI/Wan2.1-T2V-1.3B-Diffusers", torch_dtype=torch.bfloat16).to("cuda")
        apply_sparse_vdit(pipe, "someone/wan21-1.3b-sparse-vdit")
        video = pipe(prompt, num_frames=81, height=480, width=832).frames[0]
        remove_sparse_vdit(pipe)
    """
    from .binding import SparseVDiTProcessor  # deferred: binding imports this module

    source = config_or_repo_or_processor
    if isinstance(source, SparseVDiTProcessor):
        source.disarm()  # bound here and now, not at the transformer's first forward
        config = source.config
        if backend == "auto":
            backend = source.backend
    elif isinstance(source, SparseVDiTConfig):
        config = source
    elif isinstance(source, (str, Path)):
        config = load_config(source)
    else:
        raise TypeError(
            "apply_sparse_vdit takes a SparseVDiTConfig, a Hub repo id or local folder, or a SparseVDiTProcessor; "
            f"got {type(source).__name__}"
        )
    if precision is not None:
        config = config.with_precision(precision)
    experts = expert_targets(pipe_or_transformer, config)
    clock = StepClock()  # one step count for both experts
    if len(experts) > 1:  # check both before installing either, so a refused map changes nothing
        for name, (transformer, expert_config) in experts.items():
            try:
                validate(family_of(transformer), expert_config, transformer)
            except ValueError as e:
                raise ValueError(f"pipe.{name}: {e}") from None
    for transformer, expert_config in experts.values():
        install(transformer, expert_config, backend=backend, processor_cls=processor_cls,
                balance_heads=balance_heads, clock=clock)


def expert_targets(pipe_or_transformer, config: SparseVDiTConfig) -> dict[str, tuple]:
    """``{component name: (transformer, its map)}`` for a map applied to a pipeline or a transformer.

    A map of two experts goes to a pipeline with ``transformer_2``; a one-transformer map to
    ``pipe.transformer`` (with a warning when the pipeline has a second one).
    """
    transformer = _transformer_of(pipe_or_transformer)
    second = getattr(pipe_or_transformer, "transformer_2", None) if transformer is not pipe_or_transformer else None
    if config.transformer_2 is None:
        if second is not None:
            logger.warning(
                "this pipeline has a second transformer (transformer_2) but the map covers one; it goes to "
                "pipe.transformer only. Run `sparse-vdit search` on the pipeline for a map of both experts."
            )
        return {"transformer": (transformer, config)}
    if second is None:
        where = "a transformer" if transformer is pipe_or_transformer else "a pipeline without transformer_2"
        raise ValueError(
            f"this Sparse-vDiT map covers two experts (transformer and transformer_2), but it was applied to {where}: "
            "apply it to the pipeline (apply_sparse_vdit(pipe, map)), or apply map.transformer_2 to the second "
            "expert yourself"
        )
    return {"transformer": (transformer, config), "transformer_2": (second, config.transformer_2)}


def remove_sparse_vdit(pipe_or_transformer) -> None:
    """Undo :func:`apply_sparse_vdit`: restore the exact processor objects from before and remove the hook(s)."""
    transformer = _transformer_of(pipe_or_transformer)
    transformers = [transformer]
    if transformer is not pipe_or_transformer and getattr(pipe_or_transformer, "transformer_2", None) is not None:
        transformers.append(pipe_or_transformer.transformer_2)
    hooks = [(t, get_sparse_vdit_hook(t)) for t in transformers]
    if all(hook is None for _, hook in hooks):
        logger.warning(f"remove_sparse_vdit: no Sparse-vDiT map is applied to this {type(transformer).__name__}")
        return
    for t, hook in hooks:
        if hook is None:
            continue
        t.set_attn_processor(dict(hook.original_processors))  # set_attn_processor pops from its dict
        _keep_parallelism(t)
        t._diffusers_hook.remove_hook(HOOK_NAME, recurse=False)
        logger.info(f"removed the Sparse-vDiT map from {type(t).__name__}")


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
    from .binding import SparseVDiTProcessor  # deferred: binding imports this module

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

    # A placeholder SparseVDiTProcessor left on a module stands for that module's stock processor.
    def settled(key, processor):
        if isinstance(processor, SparseVDiTProcessor):
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
        _warn_once(
            f"this Sparse-vDiT map was calibrated on {config.base_model}, but the transformer was loaded from {name}; "
            "a map chosen for other weights may cost more quality than measured"
        )
    return targets


def _keep_parallelism(transformer) -> None:
    """After removal under context parallelism: the restored stock processors take the transformer's config."""
    parallel_config = getattr(transformer, "_parallel_config", None)
    if ulysses_degree(parallel_config) == 1:
        return
    for processor in transformer.attn_processors.values():
        if hasattr(processor, "_parallel_config"):
            processor._parallel_config = parallel_config
    if family_of(transformer).name != "wan":
        logger.warning(
            f"{type(transformer).__name__} still has context parallelism enabled with the Sparse-vDiT plan, which keeps "
            "the text whole on every rank: its stock attention processors give wrong results under it. Apply a map "
            "again (an all-FULL one runs dense), or load the transformer again without enable_parallelism()."
        )


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


@functools.cache
def _warn_once(message: str) -> None:
    logger.warning(message)


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


def _transformer_of(pipe_or_transformer):
    transformer = getattr(pipe_or_transformer, "transformer", pipe_or_transformer)
    if transformer is None or not hasattr(transformer, "set_attn_processor"):
        raise TypeError(
            "expected a diffusers pipeline with a transformer, or a transformer; "
            f"got {type(pipe_or_transformer).__name__}"
        )
    return transformer


def _span(names: list[str]) -> str:
    return names[0] if len(names) == 1 else f"{names[0]} ... {names[-1]}" if names else "none"
