import pytest

from diffusers_sparse_vdit import Mode, ModeSpec


def test_parse_names_and_ids():
    assert Mode.parse("diagonal") is Mode.DIAGONAL
    assert Mode.parse(4) is Mode.VERTICAL_STRIPE
    assert Mode.parse(Mode.SKIP) is Mode.SKIP
    with pytest.raises(ValueError, match="unknown mode"):
        Mode.parse("banded")
    with pytest.raises(ValueError, match="unknown mode id"):
        Mode.parse(7)


def test_specs_are_hashable_and_normalised():
    a = ModeSpec.vertical_stripe((0.5, 0.25, 0.5))
    b = ModeSpec(Mode.VERTICAL_STRIPE, stripes=(0.25, 0.5))
    assert a == b and hash(a) == hash(b)
    assert ModeSpec.vertical_stripe(4).stripes == (0.125, 0.375, 0.625, 0.875)
    assert ModeSpec.multi_diagonal(1).reordered and not ModeSpec.diagonal(1).reordered


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(mode=Mode.DIAGONAL, width=-1), "band width"),
        (dict(mode=Mode.DIAGONAL, width=float("nan")), "band width"),
        (dict(mode=Mode.FULL, width=1), "takes no band width"),
        (dict(mode=Mode.VERTICAL_STRIPE, stripes=(1.0,)), r"\[0, 1\)"),
        (dict(mode=Mode.DIAGONAL, stripes=(0.5,)), "takes no stripes"),
        (dict(mode=Mode.VERTICAL_STRIPE, sink_frames=-1), "sink_frames"),
    ],
)
def test_bad_specs_say_what_is_wrong(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ModeSpec(**kwargs)
