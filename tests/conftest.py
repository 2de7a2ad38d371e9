"""Where the test data lives, loading of the reference fixtures, and the released id tables' switch.

Everything the suite reads is in the repository (``tests/reference``, ``tests/data``), except OpenAI's
artist/genre tables of the released models: tests that need them read ``$JUKEBOX_IDS_DIR`` and skip without it.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
TESTS = REPO / "tests"
REFERENCE = TESTS / "reference"
FIXTURES = REFERENCE / "fixtures"
MANIFESTS = REFERENCE / "manifests"
DATA = TESTS / "data"
HELPERS = TESTS / "helpers"
# Made-up tables in the released format (tests/data/README.md): for tests that need some tables, not OpenAI's.
IDS_DIR = DATA / "ids"

_RELEASED_TABLES = [f"{v}_{kind}_ids.txt" for v in ("v2", "v3") for kind in ("artist", "genre")]


def _released_ids_dir() -> Path | None:
    value = os.environ.get("JUKEBOX_IDS_DIR")
    if not value:
        return None
    path = Path(value).expanduser()
    missing = [name for name in _RELEASED_TABLES if not (path / name).is_file()]
    if missing:
        raise pytest.UsageError(f"JUKEBOX_IDS_DIR={value} lacks {', '.join(missing)}; point it at a folder with "
                                "all four released tables, or unset it")
    return path


RELEASED_IDS_DIR = _released_ids_dir()
requires_released_ids = pytest.mark.skipif(
    RELEASED_IDS_DIR is None,
    reason="needs OpenAI's released artist/genre tables (v2_/v3_artist_ids.txt, v2_/v3_genre_ids.txt from the "
           "original repository's jukebox/data/ids/): set JUKEBOX_IDS_DIR to the folder that holds them")

# The mpiexec that `pip install mpi4py mpich` puts beside this Python; tests that launch ranks need it.
MPIEXEC = Path(sys.executable).parent / "mpiexec"
requires_mpiexec = pytest.mark.skipif(not MPIEXEC.exists(), reason="mpiexec is not installed beside this Python "
                                      "(pip install mpi4py mpich)")

# The released tables are never fetched by the suite: the address below refuses at once.
os.environ.setdefault("JUKEBOX_IDS_URL", "http://127.0.0.1:9/")


def env_importing(*folders: Path, **extra: str) -> dict[str, str]:
    """This process's environment for a subprocess that imports from ``folders`` first, keeping the
    PYTHONPATH it already has (an install outside the virtual environment may rely on it)."""
    env = {**os.environ, **extra}
    env["PYTHONPATH"] = os.pathsep.join([*map(str, folders), *filter(None, [env.get("PYTHONPATH")])])
    return env


def load_fixture(name: str) -> dict:
    """Load ``tests/reference/fixtures/<name>.pt`` (plain tensors and containers only)."""
    return torch.load(FIXTURES / f"{name}.pt", weights_only=True, map_location="cpu")


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


@pytest.fixture(autouse=True, scope="session")
def _calibration_cache(tmp_path_factory):
    """CPU step plans calibrate their backend once per shape (jukebox.inference.cpu_backends): into a file of
    the test session, not the user's cache."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("JUKEBOX_CPU_CALIBRATION", str(tmp_path_factory.mktemp("calibration") / "cpu_backends.json"))
        yield


@pytest.fixture(autouse=True)
def _deterministic_threads():
    # The reference outputs were produced with 2 threads; fix the count so reductions are stable.
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def one_thread(_deterministic_threads):
    """One CPU thread (modules of tiny models: thread hand-offs cost more than they save); the count is
    restored after the test. Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    torch.set_num_threads(1)
