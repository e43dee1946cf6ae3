"""The harness that runs diffusers' own tests with our maps: its plugin installs them, its runner compares."""

import importlib.util
from pathlib import Path

import pytest
import torch

from diffusers_sparse_vdit import Mode
from diffusers_sparse_vdit.config import FAMILIES
from diffusers_sparse_vdit.processors import SparseAttnProcessor, get_sparse_vdit_hook
from diffusers_sparse_vdit.testing import tiny_transformer, tiny_transformer_inputs

HARNESS = Path(__file__).resolve().parents[2] / "benchmarks" / "diffusers_suites"


def load(name):
    spec = importlib.util.spec_from_file_location(name, HARNESS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def patched(monkeypatch):
    """install_on_construction, undone after the test (monkeypatch restores each class's __init__)."""
    import diffusers

    plugin = load("sparse_vdit_suite")
    for name in (n for names in FAMILIES.values() for n in names):
        cls = getattr(diffusers, name)
        monkeypatch.setattr(cls, "__init__", cls.__init__)
    return plugin.install_on_construction


@pytest.mark.parametrize("variant", ["wan", "hunyuan_video", "cogvideox"])
def test_every_transformer_built_gets_the_map_and_runs(patched, variant):
    patched("mixed")
    model = tiny_transformer(variant)
    hook = get_sparse_vdit_hook(model)
    assert hook is not None and hook.backend == "torch"
    assert set(Mode) <= {Mode(int(m)) for m in hook.config.modes.flatten()}  # all five modes in play
    assert all(isinstance(p, SparseAttnProcessor) for p in hook.processors) and hook.processors
    rebuilt = type(model).from_config(model.config)  # ConfigMixin still reads __init__'s signature
    assert get_sparse_vdit_hook(rebuilt) is not None
    with torch.no_grad():
        out = model(**tiny_transformer_inputs(model))[0]
    assert torch.isfinite(out).all()


def test_full_map_is_all_full(patched):
    patched("full")
    config = get_sparse_vdit_hook(tiny_transformer("wan")).config
    assert (config.modes == int(Mode.FULL)).all()


def test_an_unknown_map_name_is_refused():
    plugin = load("sparse_vdit_suite")
    with pytest.raises(ValueError, match="SPARSE_VDIT_SUITE_MAP='dense'"):
        plugin.suite_map(tiny_transformer("wan"), "dense")


def test_compare_reports_only_tests_that_pass_stock_and_classifies_them():
    run = load("run")

    def outcomes(**by_test):
        return {"seconds": 1.0, "exit": 1, "tests": {
            t: {"outcome": o, "message": m, "seconds": 0.1, "maps": 1} for t, (o, m) in by_test.items()
        }}

    runs = {
        "stock": outcomes(a=("passed", ""), b=("failed", "OSError: offline"), c=("passed", ""), d=("passed", "")),
        "full": outcomes(a=("passed", ""), c=("passed", ""), d=("passed", "")),
        "mixed": outcomes(
            a=("failed", "AssertionError: not close"),
            c=("failed", "RuntimeError: sparse_attention computes the forward pass only (inference)"),
            d=("passed", ""),
        ),
    }
    result = run.compare(runs, ["f.py"], [])
    assert [(r["test"], r["map"], r["class"]) for r in result["regressions"]] == [
        ("a", "mixed", "unexplained"), ("c", "mixed", "training"),
    ]
    assert result["unexplained"] == result["regressions"][:1]
    assert result["runs"]["stock"]["counts"] == {"failed": 1, "passed": 3}
    assert "| `a` | mixed | failed | unexplained |" in run.table(result)
