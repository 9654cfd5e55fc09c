import pytest
import torch

CUDA = torch.cuda.is_available()

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")]),
]


@pytest.fixture(params=DEVICES)
def device(request):
    """Every test that takes `device` runs on CPU, and on CUDA where a GPU exists."""
    return request.param
