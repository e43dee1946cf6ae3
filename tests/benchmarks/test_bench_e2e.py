"""bench_e2e's dense baseline hands masked calls to the fast kernels only when the mask keeps a key prefix."""

import sys

import pytest
import torch

from . import load_benchmark


@pytest.fixture(scope="module")
def bench_e2e():
    return load_benchmark("bench_e2e")


def test_key_prefix_lengths(bench_e2e):
    mask = torch.zeros(2, 1, 1, 10, dtype=torch.bool)
    mask[0, ..., :7] = True
    mask[1, ..., :4] = True
    assert bench_e2e.key_prefix_lengths(mask, 2, 10).tolist() == [7, 4]
    mask[1, ..., 8] = True  # a hole: not a prefix
    assert bench_e2e.key_prefix_lengths(mask, 2, 10) is None
    assert bench_e2e.key_prefix_lengths(torch.ones(2, 1, 10, 10, dtype=torch.bool), 2, 10) is None  # per-query mask
    assert bench_e2e.key_prefix_lengths(None, 2, 10) is None


@pytest.mark.parametrize("variant", ["wan", "hunyuan_video"])
def test_the_fastest_dense_baseline_takes_diffusers_own_attention_calls(bench_e2e, monkeypatch, variant):
    """diffusers' native backend calls SDPA with enable_gqa=False: the baseline must still route those calls."""
    import torch.nn.functional as F

    from diffusers_sparse_vdit.testing import tiny_transformer, tiny_transformer_inputs

    routed, sdpa = [], F.scaled_dot_product_attention  # the real one: the baseline patches F's

    def fake_fast(backend, query, key, value, lengths):
        routed.append(lengths)
        mask = None if lengths is None else (torch.arange(key.shape[-2])[None, :] < lengths[:, None])[:, None, None, :]
        return sdpa(query, key, value, attn_mask=mask)

    monkeypatch.setattr(bench_e2e, "choose_dense_backend", lambda *a, **k: "fa3")
    monkeypatch.setattr(bench_e2e, "dense_attention_fast", fake_fast)
    transformer = tiny_transformer(variant)
    inputs = tiny_transformer_inputs(transformer)
    with torch.no_grad():
        stock = transformer(**inputs)[0]
        with bench_e2e.fastest_dense():
            fast = transformer(**inputs)[0]
    assert routed, "no attention call reached the fast kernel"
    if variant == "hunyuan_video":  # the padded prompt's key mask became per-item key counts
        assert any(lengths is not None for lengths in routed)
    torch.testing.assert_close(fast, stock, atol=1e-5, rtol=1e-5)


def test_frontier_density_reads_the_committed_quality_frontier(bench_e2e):
    # docs/search.md: the default recipe's PSNR is 21.1 / 19.7 dB at density 0.35 / 0.25 (Wan),
    # 22.8 / 18.4 at 0.45 / 0.35 (CogVideoX), 20.6 / 18.3 at 0.35 / 0.25 (HunyuanVideo)
    assert bench_e2e.frontier_density("wan", 20.0) == pytest.approx(0.35, abs=1e-3)
    assert bench_e2e.frontier_density("cogvideox", 20.0) == pytest.approx(0.45, abs=1e-3)
    assert bench_e2e.frontier_density("hunyuan_video", 20.0) == pytest.approx(0.35, abs=1e-3)
    assert bench_e2e.frontier_density("wan", 40.0) is None


def test_sparse_row_is_against_the_fastest_dense_of_the_run(bench_e2e, capsys):
    common = {"ms_fastest_dense": 600.0, "ms_stock_default": 900.0, "attention_share": 0.5}

    class Map:
        def mode_counts(self):
            return {"FULL": 1}

    row = bench_e2e.sparse_row(common, "paper", Map(), 0.5, 400.0)
    assert row["speedup_vs_fastest_dense"] == 1.5 and row["speedup_vs_stock_default"] == 2.25
    assert row["amdahl_bound"] == pytest.approx(1 / 0.75) and row["map"] == "paper"
    assert "1.50x vs fastest dense" in capsys.readouterr().out


def test_precisions_are_checked_before_any_gpu_work(bench_e2e, monkeypatch, capsys):
    assert bench_e2e.precisions("native, fp8,fp8") == ["native", "fp8"]
    monkeypatch.setattr(sys, "argv", ["bench_e2e.py", "--precision", "native,int8"])
    with pytest.raises(SystemExit):
        bench_e2e.main()
    assert "unknown precision int8" in capsys.readouterr().err


def test_an_fp8_row_compares_with_the_same_map_in_16_bits(bench_e2e):
    from diffusers_sparse_vdit import ModeSpec, SparseVDiTConfig

    config = SparseVDiTConfig.from_specs([[ModeSpec.full()] * 2], family="wan", target_modules=["blocks.0.attn1"])
    common = {"ms_fastest_dense": 100.0, "ms_stock_default": 150.0, "attention_share": 0.5}
    row = bench_e2e.sparse_row(common, "paper", config, 0.5, 60.0, "fp8", t_native=75.0)
    assert row["precision"] == "fp8" and row["speedup_vs_native"] == pytest.approx(1.25)
    assert row["amdahl_bound"] == pytest.approx(1 / 0.75) and row["speedup_vs_fastest_dense"] == pytest.approx(100 / 60)
