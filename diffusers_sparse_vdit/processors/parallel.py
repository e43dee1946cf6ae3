"""Sparse maps under diffusers' context parallelism (Ulysses): each rank runs its slice of the heads.

``transformer.enable_parallelism(config=ContextParallelConfig(ulysses_degree=W), cp_plan=...)``
splits the video tokens over ``W`` ranks. In every target attention layer diffusers'
Ulysses all-to-all (``TemplatedUlyssesAttention``, unchanged) hands rank ``r`` the ``r``-th
contiguous slice of ``H / W`` heads over the whole sequence, and our processor attends those
heads with the map's modes for them, then the all-to-all sends the result back.

Text. CogVideoX puts text before the video, HunyuanVideo after it, and both attend it jointly
with the video. Text is short (226 / 256 tokens, not always a multiple of ``W``) and every
token of it is attended by every video token, so :func:`~.install.context_parallel_plan` splits only
the video and every rank keeps the whole text. The gathered sequence then holds one copy
of the text per rank; the processor attends the canonical sequence (all video, one text, in the
model's order) and hands every rank's copy the text rows' result. A stock processor would
weight the repeated text keys ``W`` times, so this plan is for Sparse-vDiT maps only (Wan
uses diffusers' own ``_cp_plan``: its self-attention has no text).

Head balance (:mod:`..balance`): with ``balance_heads=True`` (the default of
:func:`~.apply.apply_sparse_vdit`) a layer's heads are permuted before the all-to-all so that
every rank's slice costs about the same, and the permutation is undone after it.

Ring attention (``ring_degree > 1``) and "Ulysses anything" are refused: see
:func:`check_parallel_config`.
"""

from __future__ import annotations

import functools

import torch
from diffusers.models._modeling_parallel import ContextParallelInput, ContextParallelOutput
from diffusers.models.attention_dispatch import TemplatedUlyssesAttention

from ..balance import balanced_head_order, rank_shares
from ..layout import TokenLayout
from ..logs import get_logger
from ..modes import Mode
from ..plan import SparsePlan, build_plan

logger = get_logger(__name__)

__all__ = [
    "check_parallel_config",
    "ulysses_attention",
    "ulysses_degree",
    "COGVIDEOX_CP_PLAN",
    "HUNYUAN_VIDEO_CP_PLAN",
]

_ROPE_SPLIT = (
    ContextParallelInput(split_dim=0, expected_dims=2, split_output=True),
    ContextParallelInput(split_dim=0, expected_dims=2, split_output=True),
)

# CogVideoX: the pipeline passes the video RoPE (cos, sin), each (video tokens, head_dim); the
# blocks get video and text apart, and only the video is split. norm_final, norm_out and
# proj_out act per token, so the video is gathered after proj_out.
COGVIDEOX_CP_PLAN = {
    "": {"image_rotary_emb": tuple(ContextParallelInput(split_dim=0, expected_dims=2) for _ in range(2))},
    "transformer_blocks.0": {"hidden_states": ContextParallelInput(split_dim=1, expected_dims=3)},
    "proj_out": ContextParallelOutput(gather_dim=1, expected_dims=3),
}

# HunyuanVideo: the RoPE module's (cos, sin) outputs and the first dual-stream block's video are
# split; the text (after the token refiner) and the key-padding mask the transformer builds for the
# whole sequence stay whole. Single-stream blocks join video and text per rank, per token.
HUNYUAN_VIDEO_CP_PLAN = {
    "rope": dict(enumerate(_ROPE_SPLIT)),
    "transformer_blocks.0": {"hidden_states": ContextParallelInput(split_dim=1, expected_dims=3)},
    "proj_out": ContextParallelOutput(gather_dim=1, expected_dims=3),
}

CP_PLANS = {"cogvideox": COGVIDEOX_CP_PLAN, "hunyuan_video": HUNYUAN_VIDEO_CP_PLAN}


def check_parallel_config(parallel_config, where: str) -> None:
    """Refuse the parallel layouts a sparse map cannot run under (ring, hybrid, Ulysses anything, tensor parallel)."""
    if parallel_config is None:
        return
    if getattr(parallel_config, "tensor_parallel_config", None) is not None:
        raise ValueError(
            f"{where}: Sparse-vDiT does not support tensor parallelism (the map's heads would not match the rank's); "
            "use context parallelism with Ulysses: ContextParallelConfig(ulysses_degree=N)"
        )
    cp = parallel_config.context_parallel_config
    if cp is None:
        return
    if cp.ring_degree > 1:
        raise ValueError(
            f"{where}: Sparse-vDiT supports Ulysses context parallelism only, not ring attention "
            f"(ring_degree={cp.ring_degree}): use ContextParallelConfig(ulysses_degree=N) with ring_degree 1"
        )
    if cp.ulysses_anything:
        raise ValueError(
            f"{where}: Sparse-vDiT does not support ulysses_anything (padded heads and uneven token splits); "
            "use a ulysses_degree that divides the head count and the video tokens, with ulysses_anything=False"
        )


class _JointOrder:
    """Where the canonical sequence's tokens sit in the sequence Ulysses gathered, and back.

    Each rank holds ``video`` tokens of the video and the whole text (``text`` tokens, before or
    after its video); the gathered sequence is the ranks' sequences one after another.
    ``gather`` picks the canonical sequence (all video, then or after one copy of the text) from
    the gathered one; ``scatter`` gives every gathered position its canonical row, text copies included.
    """

    def __init__(self, video: int, text: int, position: str, world: int):
        local = video + text
        video_at = text if position == "before" else 0
        text_at = 0 if position == "before" else video
        rank_start = torch.arange(world)[:, None] * local
        gathered_video = (rank_start + video_at + torch.arange(video)).flatten()
        gathered_text = text_at + torch.arange(text)  # rank 0's copy
        canonical_video = torch.arange(world * video) + (text if position == "before" else 0)
        canonical_text = torch.arange(text) + (0 if position == "before" else world * video)
        parts = (gathered_text, gathered_video) if position == "before" else (gathered_video, gathered_text)
        self.gather = torch.cat(parts)
        scatter = torch.empty(world * local, dtype=torch.long)
        scatter[gathered_video] = canonical_video
        for rank in range(world):
            scatter[rank * local + text_at + torch.arange(text)] = canonical_text
        self.scatter = scatter
        self._device: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if device not in self._device:
            self._device[device] = (self.gather.to(device), self.scatter.to(device))
        return self._device[device]


@functools.lru_cache(maxsize=64)
def _joint_order(video: int, text: int, position: str, world: int) -> _JointOrder:
    return _JointOrder(video, text, position, world)


@functools.lru_cache(maxsize=4096)
def _order_tensors(order: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    forward = torch.tensor(order, dtype=torch.long)
    return forward, torch.argsort(forward)


def ulysses_attention(processor, call) -> torch.Tensor:
    """One target layer's attention under Ulysses: ``call``'s local q, k, v -> the local ``(B, H, n, D)`` output.

    The all-to-all exchanges are diffusers' ``TemplatedUlyssesAttention``; what runs between them
    is the processor's own ``attend`` on this rank's heads over the whole (canonical) sequence.
    """
    if torch.compiler.is_compiling():
        raise NotImplementedError(
            "Sparse-vDiT under context parallelism runs eagerly: compile the transformer without "
            "enable_parallelism(), or run it uncompiled"
        )
    parallel_config = processor._parallel_config
    check_parallel_config(parallel_config, f"{processor.module_name}")
    cp = parallel_config.context_parallel_config
    world, rank = cp.ulysses_degree, cp._ulysses_local_rank
    batch, heads, local_tokens, _ = call.query.shape
    if heads % world:
        raise ValueError(
            f"{processor.module_name}: ulysses_degree {world} does not divide the layer's {heads} heads; "
            "choose a ulysses_degree that divides the head count"
        )
    text = call.text_tokens
    video = local_tokens - text
    layout = processor.state.layout
    if layout is not None and (layout.video_tokens != world * video or layout.text_tokens != text):
        raise RuntimeError(
            f"{processor.module_name}: under Ulysses degree {world} each rank should hold 1/{world} of the "
            f"{layout.video_tokens} video tokens and all {layout.text_tokens} text tokens, but this rank holds "
            f"{video} video and {text} text tokens. Enable parallelism with "
            "cp_plan=diffusers_sparse_vdit.context_parallel_plan(transformer)."
        )
    plan = processor.state.plans.get(processor.layer) if layout is not None else None
    order = None
    if plan is not None:
        if processor.state.balance_heads:
            order = balanced_head_order(plan.specs, layout, plan.tile_size, world)
        _log_shares_once(processor, layout, world)
    rank_heads = (order or tuple(range(heads)))[rank * (heads // world) : (rank + 1) * (heads // world)]
    rank_plan = None if plan is None else _rank_plan(processor, plan, rank_heads)
    joint = _joint_order(video, text, processor.text_position, world) if text else None
    text_lengths = processor.state.text_lengths if call.attention_mask is not None else None

    def forward_op(ctx, query, key, value, *args, **kwargs):
        # (B, S, H / W, D): this rank's heads over the ranks' sequences one after another
        if joint is not None:
            gather, scatter = joint.on(query.device)
            query, key, value = (x.index_select(1, gather) for x in (query, key, value))
        out = processor.attend(
            query.transpose(1, 2),
            key.transpose(1, 2),
            value.transpose(1, 2),
            rank_plan,
            layout=layout,
            text_lengths=text_lengths,
            attention_mask=call.attention_mask,
        ).transpose(1, 2)
        return out.index_select(1, scatter) if joint is not None else out

    query, key, value = (x.transpose(1, 2) for x in (call.query, call.key, call.value))  # (B, n, H, D)
    if order is not None:
        forward, inverse = (t.to(query.device) for t in _order_tensors(order))
        query, key, value = (x.index_select(2, forward) for x in (query, key, value))
    out = TemplatedUlyssesAttention.apply(
        query, key, value, None, 0.0, False, None, False, False, forward_op, _no_backward, parallel_config
    )
    if order is not None:
        out = out.index_select(2, inverse)
    return out.transpose(1, 2)


def _rank_plan(processor, plan: SparsePlan, heads: tuple[int, ...]) -> SparsePlan | None:
    """The plan of this rank's heads; None (the stock dense call) when they are all FULL, as for a whole layer."""
    specs, precision = tuple(plan.specs[h] for h in heads), tuple(plan.precision[h] for h in heads)
    if processor.backend == "auto" and all(s.mode is Mode.FULL and p == "native" for s, p in zip(specs, precision)):
        return None
    return build_plan(specs, plan.layout, plan.tile_size, precision=precision)


def ulysses_degree(parallel_config) -> int:
    """Ranks a layer's heads are split over (1 without context parallelism)."""
    cp = getattr(parallel_config, "context_parallel_config", None)
    return 1 if cp is None else cp.ulysses_degree


def _no_backward(ctx, grad_out, *args, **kwargs):
    raise NotImplementedError("Sparse-vDiT under context parallelism is for inference: it has no backward pass")


def _log_shares_once(processor, layout: TokenLayout, world: int) -> None:
    state = processor.state
    key = (state.phase, layout, world)
    if key in state.logged_shares:
        return
    state.logged_shares.add(key)
    shares = rank_shares(processor.config, layout, world, step=state.step, balance=state.balance_heads)
    message = f"Sparse-vDiT under Ulysses degree {world} at {layout}, step range {state.phase}: attention work per rank {shares}"
    if state.balance_heads:
        message += f"; in model order: {rank_shares(processor.config, layout, world, step=state.step, balance=False)}"
    logger.info(message)
