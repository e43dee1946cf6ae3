"""bench_e2e's dense baseline hands masked calls to the fast kernels only when the mask keeps a key prefix."""

import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench_e2e():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import bench_e2e

        yield bench_e2e
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


def test_key_prefix_lengths(bench_e2e):
    mask = torch.zeros(2, 1, 1, 10, dtype=torch.bool)
    mask[0, ..., :7] = True
    mask[1, ..., :4] = True
    assert bench_e2e.key_prefix_lengths(mask, 2, 10).tolist() == [7, 4]
    mask[1, ..., 8] = True  # a hole: not a prefix
    assert bench_e2e.key_prefix_lengths(mask, 2, 10) is None
    assert bench_e2e.key_prefix_lengths(torch.ones(2, 1, 10, 10, dtype=torch.bool), 2, 10) is None  # per-query mask
    assert bench_e2e.key_prefix_lengths(None, 2, 10) is None
