import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    """These tests run tiny models: intra-op threads only add contention on a shared 2-core machine
    (measured: a 3.5 s test takes 0.16 s with one thread under load)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
