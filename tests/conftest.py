"""Shared fixtures: small models with hand-set weights."""

from __future__ import annotations

import os
from collections.abc import Iterator

if os.environ.get("PYTEST_XDIST_WORKER"):
    # Under pytest-xdist two workers share this machine's cores: a torch thread pool per worker as wide as the machine
    # oversubscribes it, and OpenMP's spinning threads then cost more than they give. One thread each, also for the
    # processes a test starts (they inherit the variable). Ray's workers get their own count from their CPU share.
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest
import torch
from torch import nn

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


class TwoConvNet(nn.Module):
    """conv a (3->4, 3x3, bias), conv b (4->4 depthwise), conv c (4->8, 1x1), linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.b = nn.Conv2d(4, 4, 3, padding=1, groups=4, bias=False)
        self.c = nn.Conv2d(4, 8, 1, bias=False)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.a(x)))
        x = torch.relu(self.c(self.b(x)))
        return self.head(x.mean(dim=(2, 3)))


@pytest.fixture(autouse=True, scope="session")
def _cache_in_a_temporary_directory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Decoded caches and the nodes' file indexes of the tests go to a temporary directory, not the developer's ~/.cache.

    A test that needs its own sets ``NEQ_CACHE`` itself; processes a test starts inherit this one.
    """
    previous = os.environ.get("NEQ_CACHE")
    os.environ["NEQ_CACHE"] = str(tmp_path_factory.mktemp("neq-cache"))
    yield
    if previous is None:
        os.environ.pop("NEQ_CACHE", None)
    else:
        os.environ["NEQ_CACHE"] = previous


@pytest.fixture(autouse=True)
def _restore_torch_threads() -> Iterator[None]:
    """Tests that pin torch's thread count must not change it for the tests after them."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def small_net() -> TwoConvNet:
    torch.manual_seed(0)
    return TwoConvNet()
