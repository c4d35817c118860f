"""Shared pytest fixtures."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

SDSS_BANDS = ("sdss2010-u", "sdss2010-g", "sdss2010-r", "sdss2010-i", "sdss2010-z")
GALEX_BANDS = ("galex-fuv", "galex-nuv")

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture
def one_torch_thread():
    """One torch thread for the test (the trainer tests time and compare runs; set per module with
    ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def sdss_model():
    """An SPSModel for SDSS ugriz on the CPU (float32)."""
    from engine.sps import SPSModel

    return SPSModel(SDSS_BANDS, device="cpu")


@pytest.fixture(scope="session")
def sdss_galex_model():
    """An SPSModel for SDSS ugriz + GALEX FUV/NUV on the CPU (float32)."""
    from engine.sps import SPSModel

    return SPSModel(SDSS_BANDS + GALEX_BANDS, device="cpu")


def uniform_theta(model, n: int, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    """θ drawn uniformly from a model's parameter box."""
    g = torch.Generator().manual_seed(seed)
    b = model.bounds.cpu().to(dtype)
    return b[:, 0] + (b[:, 1] - b[:, 0]) * torch.rand(n, b.shape[0], generator=g, dtype=dtype)


@pytest.fixture(scope="module")
def browser():
    """Headless Debian chromium through playwright (``tests/browser.py``), one per test module."""
    from playwright.sync_api import sync_playwright

    from browser import launch_browser

    with sync_playwright() as p, launch_browser(p) as b:
        yield b
