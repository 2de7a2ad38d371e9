"""The factored attention patterns, named, and the key/value cache layout of each.

A sequence of ``n_ctx`` positions is viewed as ``blocks`` rows of ``block_ctx = n_ctx // blocks``
positions. A query at position ``t`` (block ``t // block_ctx``) sees:

=================== ==== ============================================================================
pattern             id   keys seen by the query at t
=================== ==== ============================================================================
``DENSE``           0    every position ``<= t``
``BLOCK``           1    positions ``<= t`` of its own block
``TRANSPOSE_BLOCK`` 2    positions ``<= t`` of its column (``p % block_ctx == t % block_ctx``)
``PREV_BLOCK``      3    every position of the previous block
``SUMMARY``         4    the last position of each block but the final one, if ``<= t``
``SUMMARY_SPREAD``  5    the last ``spread`` positions of each block but the final one, if ``<= t``
``ENCODER_DECODER`` 6    every encoder (lyrics) state
``PRIME``           7    positions ``<= t`` among the first ``(prime_len // blocks + 1) * blocks``
=================== ==== ============================================================================

``PREV_BLOCK`` and the summaries also see all-zero keys (with zero values) standing for the block
before block 0: ``block_ctx`` of them, one, or ``spread``.

While sampling, a layer keeps in its cache only the keys and values its pattern can still use. A
``CacheLayout`` says, once for every sampling path, where they live: ``length`` rows, the row
``slot(t)`` that position t's key and value are written to (-1: not kept), and the rows visible to the
query at t, ``window(t) = (start, stop)`` taken every ``step`` rows. Rows never written are zeros;
they are the zero keys of the patterns that have them. Every method takes a Python int or a 0-d
int64 tensor as the position, so fixed-shape (CUDA-graph) steps use the same arithmetic.
"""
from __future__ import annotations

import enum

import torch

__all__ = ["AttentionPattern", "CacheLayout", "cache_layout", "prime_keys"]

Position = int | torch.Tensor


class AttentionPattern(enum.IntEnum):
    """The attention function of a layer; the values are the original's ``attn_func`` numbers."""

    DENSE = 0
    BLOCK = 1
    TRANSPOSE_BLOCK = 2
    PREV_BLOCK = 3
    SUMMARY = 4
    SUMMARY_SPREAD = 5
    ENCODER_DECODER = 6
    PRIME = 7

    @property
    def causal(self) -> bool:
        """Whether the pattern needs a causal (masked) transformer."""
        return self not in (AttentionPattern.PREV_BLOCK, AttentionPattern.ENCODER_DECODER)

    @property
    def blocked(self) -> bool:
        """Whether the pattern is defined on blocks (needs ``blocks``)."""
        return self not in (AttentionPattern.DENSE, AttentionPattern.ENCODER_DECODER)


def prime_keys(prime_len: int, blocks: int) -> int:
    """Keys of prime attention: the original rounds prime_len up with ``blocks`` (not block_ctx),
    always adding one more."""
    return (prime_len // blocks + 1) * blocks


def _min(a: Position, b: int) -> Position:
    return a.clamp(max=b) if isinstance(a, torch.Tensor) else min(a, b)


def _where(condition: bool | torch.Tensor, a: Position, b: int) -> Position:
    return torch.where(condition, a, b) if isinstance(condition, torch.Tensor) else (a if condition else b)


class CacheLayout:
    """Cache rows of one layer: ``length`` rows; position t goes to ``slot(t)``; the query at t sees
    rows ``start, start + step, ... < stop`` with ``(start, stop) = window(t)``.

    ``ring``: the rows are reused as positions advance (a chunk writes only its last ``length``
    positions); otherwise every kept position has a row of its own.
    """

    step = 1
    ring = False

    def __init__(self, pattern: AttentionPattern, length: int, block_ctx: int | None) -> None:
        self.pattern = pattern
        self.length = length
        self.block_ctx = block_ctx
        # Equal for layouts that give every position the same slot and window (layers share them).
        self.key = (pattern, length, block_ctx)

    def slot(self, t: Position) -> Position:
        """The row of position t's key and value, -1 when the pattern never needs them again."""
        return _where(t < self.length, t, -1)

    def window(self, t: Position) -> tuple[Position, Position]:
        """Rows ``(start, stop)`` (every ``step``-th) that the query at t attends to."""
        return 0, _min(t + 1, self.length)

    def history(self, t0: int) -> int:
        """The first position whose cached key a chunk of queries starting at t0 reads (ring layouts)."""
        return 0

    def rows(self, t: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        """The window as fixed shapes for a tensor position: row indices ``(length // step,)`` (None: all
        rows) and which of them are visible, a bool ``(1, K)``."""
        start, stop = self.window(t)
        device = t.device
        if self.step == 1:
            idx = torch.arange(self.length, device=device)
            return None, ((idx >= start) & (idx < stop))[None]
        idx = start + self.step * torch.arange(self.length // self.step, device=device)
        return idx, (idx < stop)[None]


class _Block(CacheLayout):
    ring = True

    def slot(self, t: Position) -> Position:
        return t % self.block_ctx

    def window(self, t: Position) -> tuple[Position, Position]:
        return 0, t % self.block_ctx + 1

    def history(self, t0: int) -> int:
        return t0 - t0 % self.block_ctx


class _TransposeBlock(CacheLayout):
    def __init__(self, pattern: AttentionPattern, length: int, block_ctx: int) -> None:
        super().__init__(pattern, length, block_ctx)
        self.step = block_ctx

    def slot(self, t: Position) -> Position:
        return t

    def window(self, t: Position) -> tuple[Position, Position]:
        return t % self.block_ctx, t + 1


class _PrevBlock(CacheLayout):
    """A ring of two blocks: block b lives at rows ``(b % 2) * block_ctx``. Before block 1 is written,
    that half is still zero: exactly block 0's zero "previous block"."""

    ring = True

    def slot(self, t: Position) -> Position:
        bc = self.block_ctx
        return t // bc % 2 * bc + t % bc

    def window(self, t: Position) -> tuple[Position, Position]:
        bc = self.block_ctx
        start = (t // bc - 1) % 2 * bc
        return start, start + bc

    def history(self, t0: int) -> int:
        return max(t0 - t0 % self.block_ctx - self.block_ctx, 0)


class _Summary(CacheLayout):
    """Row ``j * spread + i`` holds position ``j * block_ctx - spread + i``: the summaries of block
    ``j - 1``; the rows of j = 0 stay zero. Those positions increase with the row, so the rows a
    query sees are a prefix."""

    def __init__(self, pattern: AttentionPattern, length: int, block_ctx: int, spread: int) -> None:
        super().__init__(pattern, length, block_ctx)
        self.spread = spread

    def slot(self, t: Position) -> Position:
        bc, s = self.block_ctx, self.spread
        block = t // bc
        row = (block + 1) * s + t % bc - (bc - s)
        return _where((t % bc >= bc - s) & (row < self.length), row, -1)

    def window(self, t: Position) -> tuple[Position, Position]:
        bc, s = self.block_ctx, self.spread
        block = (t + s) // bc  # the first block whose summaries may lie after t
        return 0, _min(block * s + _min(t + s + 1 - block * bc, s), self.length)


class _Encoder(CacheLayout):
    """The projected encoder states, written once per sampling run by the layer itself."""

    def slot(self, t: Position) -> Position:
        return t * 0 - 1  # positions are never kept

    def window(self, t: Position) -> tuple[Position, Position]:
        return 0, self.length


def cache_layout(pattern: AttentionPattern, n_ctx: int, blocks: int | None = None, spread: int | None = None,
                 encoder_dims: int | None = None, prime_len: int | None = None) -> CacheLayout:
    """The cache layout of a layer with ``pattern`` over ``n_ctx`` positions."""
    bc = n_ctx // blocks if blocks else None
    if pattern == AttentionPattern.DENSE:
        return CacheLayout(pattern, n_ctx, bc)
    if pattern == AttentionPattern.BLOCK:
        return _Block(pattern, bc, bc)
    if pattern == AttentionPattern.TRANSPOSE_BLOCK:
        return _TransposeBlock(pattern, n_ctx, bc)
    if pattern == AttentionPattern.PREV_BLOCK:
        return _PrevBlock(pattern, 2 * bc, bc)
    if pattern in (AttentionPattern.SUMMARY, AttentionPattern.SUMMARY_SPREAD):
        s = 1 if pattern == AttentionPattern.SUMMARY else spread
        return _Summary(pattern, blocks * s, bc, s)
    if pattern == AttentionPattern.ENCODER_DECODER:
        return _Encoder(pattern, encoder_dims, bc)
    return CacheLayout(pattern, min(prime_keys(prime_len, blocks), n_ctx), bc)
