"""``python tests/helpers/tiny_sample.py ROOT [sample.py options]``: jukebox/sample.py's command line with the
tiny model of ``helpers.tiny_model`` registered from the checkpoints in ROOT."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests folder, for `helpers`

from helpers.tiny_model import register  # noqa: E402
from jukebox import sample  # noqa: E402

if __name__ == "__main__":
    register(Path(sys.argv[1]))
    sample.main(sys.argv[2:])
