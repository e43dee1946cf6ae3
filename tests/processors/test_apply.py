"""apply_sparse_vdit / remove_sparse_vdit: exact restoration, loading, and maps made for another model."""

import logging

import pytest
import torch
from diffusers import WanTransformer3DModel

from diffusers_sparse_vdit.config import SparseVDiTConfig
from diffusers_sparse_vdit.processors import (
    SparseVDiTProcessor,
    WanSparseAttnProcessor,
    apply_sparse_vdit,
    get_sparse_vdit_hook,
    remove_sparse_vdit,
)
from diffusers_sparse_vdit.processors.install import architecture, model_id
from diffusers_sparse_vdit.testing import tiny_transformer, tiny_transformer_inputs

from .common import ALL_FULL, forward, mode_map, twins


def test_remove_restores_the_exact_processors_and_output():
    transformer = tiny_transformer("hunyuan_video")
    inputs = tiny_transformer_inputs(transformer, batch_size=2, text_lengths=[7, 5])
    before = transformer.attn_processors
    stock = forward(transformer, inputs)

    apply_sparse_vdit(transformer, mode_map(transformer), backend="torch")
    assert not torch.allclose(forward(transformer, inputs), stock)
    apply_sparse_vdit(transformer, mode_map(transformer, ALL_FULL), backend="torch")  # replaces the first map
    remove_sparse_vdit(transformer)

    after = transformer.attn_processors
    assert after.keys() == before.keys() and all(after[k] is before[k] for k in before)
    assert get_sparse_vdit_hook(transformer) is None and transformer._diffusers_hook.hooks == {}
    assert torch.equal(forward(transformer, inputs), stock)


def test_remove_without_a_map_only_warns():
    remove_sparse_vdit(tiny_transformer("wan"))


def test_load_a_map_from_a_folder(tmp_path):
    sparse, stock = twins("wan")
    config = mode_map(sparse)
    config.save_files(tmp_path)
    assert SparseVDiTProcessor.from_pretrained(tmp_path).config == config

    inputs = tiny_transformer_inputs(stock)
    apply_sparse_vdit(sparse, str(tmp_path), backend="torch")
    apply_sparse_vdit(stock, config, backend="torch")
    assert torch.equal(forward(sparse, inputs), forward(stock, inputs))

    with pytest.raises(FileNotFoundError, match="folder .* does not exist"):
        apply_sparse_vdit(sparse, str(tmp_path / "missing"))


def _renamed(config: SparseVDiTConfig, **changes) -> SparseVDiTConfig:
    return SparseVDiTConfig.from_specs(
        [config.head_specs(i) for i in range(config.num_layers)],
        **{
            "family": config.family,
            "transformer_class": config.transformer_class,
            "target_modules": config.target_modules,
            "tile_size": config.tile_size,
            **changes,
        },
    )


class NotAVideoTransformer(WanTransformer3DModel):
    pass


@pytest.mark.parametrize(
    "model, config, match",
    [
        # another family
        (lambda: tiny_transformer("cogvideox"), lambda: mode_map(tiny_transformer("wan")),
         r"made for WanTransformer3DModel \(family 'wan'\), but the model is CogVideoXTransformer3DModel"),
        # another transformer class of the same family
        (lambda: tiny_transformer("wan"),
         lambda: _renamed(mode_map(tiny_transformer("wan")), transformer_class="WanVACE"),
         r"made for WanVACE \(family 'wan'\), but the model is WanTransformer3DModel"),
        # another model size: 3 layers
        (lambda: tiny_transformer("wan", num_layers=3), lambda: mode_map(tiny_transformer("wan")),
         r"covers 2 attention layers \(blocks.0.attn1 ... blocks.1.attn1\), but this WanTransformer3DModel has 3"),
        # another model size: 2 heads
        (lambda: tiny_transformer("wan", num_attention_heads=2), lambda: mode_map(tiny_transformer("wan")),
         r"has 3 heads per layer, but this WanTransformer3DModel's attention layers have 2"),
        # same count, other modules
        (lambda: tiny_transformer("wan"),
         lambda: _renamed(mode_map(tiny_transformer("wan")), target_modules=["blocks.0.attn1", "blocks.0.attn2"]),
         r"layer 1 is 'blocks.0.attn2', but this WanTransformer3DModel's is 'blocks.1.attn1'"),
        (lambda: NotAVideoTransformer(num_layers=1, num_attention_heads=3, attention_head_dim=16),
         lambda: mode_map(tiny_transformer("wan")), r"supports WanTransformer3DModel, .*; got NotAVideoTransformer"),
    ],
    ids=["family", "class", "layers", "heads", "modules", "unsupported"],
)
def test_a_map_made_for_another_model_is_refused(model, config, match):
    transformer = model()
    before = transformer.attn_processors
    with pytest.raises(ValueError, match=match):
        apply_sparse_vdit(transformer, config())
    assert transformer.attn_processors == before and get_sparse_vdit_hook(transformer) is None


def test_bad_arguments():
    transformer = tiny_transformer("wan")
    config = mode_map(transformer)
    with pytest.raises(ValueError, match="unknown backend"):
        apply_sparse_vdit(transformer, config, backend="cuda")
    with pytest.raises(TypeError, match="must subclass WanSparseAttnProcessor"):
        apply_sparse_vdit(transformer, config, processor_cls=SparseVDiTProcessor)
    with pytest.raises(TypeError, match="SparseVDiTConfig, a Hub repo id"):
        apply_sparse_vdit(transformer, {"modes": []})
    with pytest.raises(TypeError, match="pipeline with a transformer"):
        apply_sparse_vdit(torch.nn.Linear(2, 2), config)


def test_attention_backend_is_kept_for_dense_calls():
    transformer = tiny_transformer("wan")
    transformer.blocks[1].attn1.processor._attention_backend = "native"
    apply_sparse_vdit(transformer, mode_map(transformer))
    assert isinstance(transformer.blocks[1].attn1.processor, WanSparseAttnProcessor)
    assert [b.attn1.processor._attention_backend for b in transformer.blocks] == [None, "native"]


def test_a_sequence_that_does_not_match_the_grid_is_refused():
    # e.g. context parallelism splitting the sequence after the hook saw the whole grid
    transformer = tiny_transformer("wan")
    apply_sparse_vdit(transformer, mode_map(transformer), backend="torch")
    forward(transformer, tiny_transformer_inputs(transformer, grid=(3, 4, 5)))
    with pytest.raises(RuntimeError, match=r"3x4x5 tokens \(N=60\), but this attention call sees 30 tokens"):
        transformer.blocks[0].attn1(torch.randn(1, 30, 48))


def test_training_through_a_map_says_to_remove_it():
    # an all-FULL map under an explicit backend still runs our forward-only kernel
    transformer = tiny_transformer("wan")
    apply_sparse_vdit(transformer, mode_map(transformer, ALL_FULL), backend="torch")
    with pytest.raises(RuntimeError, match=r"forward pass only.*remove_sparse_vdit\(pipe\)"):
        transformer(**tiny_transformer_inputs(transformer))
    remove_sparse_vdit(transformer)
    transformer(**tiny_transformer_inputs(transformer))[0].sum().backward()  # the stock path trains


def test_a_map_recorded_for_another_architecture_is_refused():
    # CogVideoX1.5 has CogVideoX's class, layers and heads: only the recorded config tells them apart
    cogvideox, cogvideox15 = tiny_transformer("cogvideox"), tiny_transformer("cogvideox1.5")
    config = mode_map(cogvideox, calibration={"transformer_config": architecture(cogvideox)})
    assert config.calibration["transformer_config"]["patch_size_t"] is None
    with pytest.raises(ValueError, match=r"made for a CogVideoXTransformer3DModel with patch_size_t=None, "
                                         r"but this one has patch_size_t=2 \(e.g. a CogVideoX map on CogVideoX1.5\)"):
        apply_sparse_vdit(cogvideox15, config)
    assert get_sparse_vdit_hook(cogvideox15) is None
    apply_sparse_vdit(cogvideox, config)  # the model it was made for


def test_a_map_calibrated_on_other_weights_warns_once(tmp_path, caplog):
    transformer = tiny_transformer("wan")
    config = mode_map(transformer, base_model="Wan-AI/Wan2.1-T2V-1.3B-Diffusers")
    # loaded by a pipeline from the HF cache: the transformer's _name_or_path is a snapshot folder
    snapshot = tmp_path / "models--Wan-AI--Wan2.1-T2V-14B-Diffusers" / "snapshots" / ("0" * 40) / "transformer"
    snapshot.mkdir(parents=True)
    transformer.register_to_config(_name_or_path=str(snapshot))
    assert model_id(transformer) == "Wan-AI/Wan2.1-T2V-14B-Diffusers"
    with caplog.at_level(logging.WARNING):
        apply_sparse_vdit(transformer, config)
        apply_sparse_vdit(transformer, config)
    assert caplog.text.count("calibrated on Wan-AI/Wan2.1-T2V-1.3B-Diffusers, but the transformer was loaded "
                             "from Wan-AI/Wan2.1-T2V-14B-Diffusers") == 1

    caplog.clear()
    transformer.register_to_config(_name_or_path="wan-ai/wan2.1-t2v-1.3b-diffusers")  # Hub ids ignore case
    with caplog.at_level(logging.WARNING):
        apply_sparse_vdit(transformer, config)
    assert "calibrated on" not in caplog.text
