"""The model card, the mode-map picture and the printed summary."""

import io
import logging
import sys

import pytest
from huggingface_hub import ModelCard

from diffusers_sparse_vdit import SparseVDiTConfig, TokenLayout, plot_mode_map
from diffusers_sparse_vdit.card import density_text

from .maps import make_config

WAN = dict(base_model="Wan-AI/Wan2.1-T2V-1.3B-Diffusers", target_modules=[f"blocks.{i}.attn1" for i in range(3)])
CALIBRATION = {
    "prompts": ["a red fox in the snow", "waves | at night"],
    "height": 480,
    "width": 832,
    "num_frames": 81,
    "num_inference_steps": 50,
    "scores": [[0.5, 0.25], [0.75, 0.5]],
    "target_speedup": 2.0,
}


@pytest.fixture
def no_matplotlib(monkeypatch):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")] + ["matplotlib"]:
        monkeypatch.setitem(sys.modules, name, None)  # makes `import matplotlib...` raise ImportError


# Card ---------------------------------------------------------------------------------------
def test_card_metadata_and_body():
    config = make_config(dense_warmup_steps=5, calibration=CALIBRATION, **WAN)
    card = config.generate_model_card(repo_id="user/wan-map")
    data = card.data
    assert data.library_name == "diffusers-sparse-vdit"
    assert data.base_model == "Wan-AI/Wan2.1-T2V-1.3B-Diffusers" and data.base_model_relation == "adapter"
    assert data.pipeline_tag == "text-to-video"
    assert {"sparse-attention", "video-generation", "sparse-vdit", "wan"} <= set(data.tags)

    text = card.text
    assert "from diffusers_sparse_vdit import SparseVDiTProcessor" in text
    assert 'pipe.transformer.set_attn_processor(SparseVDiTProcessor.from_pretrained("user/wan-map"))' in text
    assert 'DiffusionPipeline.from_pretrained("Wan-AI/Wan2.1-T2V-1.3B-Diffusers"' in text
    # the mode table: 3 of 15 heads each, with their knobs
    assert "| DIAGONAL | 3 | 20.0% | width 1 frame |" in text
    assert "| MULTI_DIAGONAL | 3 | 20.0% | width 0.5 frames |" in text
    assert "| VERTICAL_STRIPE | 3 | 20.0% | 4 stripes, 1 sink frame |" in text
    # density at the calibration layout (480x832, 81 frames -> 21x30x52 latent tokens)
    assert "21x30x52 tokens" in text
    assert density_text(config.density(TokenLayout(21, 30, 52))) in text
    assert "Dense warm-up: the first 5 denoising steps" in text
    # calibration: headline, summarised scores, prompts (pipes escaped for the table/list)
    assert "Search settings: 2 prompts, 480x832 pixels, 81 frames, 50 denoising steps." in text
    assert "| `scores` | 4 values: min 0.25, mean 0.5, max 0.75 |" in text
    assert "- waves \\| at night" in text
    assert "- diffusers-sparse-vdit 0.1.0" in text and "- torch " in text
    assert "arxiv.org/abs/2506.03065" in text


def test_card_without_base_model_or_layout():
    text = make_config().generate_model_card().text
    assert "Sparse-vDiT mode map for WanTransformer3DModel" in text
    assert '"<base model>"' in text and '"<this repo>"' in text
    assert "only the mode counts are given" in text and "Attention density" not in text
    assert "No calibration details were recorded" in text
    assert "base_model" not in ModelCard(text).data.to_dict()


def test_card_per_step_range():
    from diffusers_sparse_vdit import ModeSpec

    specs = [[[ModeSpec.full()] * 2] * 2, [[ModeSpec.skip()] * 2] * 2]
    config = SparseVDiTConfig.from_specs(
        specs,
        family="wan",
        target_modules=["b.0", "b.1"],
        step_ranges=[[0, 10], [10, -1]],
        calibration={"layout": {"frames": 2, "height": 8, "width": 8}},
    )
    text = config.generate_model_card().text
    assert "| steps 0 to 9 | 100.0% of dense attention FLOPs (1.00x fewer) |" in text
    assert "| steps 10 to the end | 0 (no attention computed) |" in text


def test_generated_card_is_rewritten_but_a_hand_written_one_is_kept(tmp_path):
    make_config().save_pretrained(tmp_path)
    make_config(base_model="a/b").save_pretrained(tmp_path)
    assert "Sparse-vDiT mode map for a/b" in (tmp_path / "README.md").read_text()  # not the stale first card
    (tmp_path / "README.md").write_text("# My notes\n")
    make_config().save_pretrained(tmp_path)
    assert (tmp_path / "README.md").read_text() == "# My notes\n"


# Picture ------------------------------------------------------------------------------------
def test_plot_is_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    from PIL import Image

    names = [f"transformer_blocks.{i}.attn" for i in range(2)] + [
        f"single_transformer_blocks.{i}.attn" for i in range(3)
    ]
    config = make_config(layers=5, heads=7, family="hunyuan_video", target_modules=names)
    png = plot_mode_map(config, tmp_path / "map.png")
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and (tmp_path / "map.png").read_bytes() == png
    image = Image.open(io.BytesIO(png)).convert("RGB")
    assert image.width > 200 and image.height > 150
    colours = {c for _, c in image.getcolors(maxcolors=1 << 20)}
    for hex_colour in ("#333333", "#0072b2", "#e69f00", "#009e73"):  # FULL, DIAGONAL, MULTI_DIAGONAL, VERTICAL_STRIPE
        assert tuple(int(hex_colour[i : i + 2], 16) for i in (1, 3, 5)) in colours
    with pytest.raises(ValueError, match="step_range must be in 0..0"):
        plot_mode_map(config, step_range=1)


def test_without_matplotlib(no_matplotlib, tmp_path, caplog):
    with pytest.raises(ImportError, match="pip install matplotlib"):
        plot_mode_map(make_config())
    with caplog.at_level(logging.WARNING):
        make_config().save_pretrained(tmp_path)  # the map is saved all the same, without its picture
    assert "pip install matplotlib" in caplog.text
    assert not (tmp_path / "mode_map.png").exists()
    assert "](mode_map.png)" not in (tmp_path / "README.md").read_text()
    assert SparseVDiTConfig.from_pretrained(tmp_path) == make_config()


# Summary ------------------------------------------------------------------------------------
def test_summary():
    names = [f"transformer_blocks.{i}.attn" for i in range(2)] + [
        f"single_transformer_blocks.{i}.attn" for i in range(3)
    ]
    config = make_config(
        layers=5,
        family="hunyuan_video",
        target_modules=names,
        dense_warmup_steps=2,
        calibration={"layout": {"frames": 3, "height": 8, "width": 8}},
    )
    lines = config.summary().splitlines()
    assert lines[0].startswith(
        "Sparse-vDiT mode map: HunyuanVideoTransformer3DModel (hunyuan_video), 5 layers x 5 heads"
    )
    assert lines[1] == "Dense warm-up: the first 2 denoising steps run dense attention"
    header, dual, single, total, share, density = lines[2:]
    assert header.split() == ["layers", "FULL", "SKIP", "DIAGONAL", "MULTI_DIAGONAL", "VERTICAL_STRIPE"]
    assert dual.split() == ["transformer_blocks.*.attn", "(2)", "2", "2", "2", "2", "2"]
    assert single.split() == ["single_transformer_blocks.*.attn", "(3)", "3", "3", "3", "3", "3"]
    assert total.split() == ["total", "(25", "heads)", "5", "5", "5", "5", "5"]
    assert share.split() == ["share", "20.0%", "20.0%", "20.0%", "20.0%", "20.0%"]
    assert density.startswith("attention density at 3x8x8 tokens") and "% of dense attention FLOPs" in density
