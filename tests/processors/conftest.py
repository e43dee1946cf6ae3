import os

import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread_per_xdist_worker():
    # `-n 2` on 2 cores: two workers with torch's default thread pools oversubscribe the CPU
    # and the tiny models' many small ops run several times slower.
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))
    yield
