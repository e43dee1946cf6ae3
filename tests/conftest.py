"""Test set-up: without CUDA, Triton kernels run on CPU tensors under the interpreter.

TRITON_INTERPRET must be set before any @triton.jit function is defined, so it is set here,
before the package is imported.
"""

import os

import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    # fresh but reproducible random inputs per test
    torch.manual_seed(int.from_bytes(os.urandom(2), "little") if os.environ.get("SPARSE_VDIT_RANDOM_SEED") else 0)
    yield


@pytest.fixture(autouse=True)
def _logs_reach_caplog():
    # the package logs under diffusers' library logger, which does not propagate to the root
    # logger where pytest's caplog listens (per test: a test may switch it back off)
    from diffusers.utils import logging

    logging.enable_propagation()
    yield


def pytest_collection_modifyitems(config, items):
    if not os.environ.get("SPARSE_VDIT_SLOW"):
        slow = pytest.mark.skip(reason="slow: set SPARSE_VDIT_SLOW=1 to run")
        for item in items:
            if "slow" in item.keywords:
                item.add_marker(slow)
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
