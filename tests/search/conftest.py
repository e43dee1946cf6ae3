import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    # The search tests run many small ops; torch's intra-op threads only contend for the
    # cores that pytest-xdist workers already share.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
