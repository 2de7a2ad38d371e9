"""``python tests/helpers/slow_tiny_sample.py ROOT [sample.py options]``, run in ROOT: jukebox/sample.py with the
tiny model registered from ROOT, each window slowed by ``$WINDOW_DELAY`` seconds and logged to
``windows_{rank}.log``, and the process id in ``runner_{rank}.pid``, so that a test can kill it mid-level."""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests folder, for `helpers`

from helpers.tiny_model import register  # noqa: E402
from jukebox import sample  # noqa: E402
from jukebox.inference import schedule  # noqa: E402

RANK = os.environ.get("PMI_RANK", "0")
DELAY = float(os.environ.get("WINDOW_DELAY", "0"))
_sample_window = schedule.sample_window


def slow_logged_window(zs, labels, kwargs, level, *args, **kw):
    time.sleep(DELAY)
    with open(f"windows_{RANK}.log", "a") as f:
        f.write(f"{level}\n")
    return _sample_window(zs, labels, kwargs, level, *args, **kw)


if __name__ == "__main__":
    register(Path(sys.argv[1]))
    torch.set_num_threads(1)
    Path(f"runner_{RANK}.pid").write_text(str(os.getpid()))
    schedule.sample_window = slow_logged_window
    sample.main(sys.argv[2:])
