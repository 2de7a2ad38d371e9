"""The JukeMIR recipe in one place: how audio becomes the windows of codes a prior encodes, and the
conditioning it encodes them under.

* audio: the model's rate, mixed to mono, divided by its peak absolute value (when non-zero);
* windows: ``n_ctx`` top-level codes each, made from the window's audio and ``lookahead_seconds`` more (the codes
  near a window's end see the audio just after it, as the VQ-VAE's encoder is not causal; for the 5b, whose window is
  2**20 samples at 44.1 kHz, that is JukeMIR's first 25 s); the first window only
  (JukeMIR), or every non-overlapping window (``windows='all'``); past the end of the audio the window is padded
  with silence and only the frames that cover audio are valid;
* conditioning: artist and genre ``unknown``, empty lyrics, ``total_length`` of ``total_seconds`` rounded down to a
  multiple of the top hop, offset 0, ``y = prior.get_y(labels, start=0)`` for every window.
"""
from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass

import numpy as np
import torch

from jukebox.utils.io import read_audio

__all__ = ["Recipe", "JUKEMIR", "Window", "WINDOWS", "prepare_audio", "read_clip", "split_windows", "recipe_labels"]

WINDOWS = ("first", "all")


@dataclass(frozen=True)
class Recipe:
    """JukeMIR's choices (the defaults); ``asdict(recipe)`` is what the manifest records."""

    lookahead_seconds: float = 25.0 - 2 ** 20 / 44100
    total_seconds: float = 62.0
    offset: int = 0
    artist: str = "unknown"
    genre: str = "unknown"
    lyrics: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


JUKEMIR = Recipe()


@dataclass(frozen=True)
class Window:
    """One window of a clip: ``audio`` ``(chunk_samples,)`` to encode (zero-padded past the clip) and how many of
    its ``n_ctx`` frames cover the clip (``valid_frames >= 1``)."""

    audio: np.ndarray
    valid_frames: int


def prepare_audio(audio: np.ndarray) -> np.ndarray:
    """Audio ``(T,)`` or ``(C, T)`` at the model's rate -> mono ``(T,)`` float32 divided by its peak (if non-zero)."""
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim == 2:
        audio = audio.mean(axis=0)
    elif audio.ndim != 1:
        raise ValueError(f"audio must be (T,) or (C, T), got shape {audio.shape}")
    if audio.size == 0:
        raise ValueError("it holds no audio samples")
    if not np.isfinite(audio).all():
        raise ValueError("it holds NaN or infinite samples")
    peak = float(np.abs(audio).max())
    return audio / np.float32(peak) if peak > 0 else audio


def read_clip(file: str | os.PathLike, sr: int) -> np.ndarray:
    """The whole of ``file`` at ``sr``, prepared (``prepare_audio``): ``(T,)``. Raises ``AudioReadError`` (an
    OSError) when it cannot be decoded, ValueError when it holds no samples."""
    return prepare_audio(read_audio(file, sr, channels=1))


def split_windows(audio: np.ndarray, n_ctx: int, hop: int, chunk_samples: int, windows: str) -> list[Window]:
    """The windows of prepared audio ``(T,)``: window k covers samples ``[k * n_ctx * hop, (k + 1) * n_ctx * hop)``
    and is encoded from the ``chunk_samples`` from its start. ``windows``: 'first' or 'all'."""
    if windows not in WINDOWS:
        raise ValueError(f"windows must be one of {', '.join(WINDOWS)}, got {windows!r}")
    step = n_ctx * hop
    count = 1 if windows == "first" else math.ceil(len(audio) / step)
    out = []
    for k in range(count):
        start = k * step
        chunk = audio[start:start + chunk_samples]
        valid = min(n_ctx, math.ceil(len(chunk) / hop))
        out.append(Window(np.pad(chunk, (0, chunk_samples - len(chunk))), valid))
    return out


def recipe_labels(prior: torch.nn.Module, recipe: Recipe, sr: int, device: torch.device) -> torch.Tensor | None:
    """The recipe's y ``(1, label_len)`` of the window at offset 0 for top-level ``prior`` at sample rate ``sr``
    (None for an unlabelled prior)."""
    if not prior.y_cond:
        return None
    hop = prior.raw_to_tokens
    total_length = int(recipe.total_seconds * sr // hop) * hop
    meta = dict(artist=recipe.artist, genre=recipe.genre, lyrics=recipe.lyrics, total_length=total_length,
                offset=recipe.offset)
    labels = prior.labeller.get_batch_labels([meta], device)
    y = prior.get_y(labels, start=0)
    try:
        prior.check_inputs(y=y)
    except ValueError as e:
        raise ValueError(f"the recipe's conditioning does not fit this prior ({e}); pass a Recipe that does, e.g. "
                         "another total_seconds") from None
    return y
