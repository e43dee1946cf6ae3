"""``apply_sparse_vdit`` / ``remove_sparse_vdit``: install a mode map on a transformer, and undo it.

Installing a map does two things, both undone by :func:`remove_sparse_vdit`:

1. every target attention module gets its own family processor (layer index, shared state);
   the other attention modules keep their processors;
2. a :class:`~.hook.SparseVDiTHook` in the transformer's ``HookRegistry`` records each call's
   latent grid and denoising step, and remembers the exact processor objects to restore.

A pipeline with two experts (``transformer`` and ``transformer_2``, Wan2.2 A14B) takes a map that
covers both (:attr:`SparseVDiTConfig.transformer_2`): each expert gets its own map, and their hooks
share one step clock, so step indices count the whole schedule. The work on one transformer is
:func:`.install.install`.
"""

from __future__ import annotations

from pathlib import Path

from ..config import SparseVDiTConfig
from ..logs import get_logger
from .base import SparseAttnProcessor
from .binding import SparseVDiTProcessor
from .hook import HOOK_NAME, StepClock, get_sparse_vdit_hook
from .install import family_of, install, load_config, transformer_of, validate
from .parallel import ulysses_degree

logger = get_logger(__name__)

__all__ = ["apply_sparse_vdit", "remove_sparse_vdit", "expert_targets"]


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
    transformer = transformer_of(pipe_or_transformer)
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
    transformer = transformer_of(pipe_or_transformer)
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
