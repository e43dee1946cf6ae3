"""The example scripts and the quickstart notebook run end to end in tiny mode."""

import importlib.util
import os
from pathlib import Path

import pytest

from diffusers_sparse_vdit import SparseVDiTConfig

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
NOTEBOOK = EXAMPLES / "sparse_vdit_quickstart.ipynb"
needs_runner = pytest.mark.skipif(
    importlib.util.find_spec("diffusers_sparse_vdit.search.runner") is None,
    reason="the calibration runner (diffusers_sparse_vdit/search/runner.py) is not in this tree",
)


def load_example(name: str, monkeypatch):
    """Import examples/<name>.py as a module (it imports its neighbour _common, as when run as a script)."""
    monkeypatch.syspath_prepend(str(EXAMPLES))
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@needs_runner
@pytest.mark.parametrize(
    "name, family", [("wan", "wan"), ("hunyuan_video", "hunyuan_video"), ("cogvideox", "cogvideox")]
)
def test_example_runs_tiny(name, family, tmp_path, monkeypatch, capsys):
    example = load_example(name, monkeypatch)
    out = example.main(["--tiny", "--steps", "2", "--backend", "torch", "--out", str(tmp_path)])
    assert SparseVDiTConfig.from_pretrained(out / "map").family == family
    assert (out / "sparse").is_dir() or (out / "sparse.mp4").is_file()
    stdout = capsys.readouterr().out
    assert "Sparse-vDiT search" in stdout and "generated 9 frames" in stdout


@needs_runner
def test_example_compares_dense_and_sparse(tmp_path, monkeypatch, capsys):
    pytest.importorskip("torchmetrics")
    example = load_example("wan", monkeypatch)
    example.main(["--tiny", "--steps", "2", "--backend", "torch", "--compare", "--out", str(tmp_path)])
    assert (tmp_path / "compare" / "report.json").is_file()
    assert "PSNR" in capsys.readouterr().out


@needs_runner  # the examples import it
def test_examples_point_at_the_real_checkpoints(monkeypatch):
    models = {name: load_example(name, monkeypatch) for name in ("wan", "hunyuan_video", "cogvideox")}
    assert models["wan"].WAN.model == "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"
    assert models["hunyuan_video"].HUNYUAN_VIDEO.model == "hunyuanvideo-community/HunyuanVideo"
    assert models["cogvideox"].COGVIDEOX.model == "THUDM/CogVideoX1.5-5B"


def test_notebook_is_committed_without_outputs():
    nbformat = pytest.importorskip("nbformat")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code and all(not cell.outputs and cell.execution_count is None for cell in code)
    assert any("TINY = True" in cell.source for cell in code)  # the marked switch to the real model


@needs_runner
def test_notebook_runs_tiny(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    pytest.importorskip("torchmetrics")
    # the kernel is a new process: let it import this tree's package even when it is not installed
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()  # raises CellExecutionError with the cell's traceback if any cell fails
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    text = "".join(output.get("text", "") for output in outputs)
    assert "Sparse-vDiT search" in text and "PSNR" in text
    assert sum("image/png" in output.get("data", {}) for output in outputs) == 2  # heatmap, frames side by side
    assert SparseVDiTConfig.from_pretrained(tmp_path / "wan-sparse-vdit-map").family == "wan"
