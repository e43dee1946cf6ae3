"""The committed reference pipelines load with their own diffusers classes and say what they are."""

import json

import pytest

from diffusers_sparse_vdit.reference import REFERENCE_FILE, REFERENCE_ROOT, load_reference, reference_path
from diffusers_sparse_vdit.reference.families import FAMILIES, RECIPES


@pytest.mark.parametrize("family", FAMILIES)
def test_reference_pipeline_loads_with_its_class(family):
    import diffusers

    folder = REFERENCE_ROOT / family
    size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    assert size <= 15e6, f"{family}: {size / 1e6:.1f} MB"
    pipe = getattr(diffusers, RECIPES[family].pipeline_class).from_pretrained(folder)
    info = json.loads((folder / REFERENCE_FILE).read_text())
    assert info["family"] == family and info["heldout_prompts"] and info["calibration_prompts"]
    assert pipe.transformer.config.num_attention_heads * pipe.transformer.config.attention_head_dim >= 192
    assert (folder / "README.md").read_text().startswith("---")


def test_a_mistyped_reference_names_the_known_ones():
    with pytest.raises(FileNotFoundError, match="known: .*wan"):
        reference_path("wann")
    pipe, info = load_reference("wan")
    assert type(pipe).__name__ == "WanPipeline" and info["tile_size"] == 64
