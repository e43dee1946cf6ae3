import pytest
import torch

from diffusers_sparse_vdit import TokenLayout
from diffusers_sparse_vdit.layout import FRAME_MAJOR, TOKEN_MAJOR

LAYOUTS = [
    TokenLayout(3, 5, 7),
    TokenLayout(2, 4, 9, text_tokens=13, text_position="before"),
    TokenLayout(5, 3, 3, text_tokens=20, text_position="after"),
]


@pytest.mark.parametrize("layout", LAYOUTS, ids=str)
@pytest.mark.parametrize("order", [FRAME_MAJOR, TOKEN_MAJOR])
def test_row_map_visits_every_token_once_and_inverts_tile_of_token(layout, order):
    tile = 16
    rows = layout.row_map(order, tile)
    lengths = layout.tile_lengths(tile)
    valid = torch.cat([torch.arange(n) + i * tile for i, n in enumerate(lengths.tolist())])
    assert sorted(rows[valid].tolist()) == list(range(layout.num_tokens))
    tiles = layout.tile_of_token(order, tile)
    assert torch.equal(tiles[rows[valid]], valid // tile)


def test_token_major_order_puts_one_spatial_position_of_all_frames_together():
    layout = TokenLayout(frames=3, height=2, width=2)
    order = layout.video_order(TOKEN_MAJOR)
    # position q holds frame q % F of spatial index q // F, i.e. frame-major index f * P + s
    assert order.tolist() == [0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11]


def test_text_gets_its_own_tiles():
    layout = TokenLayout(2, 3, 5, text_tokens=10, text_position="before")
    assert layout.video_tiles(16) == 2 and layout.text_tiles(16) == 1
    assert layout.tile_lengths(16).tolist() == [16, 14, 10]
    rows = layout.row_map(FRAME_MAJOR, 16)
    assert rows[:30].tolist() == list(range(10, 40))  # video rows skip the text before them
    assert rows[32:42].tolist() == list(range(10))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(frames=0, height=2, width=2), "frames"),
        (dict(frames=2, height=2, width=2, text_tokens=5), "text_position"),
        (dict(frames=2, height=2, width=2, text_position="middle"), "text_position"),
        (dict(frames=2, height=2, width=2, text_tokens=-1, text_position="before"), "text_tokens"),
    ],
)
def test_bad_layouts(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TokenLayout(**kwargs)
