"""Hostile files for the safety tests: pickles that run code when loaded the unsafe way."""
from __future__ import annotations

import os
import pathlib
import pickle
import shlex

import torch


class _RunsCode:
    """Unpickles by calling ``call[0](*call[1])``: what a hostile checkpoint does."""

    def __init__(self, call: tuple) -> None:
        self.call = call

    def __reduce__(self) -> tuple:
        return self.call


CRAFTS = ["touch_zip", "system_legacy_torch", "system_pickle2", "touch_pickle5"]


def craft(path: pathlib.Path, marker: pathlib.Path, how: str) -> pathlib.Path:
    """Write a file that creates ``marker`` when unpickled; it also looks like a checkpoint and a data.pth.tar."""
    touch = _RunsCode((pathlib.Path.touch, (marker,)))
    system = _RunsCode((os.system, (f"touch {shlex.quote(str(marker))}",)))
    payload = touch if how.startswith("touch") else system
    state = {"model": {"w": payload}, "zs": [payload], "step": 0, "settings": "{}"}
    path.parent.mkdir(parents=True, exist_ok=True)
    if how == "touch_zip":
        torch.save(state, path)
    elif how == "system_legacy_torch":
        torch.save(state, path, _use_new_zipfile_serialization=False)
    else:
        with open(path, "wb") as f:
            pickle.dump(state, f, protocol=2 if how == "system_pickle2" else 5)
    return path
