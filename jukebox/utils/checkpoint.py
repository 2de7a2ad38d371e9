"""Checkpoint files: atomic saving, safe loading (tensors and plain containers only) and
state_dict loading that names every mismatch.

A checkpoint is a dict such as ``{'hps', 'model', 'opt', 'step', ...}`` written with
``torch.save``; ``model`` is a state_dict. Loading never unpickles arbitrary objects.
"""
from __future__ import annotations

import os
import pickle
import re
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn as nn

from jukebox.hparams import Hyperparams
from jukebox.utils.atomic import atomic_write

__all__ = ["CheckpointError", "save_checkpoint", "load_checkpoint", "strip_module_prefix", "state_dict_problems",
           "load_state_dict_checked"]

_MODULE_PREFIX = "module."
# How torch's weights-only unpickler names a global it refuses (zip and legacy formats word it differently).
_REFUSED_GLOBAL = re.compile(r"(?:Unsupported global: |unsupported GLOBAL )(?:GLOBAL )?([\w.]+)")


class CheckpointError(RuntimeError):
    """A checkpoint file could not be read, or does not fit the model."""


def _plain(obj: Any) -> Any:
    """``Hyperparams`` (inside plain dicts/lists) as plain dicts, so the file loads with no custom class.
    State dicts (OrderedDict) are left alone to keep their ``_metadata``."""
    if isinstance(obj, Hyperparams) or type(obj) is dict:
        return {k: _plain(v) for k, v in obj.items()}
    if type(obj) is list:
        return [_plain(v) for v in obj]
    return obj


def save_checkpoint(path: str | os.PathLike, state: Mapping[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically (a temporary file in the same folder, then a rename)."""
    with atomic_write(path, fsync=True) as f:
        torch.save(_plain(dict(state)), f)


def strip_module_prefix(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Drop the leading ``module.`` that DistributedDataParallel adds to every key."""
    return {(k[len(_MODULE_PREFIX):] if k.startswith(_MODULE_PREFIX) else k): v for k, v in state_dict.items()}


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint dict onto the CPU with ``weights_only=True``.

    ``Hyperparams`` (the original's ``hps`` entry) is the only custom class allowed. A leading
    ``module.`` is stripped from the keys of the ``model`` entry.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist; check the path (restore_vqvae / restore_prior)")
    try:
        with torch.serialization.safe_globals([Hyperparams]):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        refused = _REFUSED_GLOBAL.search(str(e))
        if refused:
            detail = f"GLOBAL {refused.group(1)}"
            raise CheckpointError(
                f"{path!r} contains a Python object ({detail}) other than tensors and plain containers; refusing "
                "to unpickle it (weights_only=True). Re-save the checkpoint with only tensors, numbers, strings "
                "and dicts/lists/tuples."
            ) from None
        raise CheckpointError(f"{path!r} is not a PyTorch checkpoint that loads safely (unreadable pickle data, or "
                              "objects other than tensors and plain containers); refusing to unpickle it") from None
    except (RuntimeError, EOFError, KeyError, ValueError, OSError) as e:
        raise CheckpointError(f"{path!r} is not a readable PyTorch checkpoint (truncated or another format?): "
                              f"{type(e).__name__}: {e}") from None
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"{path!r} holds a {type(checkpoint).__name__}, expected a dict checkpoint")
    if isinstance(checkpoint.get("model"), Mapping):
        checkpoint["model"] = strip_module_prefix(checkpoint["model"])
    return checkpoint


def _listing(names: list[str], limit: int = 20) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def state_dict_problems(expected: Mapping[str, torch.Tensor], state_dict: Mapping[str, torch.Tensor]) -> list[str]:
    """Missing keys, unexpected keys and shape mismatches of ``state_dict`` against ``expected``, in words
    (empty when it fits)."""
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [f"{k} (checkpoint {tuple(state_dict[k].shape)}, model {tuple(v.shape)})"
                  for k, v in expected.items()
                  if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)]
    problems = []
    if missing:
        problems.append(f"missing keys: {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_listing(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatches: {_listing(mismatched)}")
    return problems


def load_state_dict_checked(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> None:
    """``model.load_state_dict`` after checking that keys and shapes match exactly; any missing
    or unexpected key and any shape mismatch is reported by name in one :class:`CheckpointError`."""
    state_dict = strip_module_prefix(state_dict)
    problems = state_dict_problems(model.state_dict(), state_dict)
    if problems:
        raise CheckpointError(f"checkpoint does not fit {type(model).__name__} (were the hps the same as when it "
                              f"was saved?): " + "; ".join(problems))
    model.load_state_dict(state_dict, strict=True)
