"""Shared test helpers: where ../shared is, and loading of the reference fixtures."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("JUKEBOX_SHARED", REPO.parent / "shared"))
REFERENCE = SHARED / "reference"
FIXTURES = REFERENCE / "fixtures"
MANIFESTS = REFERENCE / "manifests"
IDS_DIR = REFERENCE / "ids"
DATA = SHARED / "data"

# Tests never reach the internet: released id tables would come from this unreachable address.
os.environ.setdefault("JUKEBOX_IDS_URL", "http://127.0.0.1:9/")


def load_fixture(name: str) -> dict:
    """Load ``reference/fixtures/<name>.pt`` (plain tensors and containers only)."""
    path = FIXTURES / f"{name}.pt"
    if not path.exists():
        pytest.fail(f"reference fixture {path} is missing: tests need ../shared beside the checkout")
    return torch.load(path, weights_only=True, map_location="cpu")


def randomize_weights(module: torch.nn.Module, seed: int) -> None:
    """Weights with O(1) activations and attention scores, so every attention pattern visibly matters."""
    import math
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith(".w"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.7 / math.sqrt(p.shape[0]))
            elif "ln_" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))


@pytest.fixture(autouse=True)
def _deterministic_threads():
    # The reference outputs were produced with 2 threads; fix the count so reductions are stable.
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(previous)
