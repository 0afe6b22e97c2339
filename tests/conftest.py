import os

# Triton kernels run on the CPU through the interpreter; this must be set before any kernel module
# is imported, which is why it sits at the top of the conftest.
os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield


@pytest.fixture
def nan_empty(monkeypatch):
    """Fill tensors from torch.empty / empty_like with NaN, so an output a kernel forgets to write fails."""
    real_empty, real_empty_like = torch.empty, torch.empty_like

    def empty(*args, **kwargs):
        t = real_empty(*args, **kwargs)
        return t.fill_(float("nan")) if t.is_floating_point() else t

    def empty_like(*args, **kwargs):
        t = real_empty_like(*args, **kwargs)
        return t.fill_(float("nan")) if t.is_floating_point() else t

    monkeypatch.setattr(torch, "empty", empty)
    monkeypatch.setattr(torch, "empty_like", empty_like)
    yield


# Tests use small tensors: one thread avoids oversubscription when the suite shares the machine.
torch.set_num_threads(1)
