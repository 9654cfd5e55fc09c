import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    """Benchmarks run on one intra-op thread: the targets are per-core figures,
    and the shared 2-core machines are too noisy for parallel timings."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
