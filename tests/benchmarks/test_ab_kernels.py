"""ab_kernels loads a kernel file as a module of the package (so its relative imports resolve), under its own name."""

import sys
from pathlib import Path

import pytest

from . import load_benchmark

ROOT = Path(__file__).resolve().parents[2]
ab_kernels = load_benchmark("ab_kernels")


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


def test_differing_fp8_counts_the_quantized_heads_entries_that_differ():
    import torch

    want = {key: torch.zeros(1, 3, 4, 8).to(torch.float8_e4m3fn) for key in ("k8", "vt8")}
    got = {key: value.clone() for key, value in want.items()}
    got["k8"][0, 1, 0, :2] = 1.0  # two of the 2 x 32 entries of head 1
    got["vt8"][0, 2, 0, 0] = 1.0  # head 2 is not compared
    assert ab_kernels.differing_fp8(got, want, [1]) == 2 / 64
    assert ab_kernels.differing_fp8(want, want, [0, 1, 2]) == 0.0


def test_several_candidates_need_a_gpu_too(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["ab_kernels.py", "--kind", "quantize", "--a", "x.py", "--b", "y.py", "z.py"])
    monkeypatch.setattr(ab_kernels.torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="needs a CUDA GPU"):
        ab_kernels.main()
