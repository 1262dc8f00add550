"""Loss tests work on tensors of a few dozen elements: one intra-op thread avoids thread start-up and
contention costs that dominate at that size on a shared 2-core machine. The previous setting is restored."""
import pytest
import torch


@pytest.fixture(autouse=True)
def _single_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
