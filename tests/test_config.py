import json
import logging
import os
import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from diffusers_sparse_vdit import Mode, ModeSpec, SparseVDiTConfig, TokenLayout, build_plan

from .maps import DIFFUSERS_TRANSFORMER_CONFIG, make_config


# Round trip -----------------------------------------------------------------------------------
def test_save_load_round_trip(tmp_path):
    config = make_config(base_model="Wan-AI/Wan2.1-T2V-1.3B-Diffusers", dense_warmup_steps=3, calibration={"seed": 1})
    config.save_pretrained(tmp_path)
    assert {"config.json", "mode_map.safetensors", "README.md"} <= {p.name for p in tmp_path.iterdir()}
    loaded = SparseVDiTConfig.from_pretrained(tmp_path)
    assert loaded == config
    assert loaded.head_specs(1) == config.head_specs(1)
    assert loaded.head_specs(0)[4] == ModeSpec.vertical_stripe(4)

    # the config.json on disk is ours (written by save_files), not ModelHubMixin's dump of __init__ args
    on_disk = json.loads((tmp_path / "config.json").read_text())
    assert on_disk == config.to_dict()
    # and the safetensors header repeats it, so the file describes itself on its own
    with safe_open(tmp_path / "mode_map.safetensors", "pt") as f:
        assert json.loads(f.metadata()["sparse_vdit_config"]) == on_disk


def test_step_ranges_round_trip(tmp_path):
    full, diag = [[ModeSpec.full()] * 2] * 2, [[ModeSpec.diagonal(2.0)] * 2] * 2
    config = SparseVDiTConfig.from_specs(
        [full, diag],
        family="cogvideox",
        target_modules=["transformer_blocks.0.attn1", "transformer_blocks.1.attn1"],
        step_ranges=[[0, 10], [10, -1]],
    )
    config.save_pretrained(tmp_path)
    loaded = SparseVDiTConfig.from_pretrained(tmp_path)
    assert loaded == config and loaded.num_ranges == 2
    assert loaded.head_specs(0, step=3)[0].mode is Mode.FULL
    assert loaded.head_specs(0, step=30)[0] == ModeSpec.diagonal(2.0)


def test_unknown_keys_from_newer_versions_are_dropped_with_a_warning(tmp_path, caplog):
    make_config().save_files(tmp_path)
    _edit_config_json(tmp_path, added_in_a_later_version=True)
    with caplog.at_level(logging.WARNING):
        assert SparseVDiTConfig.from_pretrained(tmp_path) == make_config()
    assert "added_in_a_later_version" in caplog.text


# Validation of what is built ------------------------------------------------------------------
def _arrays(config):
    return dict(modes=config.modes, widths=config.widths, sink_frames=config.sink_frames, stripes=config.stripes)


@pytest.mark.parametrize(
    "change, message",
    [
        pytest.param(lambda a: a.update(widths=a["widths"][:, :, :2]), "widths has shape", id="widths-shape"),
        pytest.param(
            lambda a: a.update(modes=a["modes"][:, :2]),
            r"modes has shape .* \(ranges, 3 layers, 5 heads\)",
            id="modes-shape",
        ),
        pytest.param(lambda a: a["modes"].__setitem__((0, 0, 0), 7), "'modes' must hold mode ids 0..4 .*, found 7", id="mode-id"),
        pytest.param(
            lambda a: a["stripes"].__setitem__((0, 0, 4, 0), 1.5),
            r"'stripes' must hold stripe positions in \[0, 1\)",
            id="stripe-pos",
        ),
        pytest.param(lambda a: a.update(stripes=a["stripes"][:, :2]), "stripes has shape", id="stripes-shape"),
        pytest.param(
            lambda a: a["widths"].__setitem__((0, 0, 2), float("nan")), "'widths' must hold finite band widths", id="width-nan"
        ),
    ],
)
def test_bad_arrays_say_what_is_wrong(change, message):
    config = make_config()
    arrays = {k: v.clone() for k, v in _arrays(config).items()}
    change(arrays)
    with pytest.raises(ValueError, match=message):
        SparseVDiTConfig(
            family="wan",
            transformer_class="WanTransformer3DModel",
            target_modules=config.target_modules,
            num_heads=5,
            **arrays,
        )


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(schema_version=2), "schema_version 2 is not supported.*upgrade the package"),
        (dict(family="flux"), "unknown model family 'flux'"),
        (dict(step_ranges=[[1, -1]]), "step_ranges must tile the steps"),
        (dict(tile_size=96), "tile_size must be a power of two"),
        (
            dict(calibration={"layout": {"frames": 0, "height": 2, "width": 2}}),
            "calibration does not give a valid token layout",
        ),
    ],
)
def test_bad_settings_say_what_is_wrong(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_config(**kwargs)


# Validation of what is read -------------------------------------------------------------------
def _write_map(folder, data, tensors):
    """A map pair as a save writes it (the safetensors header repeats config.json), whatever it holds."""
    text = json.dumps(data)
    (folder / "config.json").write_text(text)
    save_file(tensors, folder / "mode_map.safetensors", metadata={"format": "pt", "sparse_vdit_config": text})


def _edit_map(folder, edit_json=lambda data: None, edit_tensors=lambda tensors: None):
    data, tensors = json.loads((folder / "config.json").read_text()), load_file(folder / "mode_map.safetensors")
    edit_json(data)
    edit_tensors(tensors)
    _write_map(folder, data, tensors)


def _edit_config_json(folder, **changes):
    _edit_map(folder, lambda data: data.update(changes))


def test_newer_schema_on_disk_says_upgrade(tmp_path):
    make_config().save_files(tmp_path)
    _edit_config_json(tmp_path, schema_version=2, library_version="9.0.0")
    with pytest.raises(
        ValueError, match=r"written by diffusers-sparse-vdit 9\.0\.0.*pip install -U diffusers-sparse-vdit"
    ):
        SparseVDiTConfig.from_pretrained(tmp_path)
    _edit_config_json(tmp_path, schema_version="one")
    with pytest.raises(ValueError, match="schema_version 'one'.*damaged"):
        SparseVDiTConfig.from_pretrained(tmp_path)


def test_a_diffusers_model_config_is_not_a_map(tmp_path):
    (tmp_path / "config.json").write_bytes(DIFFUSERS_TRANSFORMER_CONFIG)
    with pytest.raises(ValueError, match="config of a diffusers WanTransformer3DModel.*base model's repository"):
        SparseVDiTConfig.from_pretrained(tmp_path)  # says so before asking for mode_map.safetensors
    (tmp_path / "config.json").write_text('{"model_type": "t5", "architectures": ["T5EncoderModel"]}')
    with pytest.raises(ValueError, match="transformers"):
        SparseVDiTConfig.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a readable Sparse-vDiT config.json"):
        SparseVDiTConfig.from_pretrained(tmp_path)


def test_corrupt_safetensors(tmp_path):
    make_config().save_files(tmp_path)
    (tmp_path / "mode_map.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage")
    with pytest.raises(ValueError, match="not a readable safetensors file.*force_download=True"):
        SparseVDiTConfig.from_pretrained(tmp_path)


def test_arrays_that_do_not_match_config_json(tmp_path):
    make_config().save_files(tmp_path)
    _edit_map(tmp_path, edit_tensors=lambda t: t.update({k: v[:, :, :4].contiguous() for k, v in t.items()}))
    with pytest.raises(ValueError, match="expected \\(ranges, 3 layers, 5 heads\\)"):
        SparseVDiTConfig.from_pretrained(tmp_path)


def test_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="has no config.json. It is not a Sparse-vDiT mode map"):
        SparseVDiTConfig.from_pretrained(tmp_path)
    make_config().save_files(tmp_path)
    (tmp_path / "mode_map.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="has no mode_map.safetensors. The map is incomplete"):
        SparseVDiTConfig.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="folder .* does not exist"):
        SparseVDiTConfig.from_pretrained(tmp_path / "no" / "such" / "folder")


# The two files of a map belong together -------------------------------------------------------
def test_a_save_stopped_between_the_two_files_leaves_no_loadable_hybrid(tmp_path, monkeypatch):
    make_config().save_files(tmp_path)
    replace = os.replace

    def stop_after_the_first_file(src, dst):
        if Path(dst).name == "config.json":
            raise KeyboardInterrupt
        replace(src, dst)

    monkeypatch.setattr(os, "replace", stop_after_the_first_file)
    with pytest.raises(KeyboardInterrupt):
        make_config(layers=2).save_files(tmp_path)  # new arrays beside the old config.json
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # nothing left aside
    with pytest.raises(ValueError, match=r"config.json and .*mode_map.safetensors do not belong together.*save the map again"):
        SparseVDiTConfig.from_pretrained(tmp_path)


def test_a_save_that_fails_before_renaming_keeps_the_old_map(tmp_path, monkeypatch):
    make_config().save_files(tmp_path)
    monkeypatch.setattr(os, "replace", lambda src, dst: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        make_config(layers=2).save_files(tmp_path)
    monkeypatch.undo()
    assert SparseVDiTConfig.from_pretrained(tmp_path) == make_config()


def _header(folder, value):
    tensors = load_file(folder / "mode_map.safetensors")
    metadata = {"format": "pt"} if value is None else {"format": "pt", "sparse_vdit_config": value}
    save_file(tensors, folder / "mode_map.safetensors", metadata=metadata)


@pytest.mark.parametrize(
    "make_mismatch, message",
    [
        pytest.param(
            lambda d: shutil.copy(make_config(family="cogvideox").save_files(d / "cog") / "config.json", d),
            "do not belong together",
            id="config.json-of-another-map",
        ),
        pytest.param(lambda d: _header(d, "{garbage"), "do not belong together", id="garbage-header"),
        pytest.param(lambda d: _header(d, None), "has no copy of config.json in its header", id="no-header"),
        pytest.param(lambda d: _edit_config_json(d, mode_counts={"FULL": 15}), "arrays were changed", id="counts"),
    ],
)
def test_files_that_were_not_saved_together_are_refused(tmp_path, make_mismatch, message):
    make_config().save_files(tmp_path)
    make_mismatch(tmp_path)
    with pytest.raises(ValueError, match=message):
        SparseVDiTConfig.from_pretrained(tmp_path)


# Types and ranges are checked on the raw values, before any cast ---------------------------------
@pytest.mark.parametrize(
    "name, value, message",
    [
        ("modes", torch.tensor(256), r"'modes' must hold mode ids 0..4 .*found 256"),
        ("modes", torch.tensor(258), "'modes' .*found 258"),
        ("modes", torch.tensor(-1), "'modes' .*found -1"),
        ("modes", torch.tensor(float("nan")), "'modes' must hold integer mode ids .*got a torch.float32 tensor"),
        ("modes", torch.tensor(2.9), "'modes' must hold integer mode ids"),
        ("modes", torch.tensor(True), "'modes' must hold integer .*got a torch.bool tensor"),
        ("sink_frames", torch.tensor(300), r"'sink_frames' must hold counts of frames 0..255, found 300"),
        ("sink_frames", torch.tensor(1.5), "'sink_frames' must hold integer"),
        ("widths", torch.tensor(1e30), r"'widths' must hold finite band widths in \[0, 1024\] frames"),
        ("widths", torch.tensor(-0.5), "'widths' must hold finite band widths"),
        ("widths", torch.tensor(2), "'widths' must hold band widths in frames as floats, got a torch.int64"),
        ("stripes", torch.tensor(float("nan")), r"'stripes' must hold stripe positions in \[0, 1\)"),
    ],
)
def test_bad_array_values_are_refused_not_cast(tmp_path, name, value, message):
    config = make_config()
    arrays = {k: v.clone() for k, v in _arrays(config).items()}
    arrays[name] = arrays[name].to(value.dtype)
    arrays[name].view(-1)[-1] = value  # the last head of layer 2 runs VERTICAL_STRIPE: every array is read
    with pytest.raises(ValueError, match="invalid Sparse-vDiT mode map: " + message):
        SparseVDiTConfig(
            family="wan", transformer_class="WanTransformer3DModel", target_modules=config.target_modules,
            num_heads=5, **arrays,
        )
    # the same values on disk: the error names the file
    config.save_files(tmp_path)
    _edit_map(tmp_path, edit_tensors=lambda t: t.update({name: arrays[name]}))
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "mode_map.safetensors")) + ": " + message):
        SparseVDiTConfig.from_pretrained(tmp_path)


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("num_heads", 4.9, "'num_heads' must be a positive integer, got 4.9"),
        ("num_heads", 5.0, "'num_heads' must be a positive integer, got 5.0"),
        ("tile_size", None, "'tile_size' must be a positive integer, got null"),
        ("tile_size", True, "'tile_size' must be a positive integer, got true"),
        ("tile_size", 96, "tile_size must be a power of two >= 16, got 96"),
        ("dense_warmup_steps", 2.5, "'dense_warmup_steps' must be an integer >= 0, got 2.5"),
        ("dense_warmup_steps", -1, "'dense_warmup_steps' must be an integer >= 0, got -1"),
        ("dense_above_timestep", "900", "'dense_above_timestep' must be a finite number or null, got \"900\""),
        ("dense_above_timestep", False, "'dense_above_timestep' must be a finite number or null, got false"),
        ("step_ranges", [[0.0, -1]], r"'step_ranges' must be a list of \[start, end\] integer pairs, got \[\[0.0, -1\]\]"),
        ("step_ranges", None, "'step_ranges' must be a list"),
        ("calibration", ["seed", 1], r"'calibration' must be a JSON object \(a dict\), got \[\"seed\", 1\]"),
        ("target_modules", "blocks.0.attn1", "'target_modules' must be a non-empty list of module names"),
        ("target_modules", [], "'target_modules' must be a non-empty list"),
        ("family", None, "unknown model family None"),
        ("transformer_class", 3, "'transformer_class' must be a non-empty string, got 3"),
        ("base_model", ["a"], "'base_model' must be a non-empty string or null"),
        ("num_layers", 3.0, "'num_layers' must be a positive integer, got 3.0"),
    ],
)
def test_malformed_config_json_names_the_file_the_key_and_the_fix(tmp_path, key, value, message):
    make_config().save_files(tmp_path)
    _edit_config_json(tmp_path, **{key: value})
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "config.json")) + ".*" + message):
        SparseVDiTConfig.from_pretrained(tmp_path)


def test_the_python_api_does_not_coerce_numbers_either():
    with pytest.raises(ValueError, match="'num_heads' must be a positive integer, got 3.9"):
        SparseVDiTConfig(
            family="wan", transformer_class="WanTransformer3DModel", target_modules=["a"], num_heads=3.9,
            modes=torch.zeros(1, 3, dtype=torch.uint8),
        )
    with pytest.raises(ValueError, match="'dense_warmup_steps' must be an integer >= 0, got 1.5"):
        make_config(dense_warmup_steps=1.5)


def test_missing_keys_and_extra_arrays_say_what_to_do(tmp_path):
    make_config().save_files(tmp_path)
    _edit_map(tmp_path, lambda data: data.pop("tile_size"))
    with pytest.raises(ValueError, match=r"config.json: missing keys \['tile_size'\].*save the map again"):
        SparseVDiTConfig.from_pretrained(tmp_path)
    make_config().save_files(tmp_path)
    _edit_map(tmp_path, edit_tensors=lambda t: t.update(offsets=torch.zeros(3)))
    with pytest.raises(ValueError, match=r"mode_map.safetensors must hold exactly the arrays .*it has unknown \['offsets'\]"):
        SparseVDiTConfig.from_pretrained(tmp_path)
    _edit_map(tmp_path, edit_tensors=lambda t: [t.pop("offsets"), t.pop("stripes")])
    with pytest.raises(ValueError, match=r"it lacks \['stripes'\]"):
        SparseVDiTConfig.from_pretrained(tmp_path)



# Two experts (Wan2.2 A14B) --------------------------------------------------------------------
def _two_experts(**kwargs):
    low = make_config(layers=2, heads=5, calibration={"expert": "transformer_2"}, **kwargs)
    return make_config(layers=3, heads=5, transformer_2=low, **kwargs)


def test_two_expert_map_round_trips_as_one_pair(tmp_path):
    config = _two_experts(step_ranges=None, dense_warmup_steps=1)
    config.save_pretrained(tmp_path)
    assert {"config.json", "mode_map.safetensors"} <= {p.name for p in tmp_path.iterdir()}
    loaded = SparseVDiTConfig.from_pretrained(tmp_path)
    assert loaded == config and loaded.transformer_2 == config.transformer_2
    assert loaded.transformer_2.num_layers == 2 and loaded.num_layers == 3
    assert list(loaded.experts) == ["transformer", "transformer_2"]
    assert sorted(load_file(tmp_path / "mode_map.safetensors")) == sorted(
        [*config.tensors()]
    ) and "transformer_2.modes" in config.tensors()
    assert "two experts" in loaded.summary() and "transformer_2 (low-noise steps)" in loaded.summary()
    assert "transformer_2" in repr(loaded)
    # a one-transformer map has no transformer_2 key: the format of earlier maps, read as before
    make_config().save_files(tmp_path / "one")
    assert "transformer_2" not in json.loads((tmp_path / "one" / "config.json").read_text())
    assert SparseVDiTConfig.from_pretrained(tmp_path / "one").transformer_2 is None


def test_two_expert_map_files_are_validated(tmp_path):
    _two_experts().save_files(tmp_path)
    _edit_map(tmp_path, edit_tensors=lambda t: t.pop("transformer_2.widths"))
    with pytest.raises(ValueError, match=r"it lacks \['transformer_2.widths'\]"):
        SparseVDiTConfig.from_pretrained(tmp_path)
    _two_experts().save_files(tmp_path)
    _edit_map(tmp_path, edit_tensors=lambda t: t["transformer_2.modes"].fill_(9))
    with pytest.raises(ValueError, match=r"'modes' must hold mode ids"):
        SparseVDiTConfig.from_pretrained(tmp_path)
    _two_experts().save_files(tmp_path)
    _edit_map(tmp_path, lambda data: data["transformer_2"].update(num_heads=4))
    with pytest.raises(ValueError, match=r"config.json \(transformer_2\) with mode_map.safetensors: .*4 heads"):
        SparseVDiTConfig.from_pretrained(tmp_path)
    _two_experts().save_files(tmp_path)
    _edit_map(tmp_path, lambda data: data["transformer_2"].pop("tile_size"))
    with pytest.raises(ValueError, match=r"\(transformer_2\): missing keys \['tile_size'\]"):
        SparseVDiTConfig.from_pretrained(tmp_path)
    # a one-transformer config.json beside two-expert arrays: refused, never half applied
    _two_experts().save_files(tmp_path)
    _edit_map(tmp_path, lambda data: data.pop("transformer_2"))
    with pytest.raises(ValueError, match=r"unknown \['transformer_2.modes'.*a map with two experts"):
        SparseVDiTConfig.from_pretrained(tmp_path)


def test_two_expert_maps_are_one_family_and_at_most_two():
    with pytest.raises(ValueError, match="transformer_2's map is for family 'cogvideox'"):
        make_config(transformer_2=make_config(family="cogvideox", target_modules=["a", "b", "c"]))
    with pytest.raises(ValueError, match="a pipeline has at most two experts"):
        make_config(transformer_2=_two_experts())
    with pytest.raises(ValueError, match="transformer_2 must be a SparseVDiTConfig"):
        make_config(transformer_2={"modes": []})

# Queries ------------------------------------------------------------------------------------
def test_calibration_layout():
    assert make_config().calibration_layout() is None
    wan = make_config(calibration={"height": 480, "width": 832, "num_frames": 81})
    assert wan.calibration_layout() == TokenLayout(21, 30, 52)
    cog15 = make_config(
        family="cogvideox", calibration={"height": 768, "width": 1360, "num_frames": 81, "patch_size_t": 2}
    )
    assert cog15.calibration_layout() == TokenLayout(11, 48, 85, 226, "before")  # DESIGN §5
    explicit = {"frames": 2, "height": 3, "width": 4, "text_tokens": 5, "text_position": "after"}
    assert make_config(calibration={"layout": explicit}).calibration_layout() == TokenLayout(**explicit)


def test_density():
    layout = TokenLayout(4, 8, 8, 16, "before")
    config = make_config()
    expected = sum(build_plan(config.head_specs(i), layout, 128).density for i in range(3)) / 3
    assert config.density(layout) == pytest.approx(expected)
    assert 0 < expected < 1
    for spec, density in ((ModeSpec.full(), 1.0), (ModeSpec.skip(), 0.0)):
        only = SparseVDiTConfig.from_specs([[spec] * 2] * 2, family="wan", target_modules=["a.0", "a.1"])
        assert only.density(layout) == density


def test_layer_groups_and_counts():
    names = [f"transformer_blocks.{i}.attn" for i in range(2)] + [
        f"single_transformer_blocks.{i}.attn" for i in range(3)
    ]
    config = make_config(layers=5, family="hunyuan_video", target_modules=names)
    assert config.layer_groups() == {"transformer_blocks.*.attn": [0, 1], "single_transformer_blocks.*.attn": [2, 3, 4]}
    assert config.mode_counts() == {m.name: 5 for m in Mode}
    assert config.mode_counts(step_range=0) == config.mode_counts()
    assert torch.equal(config.modes[0, 0], torch.arange(5, dtype=torch.uint8))


# Precision (FP8) ------------------------------------------------------------------------------
def _fp8_first_layer(config):
    heads = torch.zeros(config.modes.shape, dtype=torch.bool)
    heads[:, 0] = True
    return config.with_precision("fp8", heads=heads)


def test_precision_round_trips_and_skip_heads_do_not_count(tmp_path):
    config = _fp8_first_layer(make_config())
    # layer 0 is FULL, SKIP, DIAGONAL, MULTI_DIAGONAL, VERTICAL_STRIPE: the SKIP head computes nothing
    assert config.head_precisions(0) == ("fp8",) * 5 and config.head_precisions(1) == ("native",) * 5
    assert config.fp8_count() == 4 and config.to_dict()["fp8_heads"] == 4
    assert "FP8: 4 of 12 computed heads" in config.summary()
    config.save_pretrained(tmp_path)
    assert "FP8: 4 of 12 computed heads" in (tmp_path / "README.md").read_text()
    loaded = SparseVDiTConfig.from_pretrained(tmp_path)
    assert loaded == config and loaded.head_precisions(0) == ("fp8",) * 5
    assert loaded != make_config()  # same modes, other precision
    assert load_file(tmp_path / "mode_map.safetensors")["precision"].dtype == torch.uint8


def test_a_native_map_is_saved_as_before_fp8_and_such_files_load_all_native(tmp_path):
    make_config().save_files(tmp_path)
    assert sorted(load_file(tmp_path / "mode_map.safetensors")) == ["modes", "sink_frames", "stripes", "widths"]
    assert "fp8_heads" not in json.loads((tmp_path / "config.json").read_text())
    loaded = SparseVDiTConfig.from_pretrained(tmp_path)
    assert not loaded.precision.any() and loaded.fp8_count() == 0 and "FP8" not in loaded.summary()
    assert loaded.with_precision("fp8").with_precision("native") == loaded


@pytest.mark.parametrize(
    "value, message",
    [
        (torch.tensor(2, dtype=torch.uint8), r"'precision' must hold precision ids 0..1 \(0 native, 1 fp8\), found 2"),
        (torch.tensor(1.0), "'precision' must hold integer precision ids .*got a torch.float32 tensor"),
    ],
)
def test_bad_precision_values_name_the_file_and_the_key(tmp_path, value, message):
    _fp8_first_layer(make_config()).save_files(tmp_path)
    _edit_map(tmp_path, edit_tensors=lambda t: t.update(precision=t["precision"].to(value.dtype).fill_(value)))
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "mode_map.safetensors")) + ": " + message):
        SparseVDiTConfig.from_pretrained(tmp_path)


def test_precision_shape_and_counts_are_checked(tmp_path):
    config = make_config()
    with pytest.raises(ValueError, match=r"precision has shape \(1, 2, 5\), expected \(1, 3, 5\)"):
        SparseVDiTConfig(family="wan", transformer_class="WanTransformer3DModel", target_modules=config.target_modules,
                         num_heads=5, **_arrays(config), precision=torch.zeros(1, 2, 5, dtype=torch.uint8))
    _fp8_first_layer(config).save_files(tmp_path)
    _edit_map(tmp_path, edit_tensors=lambda t: t["precision"].fill_(1))
    with pytest.raises(ValueError, match="counts 4 fp8 heads but .*mode_map.safetensors holds 12"):
        SparseVDiTConfig.from_pretrained(tmp_path)


def test_with_precision_arguments():
    config = make_config()
    with pytest.raises(ValueError, match=r"unknown precision 'int8'; choose one of \('native', 'fp8'\)"):
        config.with_precision("int8")
    with pytest.raises(ValueError, match=r"heads must be a boolean mask shaped \(ranges, layers, heads\) = \(1, 3, 5\)"):
        config.with_precision("fp8", heads=torch.ones(3, 5, dtype=torch.bool))
    assert not config.precision.any()  # a new config: the original is unchanged


def test_two_experts_take_the_precision_map_wide_and_round_trip(tmp_path):
    config = _two_experts().with_precision("fp8")
    assert config.transformer_2.fp8_count() == 8 and config.fp8_count() == 12
    assert "transformer_2.precision" in config.tensors()
    config.save_files(tmp_path)
    loaded = SparseVDiTConfig.from_pretrained(tmp_path)
    assert loaded == config and loaded.transformer_2.head_precisions(1) == ("fp8",) * 5
    # a mask is for this map only
    heads = torch.zeros(config.modes.shape, dtype=torch.bool)
    assert _two_experts().with_precision("fp8", heads=heads).transformer_2.fp8_count() == 0
