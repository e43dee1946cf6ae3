"""The ``sparse-vdit`` command, end to end on tiny models: search, solve, show, push, evaluate, bad arguments."""

import importlib.util
import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import huggingface_hub
import pytest
import torch
from huggingface_hub import HfApi, RepoUrl

from diffusers_sparse_vdit import ModeSpec, SparseVDiTConfig, cli
from diffusers_sparse_vdit import plots as plots_module
from diffusers_sparse_vdit.search import ScoreSet
from diffusers_sparse_vdit.testing import tiny_mode_map, tiny_transformer

from .maps import DIFFUSERS_TRANSFORMER_CONFIG, make_config, map_files, put_in_hf_cache
from .search.helpers import random_scores

ROOT = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
needs_runner = pytest.mark.skipif(
    importlib.util.find_spec("diffusers_sparse_vdit.search.runner") is None,
    reason="the calibration runner (diffusers_sparse_vdit/search/runner.py) is not in this tree",
)
needs_matplotlib = pytest.mark.skipif(not plots_module.matplotlib_available(), reason="needs matplotlib")


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    # nothing here may reach the Hub: a repo id that is not cached fails at once instead of retrying
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def run(capsys, *argv):
    """Run the command in this process: (exit status, stdout, stderr)."""
    try:
        code = cli.main([str(a) for a in argv])
    except SystemExit as e:  # argparse: --help, --version, usage errors
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def map_dir(tmp_path_factory):
    """A saved map for the tiny Wan pipeline (every mode), calibrated at the tiny video size."""
    layers = [
        [ModeSpec.full(), ModeSpec.diagonal(1.0), ModeSpec.skip()],
        [ModeSpec.vertical_stripe(1), ModeSpec.full(), ModeSpec.multi_diagonal(1.0)],
    ]
    config = tiny_mode_map(
        tiny_transformer("wan"),
        layers,
        calibration={"height": 32, "width": 48, "num_frames": 9, "num_inference_steps": 2, "guidance_scale": 4.0},
    )
    directory = tmp_path_factory.mktemp("map")
    config.save_pretrained(directory)
    return directory


# The command itself -----------------------------------------------------------------------
def test_help_names_every_command(capsys):
    code, out, _ = run(capsys, "--help")
    assert code == 0
    for command in ("search", "solve", "show", "push", "evaluate"):
        assert command in out
        sub_code, sub_out, _ = run(capsys, command, "--help")
        assert sub_code == 0 and "example" in sub_out


def test_console_script_and_module_entry_point():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["sparse-vdit"] == "diffusers_sparse_vdit.cli:main"
    done = subprocess.run(
        [sys.executable, "-m", "diffusers_sparse_vdit.cli", "--version"], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0 and done.stdout.startswith("sparse-vdit ")
    done = subprocess.run(
        [sys.executable, "-m", "diffusers_sparse_vdit.cli", "show"], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 2 and "DIR_OR_REPO" in done.stderr


@pytest.mark.parametrize(
    "argv, message",
    [
        ([], "required: COMMAND"),
        (["search", "--out", "x"], "one of the arguments --model --tiny is required"),
        (["search", "--tiny", "wan", "--model", "m", "--out", "x"], "not allowed with argument"),
        (["search", "--tiny", "sd15", "--out", "x"], "invalid choice: 'sd15'"),
        (["search", "--tiny", "wan"], "required: --out"),
        (["search", "--tiny", "wan", "--out", "x", "--target-speedup", "2", "--target-density", "0.5"], "not allowed"),
        (["search", "--tiny", "wan", "--out", "x", "--target-speedup", "2", "--lambda", "1"], "drop them"),
        (["search", "--tiny", "wan", "--out", "x", "--target-speedup", "0.5"], "must be a finite number >= 1"),
        (["solve", "s", "--out", "x", "--target-speedup", "inf"], "must be a finite number >= 1"),
        (["solve", "s", "--out", "x", "--target-speedup", "nan"], "must be a finite number >= 1"),
        (["solve", "s", "--out", "x", "--target-density", "nan"], "must be in (0, 1]"),
        (["search", "--tiny", "wan", "--out", "x", "--target-density", "1.5"], "must be in (0, 1]"),
        (["search", "--tiny", "wan", "--out", "x", "--tile-size", "48"], "must be a power of two >= 16"),
        (["search", "--tiny", "wan", "--out", "x", "--steps", "two"], "expected a whole number, got 'two'"),
        (["search", "--tiny", "wan", "--out", "x", "--steps", "0"], "must be a whole number >= 1"),
        (
            ["search", "--tiny", "wan", "--out", "x", "--height", "100"],
            "not a multiple of 16 (the VAE's 8x and the 2x2 patches): try 96",
        ),
        (["search", "--tiny", "wan", "--out", "x", "--prompts", "no-such-file.txt"], "no such file"),
        (["search", "--tiny", "wan", "--out", "x", "--dense-warmup-fraction", "1.5"], "must be in [0, 1)"),
        (["search", "--tiny", "wan", "--out", "x", "--dense-warmup-steps", "1", "--dense-warmup-fraction", "0.2"],
         "not allowed with argument"),
        (["search", "--tiny", "wan", "--out", "x", "--steps", "4", "--dense-warmup-steps", "2", "--dense-last-steps",
          "2"], "leave none of the 4 steps"),
        (["search", "--tiny", "wan", "--out", "x", "--steps", "4", "--dense-warmup-steps", "3", "--dense-last-steps",
          "2"], "more dense steps than the schedule's 4"),
        (["solve", "--target-speedup", "2", "--out", "x"], "required: SCORES_DIR"),
        (["show", "m", "--png", "a.png", "--no-png"], "not allowed with argument"),
        (["push", "no-such-folder", "user/repo"], "is not a folder"),
        (["evaluate", "--tiny", "wan", "--map", "m"], "required: --prompt"),
        (["evaluate", "--tiny", "wan", "--map", "m", "--prompt", "a cat", "--width", "50"], "try 48"),
    ],
)
def test_bad_arguments_say_what_to_do(capsys, argv, message):
    code, out, err = run(capsys, *argv)
    assert code == 2 and message in err and err.startswith("usage: sparse-vdit")


def test_a_mistyped_model_folder_fails_at_once(capsys, tmp_path):
    code, _, err = run(capsys, "search", "--model", "./wan-modell", "--out", tmp_path / "map")
    assert code == 1 and "folder ./wan-modell does not exist" in err and "Traceback" not in err
    code, _, err = run(capsys, "show", "./wan-mapp")
    assert code == 1 and "folder ./wan-mapp does not exist" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_without_a_gpu(capsys):
    code, _, err = run(capsys, "search", "--tiny", "wan", "--out", "x", "--device", "cuda")
    assert code == 2 and "no CUDA GPU is visible" in err


# search -> solve --------------------------------------------------------------------------
@needs_runner
def test_search_writes_the_map_and_its_scores_then_solve_re_solves(capsys, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat walks in the city at night\na dog runs on the beach\n")
    out = tmp_path / "wan-map"
    code, stdout, err = run(
        capsys,
        "search",
        "--tiny",
        "wan",
        "--prompts",
        prompts,
        "--steps",
        2,
        "--target-speedup",
        1.2,  # the tiny 18-token grid at tile 16: the sparsest mask but SKIP keeps 0.80 of the pairs
        "--backend",
        "torch",
        "--sample-tiles",
        4,
        "--out",
        out,
        "-q",
    )
    assert code == 0, err
    assert "Sparse-vDiT search (budget)" in stdout and f"sparse-vdit show {out}" in stdout
    config = SparseVDiTConfig.from_pretrained(out)
    assert config.family == "wan" and config.target_modules == ["blocks.0.attn1", "blocks.1.attn1"]
    assert config.calibration["predicted"]["attention_density"] <= 1 / 1.2 + 1e-9
    assert (out / "README.md").is_file()
    scores = ScoreSet.load(out / "scores")
    assert (scores.num_layers, scores.num_heads) == (2, 3)
    # --tiny defaults to tile 16, so the grid has two tiles and sparse masks besides FULL and SKIP
    assert config.tile_size == scores.tile_size == 16 and len(scores.candidates) > 2
    # by default one map a step range (8, capped at the 2 steps), weighed by a measured sensitivity
    assert scores.step_ranges == [[0, 1], [1, -1]] and config.step_ranges == scores.step_ranges
    assert scores.sensitivity is not None and scores.metadata["sensitivity"]["groups"] == "ranges"

    # from OUT/scores or from OUT itself, by budget or by the paper's rule
    for source, rule in ((out / "scores", ["--target-density", 0.9]), (out, ["--lambda", 0.5, "--epsilon", 0.5])):
        target = tmp_path / f"re-solved-{rule[0][2:]}"
        code, stdout, err = run(capsys, "solve", source, *rule, "--out", target)
        assert code == 0, err
        assert SparseVDiTConfig.from_pretrained(target).target_modules == config.target_modules


@needs_runner
def test_search_a_two_expert_pipeline_with_few_steps_then_solve_and_show(capsys, tmp_path):
    out = tmp_path / "wan22-map"
    code, stdout, err = run(
        capsys, "search", "--tiny", "wan2.2", "--prompts", _one_prompt(tmp_path), "--steps", 4,
        "--dense-warmup-fraction", 0.25, "--dense-last-steps", 1, "--lambda", 0.01, "--epsilon", 10,
        "--backend", "torch", "--sample-tiles", 4, "--out", out, "-q",
    )
    assert code == 0, err
    assert "transformer_2 (steps 2 to 3)" in stdout
    config = SparseVDiTConfig.from_pretrained(out)
    assert config.transformer_2 is not None and config.dense_warmup_steps == 1
    assert config.transformer_2.step_ranges == [[0, 3], [3, -1]]  # its steps 2 | 3, the last one dense
    assert (out / "scores" / "transformer_2" / "scores.json").is_file()

    code, stdout, err = run(capsys, "solve", out, "--target-density", 0.95, "--dense-warmup-steps", 1,
                            "--dense-last-steps", 0, "--out", tmp_path / "re-solved")
    assert code == 1 and "1 last steps dense unscored: solve with at least those" in err  # step 3 has no scores
    # without the flags, solve keeps the dense steps the scores were calibrated with
    code, stdout, err = run(capsys, "solve", out, "--target-density", 0.95, "--out", tmp_path / "re-solved")
    assert code == 0, err
    assert "dense steps as calibrated: warm-up 0.25 of the steps, last 1" in stdout
    re_solved = SparseVDiTConfig.from_pretrained(tmp_path / "re-solved")
    assert re_solved.transformer_2 is not None and re_solved.calibration["predicted"]["attention_density"] <= 0.95
    assert re_solved.dense_warmup_steps == 1 and re_solved.transformer_2.step_ranges == [[0, 3], [3, -1]]

    code, stdout, err = run(capsys, "show", out, "--no-png")
    assert code == 0, err
    assert "two experts" in stdout and "transformer_2 (low-noise steps)" in stdout


@needs_runner
def test_search_few_steps_with_a_target_cuts_the_step_ranges_between_the_dense_steps(capsys, tmp_path):
    out = tmp_path / "few-step-map"
    code, stdout, err = run(
        capsys, "search", "--tiny", "wan", "--prompts", _one_prompt(tmp_path), "--steps", 4, "--guidance-scale", 1,
        "--dense-warmup-fraction", 0.25, "--dense-last-steps", 1, "--target-density", 0.95, "--sensitivity-prompts", 1,
        "--backend", "torch", "--sample-tiles", 4, "--out", out, "-q",
    )
    assert code == 0, err
    config = SparseVDiTConfig.from_pretrained(out)
    assert config.step_ranges == [[0, 2], [2, 3], [3, -1]] and config.dense_warmup_steps == 1
    scores = ScoreSet.load(out / "scores")
    assert scores.metadata["sensitivity"]["dense_last_steps"] == 1


def _one_prompt(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat walks in the city at night\n")
    return prompts


def test_solve_from_saved_scores(capsys, tmp_path):
    random_scores(layers=3, heads=4).save(tmp_path / "scores")
    code, stdout, err = run(
        capsys,
        "solve",
        tmp_path / "scores",
        "--target-speedup",
        2,
        "--dense-warmup-steps",
        5,
        "--attention-share",
        0.6,
        "--out",
        tmp_path / "map",
    )
    assert code == 0, err
    config = SparseVDiTConfig.from_pretrained(tmp_path / "map")
    predicted = config.calibration["predicted"]
    assert predicted["attention_density"] <= 0.5 + 1e-9 and predicted["attention_share"] == 0.6
    assert config.dense_warmup_steps == 5 and config.base_model == "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"
    assert "Sparse-vDiT search (budget)" in stdout and "mode_map.safetensors" in stdout

    code, stdout, err = run(capsys, "solve", tmp_path / "scores", "--lambda", 0.25, "--out", tmp_path / "paper")
    assert code == 0, err
    assert SparseVDiTConfig.from_pretrained(tmp_path / "paper").calibration["solver"]["lambda"] == 0.25

    # scores calibrated with dense warm-up steps keep them unless told otherwise
    random_scores(layers=3, heads=4, dense_warmup_steps=3).save(tmp_path / "warm")
    code, stdout, err = run(capsys, "solve", tmp_path / "warm", "--target-speedup", 2, "--out", tmp_path / "warm-map")
    assert code == 0, err
    assert "dense steps as calibrated: warm-up 3, last 0" in stdout
    assert SparseVDiTConfig.from_pretrained(tmp_path / "warm-map").dense_warmup_steps == 3


def test_solve_errors(capsys, tmp_path):
    code, _, err = run(capsys, "solve", tmp_path, "--target-speedup", 2, "--out", tmp_path / "map")
    assert code == 2 and "holds no scores.json" in err
    random_scores().save(tmp_path / "scores")
    # 40 of 50 steps dense already cost 0.8 of the dense FLOPs: 0.5 is out of reach
    code, _, err = run(
        capsys,
        "solve",
        tmp_path / "scores",
        "--target-density",
        0.5,
        "--dense-warmup-steps",
        40,
        "--out",
        tmp_path / "m",
    )
    assert code == 1 and err.startswith("sparse-vdit solve: error:") and "warm-up" in err
    # beyond what the candidates reach without skipping heads: the best reachable figure, no all-SKIP map
    for target in (["--target-speedup", 1000], ["--target-density", 1e-9]):
        code, _, err = run(capsys, "solve", tmp_path / "scores", *target, "--out", tmp_path / "m")
        assert code == 1 and "out of reach" in err and "Ask for at most 10.9x" in err and "Traceback" not in err
        assert not (tmp_path / "m").exists()
    (tmp_path / "scores" / "scores.json").write_text("{}")
    code, _, err = run(capsys, "solve", tmp_path / "scores", "--target-speedup", 2, "--out", tmp_path / "m")
    assert code == 1 and "not diffusers-sparse-vdit search scores" in err


# --out folders ----------------------------------------------------------------------------
def solve_into(capsys, scores_dir, out, *extra):
    return run(capsys, "solve", scores_dir, "--target-speedup", 2, "--out", out, *extra)


def test_out_refuses_a_folder_that_is_not_a_map_unless_overwrite(capsys, tmp_path):
    random_scores().save(tmp_path / "scores")
    out = tmp_path / "model"
    out.mkdir()
    (out / "config.json").write_bytes(DIFFUSERS_TRANSFORMER_CONFIG)
    (out / "notes.txt").write_text("mine")
    code, _, err = solve_into(capsys, tmp_path / "scores", out)
    assert code == 2 and "config.json (not a Sparse-vDiT map's)" in err and "notes.txt" in err and "--overwrite" in err
    assert (out / "config.json").read_bytes() == DIFFUSERS_TRANSFORMER_CONFIG and (out / "notes.txt").exists()
    code, _, err = solve_into(capsys, tmp_path / "scores", out, "--overwrite")
    assert code == 0, err
    assert not (out / "notes.txt").exists() and SparseVDiTConfig.from_pretrained(out).family == "wan"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging folder left


def test_out_replaces_an_earlier_map_whole_and_keeps_its_own_scores(capsys, tmp_path, map_dir):
    random_scores().save(tmp_path / "scores")
    out = tmp_path / "map"
    shutil.copytree(map_dir, out)
    (out / "mode_map.range1.png").write_bytes(PNG_MAGIC)  # a picture of the old map's other step range
    (out / "README.md").write_text("# my own card\n")  # written by hand: kept, as save_pretrained keeps it
    code, _, err = solve_into(capsys, tmp_path / "scores", out)
    assert code == 0, err
    assert not (out / "mode_map.range1.png").exists() and (out / "README.md").read_text() == "# my own card\n"
    assert SparseVDiTConfig.from_pretrained(out).num_layers == 3  # the new map, not map_dir's 2 layers
    # a map folder with its own scores: re-solving from them keeps them, other scores may not replace them
    random_scores(layers=2, seed=1).save(out / "scores")
    code, _, err = run(capsys, "solve", out, "--target-speedup", 1.5, "--out", out)
    assert code == 0, err
    assert ScoreSet.load(out / "scores").num_layers == 2 and SparseVDiTConfig.from_pretrained(out).num_layers == 2
    code, _, err = solve_into(capsys, tmp_path / "scores", out)
    assert code == 2 and "scores/ (of a search" in err
    assert ScoreSet.load(out / "scores").num_layers == 2


def test_a_failed_solve_leaves_the_old_map(capsys, tmp_path, map_dir):
    random_scores().save(tmp_path / "scores")
    out = tmp_path / "map"
    shutil.copytree(map_dir, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    code, _, err = run(capsys, "solve", tmp_path / "scores", "--target-speedup", 1000, "--out", out)
    assert code == 1 and "out of reach" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_a_failed_search_keeps_the_new_scores_beside_the_old_map(capsys, tmp_path, map_dir, monkeypatch):
    from diffusers_sparse_vdit.search import runner

    monkeypatch.setattr(runner, "calibrate", lambda pipe, prompts, **kwargs: random_scores(layers=2, heads=3))
    out = tmp_path / "map"
    shutil.copytree(map_dir, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    code, _, err = run(capsys, "search", "--tiny", "wan", "--target-speedup", 1000, "--out", out, "-q")
    assert code == 1 and "out of reach" in err and f"the map in {out} is unchanged" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    (kept,) = tmp_path.glob("map.unsolved-*")
    assert ScoreSet.load(kept / "scores").num_layers == 2 and f"solve {kept / 'scores'}" in err
    # into a new folder, the scores are all it holds
    code, _, err = run(capsys, "search", "--tiny", "wan", "--target-speedup", 1000, "--out", tmp_path / "new", "-q")
    assert code == 1 and sorted(p.name for p in (tmp_path / "new").iterdir()) == ["scores"]


# show -------------------------------------------------------------------------------------
@needs_matplotlib
def test_show_prints_the_table_and_draws_the_heatmap(capsys, map_dir, tmp_path):
    shutil.copytree(map_dir, tmp_path / "map")
    (tmp_path / "map" / "mode_map.png").unlink()  # save_pretrained drew one; show draws it again
    code, out, err = run(capsys, "show", tmp_path / "map")
    assert code == 0, err
    assert "Sparse-vDiT mode map: WanTransformer3DModel" in out and "blocks.*.attn1 (2)" in out
    assert "attention density at 3x2x3 tokens" in out  # from the calibrated size
    assert (tmp_path / "map" / "mode_map.png").read_bytes().startswith(PNG_MAGIC)

    code, out, _ = run(capsys, "show", map_dir, "--png", tmp_path / "pictures" / "wan.png")
    assert code == 0 and (tmp_path / "pictures" / "wan.png").read_bytes().startswith(PNG_MAGIC)
    code, out, _ = run(capsys, "show", map_dir, "--no-png")
    assert code == 0 and "heatmap" not in out


@needs_matplotlib
def test_show_a_hub_repo_from_the_cache(capsys, tmp_path, monkeypatch):
    cache = tmp_path / "hf-cache"
    put_in_hf_cache(cache, "user/wan-map", map_files(make_config(layers=3), tmp_path), commit="a" * 40)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, "show", "user/wan-map")
    assert code == 0, err
    assert "heatmap: wan-map.mode_map.png" in out  # the HF cache is not ours to write to
    assert (tmp_path / "wan-map.mode_map.png").read_bytes().startswith(PNG_MAGIC)


def test_show_without_matplotlib(capsys, map_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(plots_module, "matplotlib_available", lambda: False)
    code, out, _ = run(capsys, "show", map_dir)
    assert code == 0 and "blocks.*.attn1" in out and "no heatmap: it needs matplotlib" in out
    code, _, err = run(capsys, "show", map_dir, "--png", tmp_path / "x.png")
    assert code == 1 and "pip install matplotlib" in err


def test_show_errors(capsys, map_dir, tmp_path):
    (tmp_path / "config.json").write_bytes(DIFFUSERS_TRANSFORMER_CONFIG)
    code, _, err = run(capsys, "show", tmp_path)
    assert code == 1 and "is not a diffusers-sparse-vdit config" in err and "Traceback" not in err
    code, _, err = run(capsys, "show", "user/not-cached")
    assert code == 1 and "not in the Hugging Face cache" in err
    code, _, err = run(capsys, "show", map_dir, "--step-range", 1)
    assert code == 2 and "this map has 1 step range(s), 0 to 0" in err


def _damaged(folder, edit_json=None, edit_tensors=None):
    """Rewrite a saved map's two files consistently (the header repeats config.json) after an edit."""
    from safetensors.torch import load_file, save_file

    data, tensors = json.loads((folder / "config.json").read_text()), load_file(folder / "mode_map.safetensors")
    (edit_json or (lambda d: None))(data)
    (edit_tensors or (lambda t: None))(tensors)
    text = json.dumps(data)
    (folder / "config.json").write_text(text)
    save_file(tensors, folder / "mode_map.safetensors", metadata={"format": "pt", "sparse_vdit_config": text})


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda d: _damaged(d, lambda j: j.pop("family")), r"config.json: missing keys \['family'\]"),
        (lambda d: _damaged(d, lambda j: j.update(tile_size=None)), "config.json: 'tile_size' must be a positive integer, got null"),
        (lambda d: _damaged(d, lambda j: j.update(calibration=[1])), "config.json: 'calibration' must be a JSON object"),
        (lambda d: _damaged(d, edit_tensors=lambda t: t.update(extra=torch.zeros(1))), r"it has unknown \['extra'\]"),
        (lambda d: (d / "config.json").write_text((d / "config.json").read_text().replace('"tile_size": 16', '"tile_size": 32')),
         "do not belong together"),
    ],
    ids=["missing-key", "null-tile-size", "list-calibration", "extra-tensor", "files-of-two-saves"],
)
def test_show_names_the_file_and_the_key_of_a_damaged_map(capsys, map_dir, tmp_path, damage, message):
    shutil.copytree(map_dir, tmp_path / "map")
    damage(tmp_path / "map")
    code, out, err = run(capsys, "show", tmp_path / "map", "--no-png")
    assert code == 1 and out == "" and "Traceback" not in err
    assert err.startswith("sparse-vdit show: error: ") and re.search(message, err), err


# push -------------------------------------------------------------------------------------
@pytest.fixture
def hub(monkeypatch, tmp_path):
    """HfApi calls captured instead of sent, with a copy of the uploaded folder."""
    calls = {"uploaded": tmp_path / "uploaded"}

    def create_repo(self, repo_id, *, private=None, exist_ok=False, **kwargs):
        calls["create_repo"] = dict(repo_id=repo_id, private=private, exist_ok=exist_ok, token=self.token)
        return RepoUrl(f"https://huggingface.co/{repo_id}")

    def create_branch(self, repo_id, *, branch, exist_ok=False, **kwargs):
        calls["create_branch"] = dict(repo_id=repo_id, branch=branch)

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        shutil.copytree(folder_path, calls["uploaded"])
        calls["upload_folder"] = dict(repo_id=repo_id, **kwargs)
        return f"https://huggingface.co/{repo_id}/commit/{'c' * 40}"

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "create_branch", create_branch)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    return calls


def test_push_uploads_the_map(capsys, map_dir, hub):
    code, out, err = run(
        capsys,
        "push",
        map_dir,
        "user/wan-map",
        "--private",
        "--revision",
        "v1",
        "--token",
        "hf_test",
        "--commit-message",
        "first map",
    )
    assert code == 0, err
    assert hub["create_repo"] == dict(repo_id="user/wan-map", private=True, exist_ok=True, token="hf_test")
    assert hub["create_branch"] == dict(repo_id="user/wan-map", branch="v1")
    upload = hub["upload_folder"]
    assert (upload["revision"], upload["commit_message"], upload["create_pr"]) == ("v1", "first map", False)
    names = {p.name for p in hub["uploaded"].iterdir()}
    assert {"config.json", "mode_map.safetensors", "README.md"} <= names
    assert SparseVDiTConfig.from_pretrained(hub["uploaded"]) == SparseVDiTConfig.from_pretrained(map_dir)
    assert "https://huggingface.co/user/wan-map/commit/" in out and "apply_sparse_vdit(pipe, 'user/wan-map')" in out


def test_push_defaults_and_pull_requests(capsys, map_dir, hub):
    code, _, err = run(capsys, "push", map_dir, "user/wan-map", "--create-pr")
    assert code == 0, err
    assert hub["create_repo"]["private"] is None and "create_branch" not in hub  # the Hub's default visibility
    assert hub["upload_folder"]["create_pr"] is True and hub["upload_folder"]["revision"] is None


def test_push_failures_say_what_to_do(capsys, map_dir, tmp_path, monkeypatch):
    def refuse(self, repo_id, **kwargs):
        raise OSError("401 Client Error: Unauthorized")

    monkeypatch.setattr(HfApi, "create_repo", refuse)
    code, _, err = run(capsys, "push", map_dir, "user/wan-map")
    assert code == 1 and "Unauthorized" in err and "hf auth login" in err
    code, _, err = run(capsys, "push", tmp_path, "user/wan-map")  # a folder without a map
    assert code == 1 and "has no config.json" in err


def test_push_without_a_network_says_so_in_one_line(capsys, map_dir, monkeypatch):
    # huggingface_hub's HTTP client raises its own connection error, which is no OSError since 1.0
    client = sys.modules[huggingface_hub.errors.HTTPError.__module__.split(".")[0]]
    connect_error = getattr(client, "ConnectError", None) or client.ConnectionError

    def unreachable(self, repo_id, **kwargs):
        raise connect_error("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(HfApi, "create_repo", unreachable)
    code, _, err = run(capsys, "push", map_dir, "user/wan-map")
    assert code == 1 and "Traceback" not in err
    assert err.startswith("sparse-vdit push: error: could not push to user/wan-map:") and "name resolution" in err
    assert "connection to the Hub" in err and len(err.splitlines()) == 2


def test_push_uploads_the_folders_own_card(capsys, map_dir, hub, tmp_path):
    folder = tmp_path / "map"
    shutil.copytree(map_dir, folder)
    # as generated: made again, with the repo id in its usage lines
    code, _, err = run(capsys, "push", folder, "user/wan-map")
    assert code == 0, err
    card = (hub["uploaded"] / "README.md").read_text()
    assert 'from_pretrained("user/wan-map")' in card and "<this repo>" in (folder / "README.md").read_text()
    # edited (the generated marker still in it): uploaded as it is
    edited = (folder / "README.md").read_text().replace("## ", "## Edited: ", 1)
    (folder / "README.md").write_text(edited)
    shutil.rmtree(hub["uploaded"])
    code, _, err = run(capsys, "push", folder, "user/wan-map")
    assert code == 0, err
    assert (hub["uploaded"] / "README.md").read_text() == edited


# evaluate ---------------------------------------------------------------------------------
def test_evaluate_prints_and_writes_the_metrics(capsys, map_dir, tmp_path):
    pytest.importorskip("torchmetrics")
    out = tmp_path / "eval"
    code, stdout, err = run(
        capsys,
        "evaluate",
        "--tiny",
        "wan",
        "--map",
        map_dir,
        "--prompt",
        "a cat walks in the city",
        "--steps",
        2,
        "--seed",
        1,
        "--backend",
        "torch",
        "--no-lpips",
        "--out",
        out,
        "-q",
    )
    assert code == 0, err
    for line in ("Sparse-vDiT evaluation: tiny wan with map", "speedup", "PSNR", "SSIM", "LPIPS  unavailable"):
        assert line in stdout
    report = json.loads((out / "report.json").read_text())
    settings = report["settings"]
    # unset sizes and guidance come from the map's calibration
    assert (settings["height"], settings["width"], settings["num_frames"], settings["seed"]) == (32, 48, 9, 1)
    assert settings["guidance_scale"] == 4.0
    assert settings["model"] == "tiny wan" and settings["map"]["source"] == str(map_dir)
    assert report["metrics"]["psnr"] > 0 and -1 <= report["metrics"]["ssim"] <= 1
    assert report["timings"]["sparse"]["total_s"] > 0 and report["speedup"]["end_to_end"] > 0
    for video in ("dense", "sparse"):
        assert (out / video).is_dir() or (out / f"{video}.mp4").is_file()


def test_evaluate_refuses_a_map_of_another_model(capsys, map_dir):
    code, _, err = run(capsys, "evaluate", "--tiny", "cogvideox", "--map", map_dir, "--prompt", "a cat", "-q")
    assert code == 1 and "made for WanTransformer3DModel" in err and "CogVideoXTransformer3DModel" in err


def test_search_of_an_image_to_video_pipeline_takes_its_picture(capsys, tmp_path):
    from diffusers_sparse_vdit.testing import tiny_image, tiny_pipeline

    model = tmp_path / "cogvideox-i2v"
    tiny_pipeline("cogvideox_i2v").save_pretrained(model)
    picture = tmp_path / "first-frame.png"
    tiny_image().save(picture)
    args = ["search", "--model", model, "--dtype", "float32", "--device", "cpu", "--height", 32, "--width", 48,
            "--frames", 9, "--steps", 2, "--tile-size", 16, "--backend", "torch", "--sample-tiles", 4,
            "--out", tmp_path / "map", "-q"]  # fmt: skip

    code, _, err = run(capsys, *args)
    assert code != 0 and "CogVideoXImageToVideoPipeline is an image-to-video pipeline" in err and "--image" in err
    code, _, err = run(capsys, *args, "--image", tmp_path / "missing.png")
    assert code != 0 and "--image" in err and "missing.png" in err
    code, _, err = run(capsys, *args, "--image", picture)
    assert code == 0, err
    assert SparseVDiTConfig.from_pretrained(tmp_path / "map").transformer_class == "CogVideoXTransformer3DModel"


# FP8 --------------------------------------------------------------------------------------------
def test_solve_with_fp8_keeps_the_heads_over_the_threshold_native(capsys, tmp_path):
    scores = random_scores(layers=3, heads=4)
    scores.fp8_errors = torch.full((1, 3, 4), 0.01, dtype=torch.float64)
    scores.fp8_errors[0, 0, 0] = 0.3
    scores.save(tmp_path / "scores")
    args = ["solve", tmp_path / "scores", "--target-speedup", 2, "--precision", "fp8", "--fp8-max-error", 0.1]
    code, _, err = run(capsys, *args, "--out", tmp_path / "map")
    assert code == 0, err
    config = SparseVDiTConfig.from_pretrained(tmp_path / "map")
    assert config.precision.sum() == 11 and config.precision[0, 0, 0] == 0
    assert config.calibration["solver"]["precision"] == "fp8" and config.calibration["solver"]["fp8_max_error"] == 0.1
    code, _, err = run(capsys, "solve", tmp_path / "scores", "--target-speedup", 2, "--out", tmp_path / "native")
    assert code == 0 and not SparseVDiTConfig.from_pretrained(tmp_path / "native").precision.any()

    random_scores().save(tmp_path / "old")  # scores without FP8 errors
    code, _, err = run(capsys, "solve", tmp_path / "old", "--target-speedup", 2, "--precision", "fp8", "--out", tmp_path / "m")
    assert code == 1 and "re-run the calibration" in err and "Traceback" not in err
    code, _, err = run(capsys, *args[:-1], -0.1, "--out", tmp_path / "m")
    assert code == 2 and "--fp8-max-error: must be a number >= 0" in err
    code, _, err = run(capsys, "solve", tmp_path / "scores", "--precision", "int8", "--out", tmp_path / "m")
    assert code == 2 and "invalid choice: 'int8'" in err


@pytest.mark.parametrize("command", ["search", "solve", "evaluate"])
def test_precision_is_in_the_help(capsys, command):
    code, stdout, _ = run(capsys, command, "--help")
    assert code == 0 and "--precision" in stdout and "fp8" in stdout


def test_evaluate_runs_the_map_in_fp8(capsys, map_dir, tmp_path):
    pytest.importorskip("torchmetrics")
    code, stdout, err = run(capsys, "evaluate", "--tiny", "wan", "--map", map_dir, "--prompt", "a cat", "--steps", 1,
                            "--backend", "torch", "--no-lpips", "--no-warmup", "--precision", "fp8",
                            "--out", tmp_path / "eval", "-q")
    assert code == 0, err
    assert json.loads((tmp_path / "eval" / "report.json").read_text())["settings"]["map"]["precision"] == "fp8"
