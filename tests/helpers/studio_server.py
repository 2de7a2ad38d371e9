"""``python tests/helpers/studio_server.py ROOT [studio options]``: ``python -m jukebox.studio`` with the tiny model
of ``helpers.tiny_model`` registered from the checkpoints in ROOT (a server the tests can kill and restart)."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests folder, for `helpers`

from helpers.tiny_model import register  # noqa: E402
from jukebox.studio.__main__ import serve  # noqa: E402
from jukebox.utils.cli import fire_command  # noqa: E402

if __name__ == "__main__":
    register(Path(sys.argv[1]))
    fire_command(serve, sys.argv[2:], prog="studio_server.py")
