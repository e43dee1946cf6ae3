"""ab_kernels loads a kernel file as a module of the package (so its relative imports resolve), under its own name."""

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import ab_kernels  # noqa: E402


def test_a_copied_kernel_file_loads_as_a_package_module(tmp_path):
    pytest.importorskip("triton.experimental.gluon")
    copy = tmp_path / "old_gluon_sparse.py"
    copy.write_text((ROOT / "diffusers_sparse_vdit/kernels/gluon_sparse.py").read_text())
    module = ab_kernels.load_variant(str(copy), "test")
    assert module.__name__ == "diffusers_sparse_vdit.kernels._ab_test"
    assert module.__file__ == str(copy)
    from diffusers_sparse_vdit.kernels import gluon_sparse

    assert module.sparse_attention_gluon is not gluon_sparse.sparse_attention_gluon  # its own copy
    assert module.gluon_config(128) == gluon_sparse.gluon_config(128)


def test_it_needs_a_gpu(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["ab_kernels.py", "--kind", "bf16", "--a", "x.py", "--b", "y.py"])
    monkeypatch.setattr(ab_kernels.torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="needs a CUDA GPU"):
        ab_kernels.main()
