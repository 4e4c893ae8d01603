"""Shared pytest setup: import njet_convert first so torchvision/timm import on CPU-only torch (docs/design.md,
"Import cost")."""

import os

import pytest
import torch

import njet_convert  # noqa: F401  (installs the torchvision import guard)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(autouse=True, scope="session")
def _one_thread_per_xdist_worker() -> None:
    """`make test` runs 2 xdist workers on 2 cores: one torch thread each (a second thread would mostly spin)."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        torch.set_num_threads(1)


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a whole module, also outside xdist (the shared machines have 2 cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
