"""Fixtures for the top-k kernel tests: tie-free data, and the compiled CPU extension built once."""
from __future__ import annotations

import pytest
import torch


def _unit_rows(n: int, d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    return x / x.norm(dim=1, keepdim=True)


@pytest.fixture(scope="session")
def unit_rows():
    """``unit_rows(n, d, seed)``: random unit-norm rows; scores lie in [-1, 1] and exact ties have probability ~0."""
    return _unit_rows


@pytest.fixture(scope="session")
def cpu_ext():
    """The compiled CPU extension; the first use on a fresh machine compiles it (about a minute)."""
    from jmlr.kernels.topk import cpu_backend

    ext = cpu_backend.load_extension()
    if ext is None:
        pytest.skip(f"compiled CPU kernels unavailable here: {cpu_backend.unavailable_reason()}")
    return ext


@pytest.fixture(scope="session")
def cpu_features(cpu_ext):
    from jmlr.kernels.topk import cpu_backend

    return cpu_backend.features()
