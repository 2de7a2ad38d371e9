"""Small helpers of the prior's token sampling: priming chunks, logit filtering, time shifts.

The window and batch helpers of the level schedule live in ``jukebox.inference.schedule``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def get_split_chunks(length: int, chunk_size: int | None) -> list[int]:
    """Chunk sizes for priming length tokens: full chunks, then the remainder. chunk_size None: one pass."""
    if length <= 0:
        return []
    if chunk_size is None:
        return [length]
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive or None, got {chunk_size}")
    full, rest = divmod(length, chunk_size)
    return [chunk_size] * full + ([rest] if rest else [])


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 0.0,
                  filter_value: float = -float("inf")) -> torch.Tensor:
    """Top-k or nucleus (top-p) filtering of logits (..., V); removed entries become filter_value.

    top_k: keep the k largest logits (and any equal to the k-th). top_p: keep the most likely tokens until
    their probability mass exceeds top_p, including the token that crosses it. Equal logits are ranked
    higher index first. Returns a new tensor.
    """
    if top_k and top_p:
        raise ValueError("use either top_k or top_p, not both")
    logits = logits.clone()
    top_k = min(top_k, logits.size(-1))
    if top_k > 0:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits.masked_fill_(logits < kth, filter_value)
    if top_p > 0.0:
        # A stable ascending sort, flipped, gives a descending order that breaks ties the same on every device.
        sorted_indices = torch.sort(logits, dim=-1, stable=True).indices.flip(-1)
        sorted_logits = logits.gather(-1, sorted_indices)
        cum_probs = torch.cumsum(F.softmax(sorted_logits, dim=-1), dim=-1)
        sorted_remove = torch.zeros_like(cum_probs, dtype=torch.bool)
        sorted_remove[..., 1:] = cum_probs[..., :-1] > top_p
        remove = torch.zeros_like(sorted_remove).scatter(-1, sorted_indices, sorted_remove)
        logits.masked_fill_(remove, filter_value)
    return logits


def roll(x: torch.Tensor, n: int) -> torch.Tensor:
    """Shift x (N, T, ...) right by n steps along time (dim 1), wrapping the last n steps to the front."""
    return torch.cat((x[:, -n:], x[:, :-n]), dim=1)
