"""The level/window schedule of sampling: which windows of which level are sampled, in what order.

Levels run from the top (coarsest codes) down. On a level with ``total_length`` tokens to produce, windows of
``n_ctx`` tokens start every ``hop_length = int(hop_fraction[level] * n_ctx)`` tokens (``get_starts``); each
window keeps the tokens already sampled inside it as a prefix and samples the rest, conditioned on the codes of
the level above (``prior.get_z_conds``) and on labels whose offset follows the window (``prior.get_y``). A level
shorter than one context is sampled as one partial window from the start. The batch is split into passes of at
most ``max_batch_size`` samples.

The functions here only need priors exposing ``n_ctx``, ``raw_to_tokens``, ``get_y``, ``get_z_conds`` and
``sample``, so they are tested with stand-in priors against the original's recorded schedule. Hooks called after
every window and every level let a caller (``jukebox.inference.session``) save progress and outputs.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from tqdm import tqdm

from jukebox.utils.dist_utils import get_rank, print_once

__all__ = ["get_starts", "split_batch", "plan_level", "sample_window", "sample_level", "sample_levels",
           "level_lengths", "on_device", "WindowHook", "LevelHook"]

# Called after every finished window with (level, windows done on this level, zs).
WindowHook = Callable[[int, int, list], None]
# Called after every finished level with (level, zs, prior in use).
LevelHook = Callable[[int, list, Any], None]


def get_starts(total_length: int, n_ctx: int, hop_length: int) -> list[int]:
    """Start of every n_ctx window over total_length tokens, hopping by hop_length.

    Starts step by hop_length from 0; a window that would reach or pass the end is moved back to
    total_length - n_ctx, so the last window always has a full context.
    """
    if hop_length <= 0:
        raise ValueError(f"hop_length must be positive, got {hop_length}")
    if total_length < n_ctx:
        raise ValueError(
            f"total_length {total_length} is shorter than the context {n_ctx}: sample it as one partial window"
        )
    return [min(start, total_length - n_ctx) for start in range(0, total_length - n_ctx + hop_length, hop_length)]


def split_batch(obj: torch.Tensor | list[torch.Tensor] | None, n_samples: int, split_size: int) -> Sequence[Any]:
    """Split a batch into passes of at most split_size items.

    obj: a tensor (N, ...) -> tuple of tensors; a list of tensors (each (N, ...)) -> list of per-pass tuples;
    None -> [None] * number of passes.
    """
    if split_size <= 0:
        raise ValueError(f"split_size must be positive, got {split_size}")
    if obj is None:
        return [None] * -(-n_samples // split_size)
    if isinstance(obj, torch.Tensor):
        return torch.split(obj, split_size, dim=0)
    if isinstance(obj, list):
        return list(zip(*[torch.split(item, split_size, dim=0) for item in obj]))
    raise TypeError(f"split_batch takes a tensor, a list of tensors or None, got {type(obj).__name__}")


def level_lengths(prior: Any, sample_length: int, hop_fraction: Sequence[float], level: int) -> tuple[int, int]:
    """(total_length, hop_length) in tokens of ``level`` for ``sample_length`` audio samples."""
    if sample_length % prior.raw_to_tokens:
        raise ValueError(
            f"sample_length {sample_length} is not a multiple of level {level}'s {prior.raw_to_tokens} samples per "
            "token; choose a sample length that is a multiple of the top level's hop"
        )
    hop_length = int(hop_fraction[level] * prior.n_ctx)
    if hop_length <= 0:
        raise ValueError(f"hop_fraction[{level}]={hop_fraction[level]} gives an empty hop for n_ctx {prior.n_ctx}")
    if hop_length > prior.n_ctx:  # windows would leave gaps between them
        raise ValueError(f"hop_fraction[{level}]={hop_fraction[level]} is more than 1: windows of n_ctx "
                         f"{prior.n_ctx} would not cover the song; use a fraction in (0, 1]")
    return sample_length // prior.raw_to_tokens, hop_length


def plan_level(total_length: int, n_ctx: int, hop_length: int, current_length: int) -> list[tuple[int, int]]:
    """The windows ``(start, sample_tokens)`` that bring a level to ``total_length`` tokens.

    ``sample_tokens`` is the window's length after sampling: n_ctx, or total_length for a level shorter than one
    context (a single partial window from 0). The original sampled total_length tokens *on top of* existing ones
    in that partial case, so a short continuation overshot its length; here the level ends at total_length.
    """
    if total_length >= n_ctx:
        return [(start, n_ctx) for start in get_starts(total_length, n_ctx, hop_length)]
    return [(0, total_length)] if current_length < total_length else []


def sample_window(zs: list[torch.Tensor], labels: dict | None, sampling_kwargs: dict, level: int, prior: Any,
                  start: int, sample_tokens: int) -> list[torch.Tensor]:
    """Extend ``zs[level]`` (N, T) by sampling the window [start, start + sample_tokens).

    Tokens of the window already in zs[level] are the prefix; the new ones are appended. ``sampling_kwargs``
    holds ``max_batch_size`` plus the keyword arguments of ``prior.sample`` (temp, fp16, chunk_size, ...).
    """
    end = start + prior.n_ctx
    z = zs[level][:, start:end]
    new_tokens = sample_tokens - z.shape[1]
    if new_tokens <= 0:
        return zs
    z_conds = prior.get_z_conds(zs, start, end)
    y = prior.get_y(labels, start)
    kwargs = dict(sampling_kwargs)
    max_batch_size = kwargs.pop("max_batch_size")
    n_samples = z.shape[0]
    parts = []
    for z_i, z_conds_i, y_i in zip(split_batch(z, n_samples, max_batch_size),
                                   split_batch(z_conds, n_samples, max_batch_size),
                                   split_batch(y, n_samples, max_batch_size)):
        z_conds_i = list(z_conds_i) if z_conds_i is not None else None
        parts.append(prior.sample(n_samples=z_i.shape[0], z=z_i, z_conds=z_conds_i, y=y_i,
                                  sample_tokens=sample_tokens, **kwargs))
    z = torch.cat(parts, dim=0)
    zs[level] = torch.cat([zs[level], z[:, -new_tokens:].to(zs[level].device)], dim=1)
    return zs


def sample_level(zs: list[torch.Tensor], labels: dict | None, sampling_kwargs: dict, level: int, prior: Any,
                 total_length: int, hop_length: int, windows_done: int = 0,
                 after_window: WindowHook | None = None) -> list[torch.Tensor]:
    """Sample ``level`` up to ``total_length`` tokens, skipping the first ``windows_done`` windows (resume)."""
    windows = plan_level(total_length, prior.n_ctx, hop_length, zs[level].shape[1])
    todo = max(0, total_length - zs[level].shape[1]) if windows[windows_done:] else 0
    # tokens/s and the ETA come from tqdm's rate over the tokens appended after each window
    bar = tqdm(total=todo, desc=f"level {level}", unit="tok", unit_scale=True, dynamic_ncols=True,
               disable=get_rank() != 0 or todo == 0)
    with bar:
        for index in range(windows_done, len(windows)):
            start, sample_tokens = windows[index]
            before = zs[level].shape[1]
            zs = sample_window(zs, labels, sampling_kwargs, level, prior, start, sample_tokens)
            bar.update(zs[level].shape[1] - before)
            if after_window is not None:
                after_window(level, index + 1, zs)
    return zs


@contextlib.contextmanager
def on_device(prior: Any, device: torch.device | str) -> Iterator[Any]:
    """Hold ``prior`` on ``device`` for the duration of a level, then give the memory back.

    Lazily loaded priors (with ``load``/``unload``) are loaded and dropped, unless the caller had loaded one
    already (it stays loaded: a caller that samples it again keeps it in memory); plain modules are moved to the
    device and back to the CPU, as the original did; anything else (stand-ins) is used as it is.
    """
    if hasattr(prior, "load") and hasattr(prior, "unload"):
        was_loaded = bool(getattr(prior, "loaded", False))
        module = prior.load(device)
        try:
            yield module
        finally:
            if not was_loaded:
                prior.unload()
    elif isinstance(prior, torch.nn.Module):
        prior.to(device)
        try:
            yield prior
        finally:
            prior.cpu()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    else:
        yield prior


def sample_levels(zs: list[torch.Tensor], labels: Sequence[dict | None], sampling_kwargs: Sequence[dict],
                  priors: Sequence[Any], levels: Sequence[int], sample_length: int,
                  hop_fraction: Sequence[float], device: torch.device | str = "cpu",
                  resume: tuple[int, int] | None = None, after_window: WindowHook | None = None,
                  after_level: LevelHook | None = None) -> list[torch.Tensor]:
    """Sample ``levels`` from the top down, each to ``sample_length`` audio samples' worth of tokens.

    zs: per-level codes (N, T_l), index 0 the bottom level; labels/sampling_kwargs: one entry per level.
    resume: (level, windows done on it): levels above it are skipped as finished, its first windows too.
    after_level is called while the level's prior is still loaded (e.g. to decode, save and align).
    """
    for level in sorted(levels, reverse=True):
        windows_done = 0
        if resume is not None:
            if level > resume[0]:
                continue
            if level == resume[0]:
                windows_done = resume[1]
        total_length, hop_length = level_lengths(priors[level], sample_length, hop_fraction, level)
        print_once(f"Sampling level {level}: {total_length} tokens, windows of {priors[level].n_ctx} "
                   f"hopping by {hop_length}")
        with on_device(priors[level], device) as prior:
            zs = sample_level(zs, labels[level], sampling_kwargs[level], level, prior, total_length, hop_length,
                              windows_done, after_window)
            if after_level is not None:
                after_level(level, zs, prior)
    return zs
