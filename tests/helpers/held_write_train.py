"""``python tests/helpers/held_write_train.py [train.py options]``: jukebox/train.py, except that once the file
``hold_writes`` exists in the working folder the next checkpoint write is held before its temporary file is
synced (and ``in_write`` says so), so that a kill lands in the middle of it. Finds file names through /proc."""
from __future__ import annotations

import os
import time
from pathlib import Path

from jukebox import train
from jukebox.utils.cli import fire_command

_fsync = os.fsync


def held_fsync(fd: int) -> None:
    writing = os.readlink(f"/proc/self/fd/{fd}")  # a checkpoint's temporary file, not e.g. TensorBoard's
    if Path("hold_writes").exists() and writing.endswith(".tmp"):
        Path("in_write").touch()
        time.sleep(120)
    _fsync(fd)


if __name__ == "__main__":
    os.fsync = held_fsync
    fire_command(train.run, prog="python jukebox/train.py")
