"""Shared pytest setup: import njet_convert first so torchvision/timm import on CPU-only torch (DESIGN §6)."""

import pytest
import torch

import njet_convert  # noqa: F401  (installs the torchvision import guard)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
