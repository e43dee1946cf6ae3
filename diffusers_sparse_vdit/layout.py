"""Where the tokens of one attention call are, and how the kernel tiles them.

Callers hand us the sequence in diffusers' order: video tokens frame-major ``(f, h, w)``
after patchify, with text tokens before them (CogVideoX), after them (HunyuanVideo) or
absent (Wan self-attention).

The kernel sees a different sequence, the *kernel order*: the video tokens first, cut into
tiles of ``tile_size`` rows (the last one partly filled), then the text tokens in tiles of
their own. Keeping text out of video tiles means a video band never drags text rows along,
and text rows can be scheduled as the dense rows they are. Heads in MULTI_DIAGONAL mode see
their video tokens in token-major ``(h, w, f)`` order, where the frame-stride diagonals
become one band. Both orders are index maps: nothing is copied.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

__all__ = ["TokenLayout", "FRAME_MAJOR", "TOKEN_MAJOR"]

FRAME_MAJOR = 0
TOKEN_MAJOR = 1

TextPosition = Literal["none", "before", "after"]


@dataclass(frozen=True)
class TokenLayout:
    """The token grid of one attention call: ``frames x height x width`` latent tokens plus text."""

    frames: int
    height: int
    width: int
    text_tokens: int = 0
    text_position: TextPosition = "none"

    def __post_init__(self):
        for name in ("frames", "height", "width"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"TokenLayout.{name} must be a positive int, got {value!r}")
        if self.text_position not in ("none", "before", "after"):
            raise ValueError(f"text_position must be 'none', 'before' or 'after', got {self.text_position!r}")
        if self.text_tokens < 0:
            raise ValueError(f"text_tokens must be >= 0, got {self.text_tokens}")
        if (self.text_tokens > 0) != (self.text_position != "none"):
            raise ValueError(
                "text_tokens > 0 needs text_position 'before' or 'after', and text_position 'none' needs text_tokens=0; "
                f"got text_tokens={self.text_tokens}, text_position={self.text_position!r}"
            )

    # Sizes ------------------------------------------------------------------------------
    @property
    def frame_tokens(self) -> int:
        """Tokens per latent frame (``P = height * width``)."""
        return self.height * self.width

    @property
    def video_tokens(self) -> int:
        return self.frames * self.frame_tokens

    @property
    def num_tokens(self) -> int:
        return self.video_tokens + self.text_tokens

    @property
    def video_start(self) -> int:
        """Index of the first video token in the caller's sequence."""
        return self.text_tokens if self.text_position == "before" else 0

    @property
    def text_start(self) -> int:
        """Index of the first text token in the caller's sequence."""
        return 0 if self.text_position == "before" else self.video_tokens

    def video_tiles(self, tile_size: int) -> int:
        return -(-self.video_tokens // tile_size)

    def text_tiles(self, tile_size: int) -> int:
        return -(-self.text_tokens // tile_size)

    def num_tiles(self, tile_size: int) -> int:
        return self.video_tiles(tile_size) + self.text_tiles(tile_size)

    def tile_lengths(self, tile_size: int) -> torch.Tensor:
        """Valid rows of each kernel tile (``tile_size`` except the last video and last text tile)."""
        lengths = []
        for count in (self.video_tokens, self.text_tokens):
            full, rest = divmod(count, tile_size)
            lengths += [tile_size] * full + ([rest] if rest else [])
        return torch.tensor(lengths, dtype=torch.int32)

    # Orders -----------------------------------------------------------------------------
    def video_order(self, order: int) -> torch.Tensor:
        """Frame-major video token index of each video position in the given kernel order."""
        n = self.video_tokens
        if order == FRAME_MAJOR:
            return torch.arange(n)
        # position q in token-major order holds spatial index q // F of frame q % F
        q = torch.arange(n)
        return (q % self.frames) * self.frame_tokens + q // self.frames

    def row_map(self, order: int, tile_size: int) -> torch.Tensor:
        """Caller token index of every kernel row (tiles padded to ``tile_size``; padding rows map to 0)."""
        nvt, ntt = self.video_tiles(tile_size), self.text_tiles(tile_size)
        rows = torch.zeros((nvt + ntt) * tile_size, dtype=torch.int64)
        rows[: self.video_tokens] = self.video_start + self.video_order(order)
        text_base = nvt * tile_size
        rows[text_base : text_base + self.text_tokens] = self.text_start + torch.arange(self.text_tokens)
        return rows

    def tile_of_token(self, order: int, tile_size: int) -> torch.Tensor:
        """Kernel tile of every caller token, shape ``(num_tokens,)``: the inverse of :meth:`row_map`."""
        nvt = self.video_tiles(tile_size)
        tiles = torch.empty(self.num_tokens, dtype=torch.int64)
        pos = torch.empty(self.video_tokens, dtype=torch.int64)
        pos[self.video_order(order)] = torch.arange(self.video_tokens)
        tiles[self.video_start : self.video_start + self.video_tokens] = pos // tile_size
        tiles[self.text_start : self.text_start + self.text_tokens] = nvt + torch.arange(self.text_tokens) // tile_size
        return tiles

    def __str__(self) -> str:
        text = f", {self.text_tokens} text {self.text_position}" if self.text_tokens else ""
        return f"{self.frames}x{self.height}x{self.width} tokens{text} (N={self.num_tokens})"
