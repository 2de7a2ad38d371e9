"""Factored (sparse) multi-head attention with a preallocated key/value cache for sampling.

A sequence of ``n_ctx`` positions is viewed as ``blocks`` rows of ``block_ctx = n_ctx // blocks``
positions. Each layer uses one attention function (``attn_func``); a query at position ``i``
(block ``i // block_ctx``) sees:

=== ======================= ========================================================================
0   dense                   every position ``j <= i``
1   block                   ``j <= i`` in its own block
2   transpose block         ``j <= i`` with ``j % block_ctx == i % block_ctx`` (its column)
3   previous block          every position of the previous block (nothing in block 0)
4   summary                 the last position of each block but the final one, if ``<= i``
5   summary spread          the last ``spread`` positions of each block but the final one, if ``<= i``
6   encoder-decoder         every encoder (lyrics) state, through ``c_enc_kv``
7   prime attention         ``j <= i`` with ``j < (prime_len // blocks + 1) * blocks``
=== ======================= ========================================================================

Functions 3, 4 and 5 also see ``block_ctx``, one or ``spread`` all-zero keys with zero values
standing for the (missing) block before block 0; they take part in the softmax.

Sampling (``forward(..., sample=True)``) feeds chunks of new positions. Each layer keeps, in
buffers allocated once per sampling run, only what its pattern can still use: all positions for
0 and 2, the current block for 1, the current and previous block for 3, the block summaries for 4
and 5, the projected encoder states for 6 and the first prime keys for 7.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from jukebox.transformer.ops import Conv1D

__all__ = ["FactoredAttention"]

_BLOCKED_FUNCS = (1, 2, 3, 4, 5, 7)
_MASKED_FUNCS = (0, 1, 2, 4, 5, 7)  # functions whose pattern needs a causal mask


class FactoredAttention(nn.Module):
    """Multi-head attention ``(N, L, n_in) -> (N, L, n_in)`` with one of the factored patterns."""

    def __init__(self, n_in: int, n_ctx: int, n_state: int, n_head: int,
                 attn_dropout: float = 0.0, resid_dropout: float = 0.0,
                 scale: bool = True, mask: bool = False,
                 zero_out: bool = False, init_scale: float = 1.0,
                 checkpoint_attn: int = 0,
                 attn_func: int = 0, blocks: int | None = None, spread: int | None = None,
                 encoder_dims: int | None = None, prime_len: int | None = None):
        super().__init__()
        _check_config(n_ctx, n_state, n_head, attn_func, blocks, spread, encoder_dims, prime_len)
        self.n_in = n_in
        self.n_ctx = n_ctx
        self.n_state = n_state
        self.n_head = n_head
        self.scale = scale  # kept for config parity; scores are always scaled by 1/sqrt(head dim)
        self.mask = mask
        self.attn_func = attn_func
        self.blocks = blocks
        self.block_ctx = n_ctx // blocks if blocks is not None else None
        self.spread = spread
        self.encoder_dims = encoder_dims
        self.prime_len = prime_len
        self.checkpoint_attn = checkpoint_attn

        if attn_func == 6:
            self.c_attn = Conv1D(n_in, n_state, init_scale=init_scale)
            self.c_enc_kv = Conv1D(n_in, n_state * 2, init_scale=init_scale)
        else:
            self.c_attn = Conv1D(n_in, n_state * 3, init_scale=init_scale)
        self.c_proj = Conv1D(n_state, n_in, zero_out, init_scale=init_scale)
        self.attn_dropout = attn_dropout
        self.resid_dropout = nn.Dropout(resid_dropout) if resid_dropout > 0.0 else nn.Identity()

        # (1/sqrt(sqrt(d)))**2 rather than 1/sqrt(d), as the original scales the scores.
        self._score_scale = (1.0 / math.sqrt(math.sqrt(n_state // n_head))) ** 2
        self.sample_t = 0
        self.cache: dict[str, torch.Tensor] = {}
        self.record_attn = False
        self.w: torch.Tensor | None = None

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor, encoder_kv: torch.Tensor | None = None,
                sample: bool = False) -> torch.Tensor:
        """x: ``(N, L, n_in)``; encoder_kv: ``(N, encoder_dims, n_in)`` for attn_func 6.

        With ``sample=True`` x holds the next L positions after the ``sample_t`` already cached.
        """
        if sample:
            a = self._sample(x, encoder_kv)
        else:
            q, k, v = self._project(x, encoder_kv)
            if self.checkpoint_attn in (1, 2) and self.training and torch.is_grad_enabled():
                a = checkpoint(self._attend, q, k, v, use_reentrant=False)
            else:
                a = self._attend(q, k, v)
        return self.resid_dropout(self.c_proj(a))

    def _project(self, x: torch.Tensor, encoder_kv: torch.Tensor | None):
        if self.attn_func != 6:
            if encoder_kv is not None:
                raise ValueError(f"encoder_kv is only used by attn_func 6, not {self.attn_func}")
            return self.c_attn(x).chunk(3, dim=2)
        q = self.c_attn(x)
        k, v = self._encoder_kv(encoder_kv, q)
        return q, k, v

    def _encoder_kv(self, encoder_kv: torch.Tensor | None, q: torch.Tensor):
        if encoder_kv is None:
            raise ValueError("attn_func 6 (encoder-decoder attention) needs encoder_kv (N, encoder_dims, n_in)")
        if encoder_kv.shape[1] != self.encoder_dims or encoder_kv.shape[0] != q.shape[0]:
            raise ValueError(f"encoder_kv has shape {tuple(encoder_kv.shape)}; expected "
                             f"({q.shape[0]}, {self.encoder_dims}, {self.n_in})")
        return self.c_enc_kv(encoder_kv.type_as(q)).chunk(2, dim=2)

    # ------------------------------------------------------------------ full sequence
    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Attention of a whole sequence; q, k, v ``(N, L, n_state)`` (k, v ``(N, S, n_state)`` for 6)."""
        f = self.attn_func
        if f in (0, 6):
            return self._dense(q, k, v, causal_offset=0 if f == 0 else None)
        if f == 7:
            n = min(self._prime_keys, k.shape[1])
            return self._dense(q, k[:, :n], v[:, :n], causal_offset=0)
        if q.shape[1] % self.block_ctx != 0:
            raise ValueError(f"attn_func {f} needs a length that is a multiple of block_ctx={self.block_ctx}, "
                             f"got {q.shape[1]}")
        if f == 1:
            return self._block(q, k, v)
        if f == 2:
            return self._transpose_block(q, k, v)
        if f == 3:
            return self._prev_block(q, k, v)
        return self._summary(q, k, v)

    # The block patterns take q covering whole blocks at the END of k (a chunk during sampling).
    def _block(self, q, k, v):
        n, lq, d = q.shape
        bc = self.block_ctx

        def rows(x):
            return x[:, -lq:].reshape(n * lq // bc, bc, d)

        return self._dense(rows(q), rows(k), rows(v), causal_offset=0).view(n, lq, d)

    def _transpose_block(self, q, k, v):
        n, lq, d = q.shape
        bc = self.block_ctx

        def columns(x):
            return x.reshape(n, x.shape[1] // bc, bc, d).transpose(1, 2).reshape(n * bc, x.shape[1] // bc, d)

        a = self._dense(columns(q), columns(k), columns(v), causal_offset=(k.shape[1] - lq) // bc)
        return a.view(n, bc, lq // bc, d).transpose(1, 2).reshape(n, lq, d)

    def _prev_block(self, q, k, v):
        n, lq, d = q.shape
        bc = self.block_ctx
        qb = lq // bc

        def previous(x):
            x = x.reshape(n, x.shape[1] // bc, bc, d)
            return F.pad(x[:, :-1], (0, 0, 0, 0, 1, 0))[:, -qb:].reshape(n * qb, bc, d)

        return self._dense(q.reshape(n * qb, bc, d), previous(k), previous(v)).view(n, lq, d)

    def _summary(self, q, k, v):
        n, length, d = q.shape
        bc, s = self.block_ctx, self._spread
        nb = length // bc

        def summaries(x):
            x = x.reshape(n, nb, bc, d)[:, :-1, -s:]
            return F.pad(x, (0, 0, 0, 0, 1, 0)).reshape(n, nb * s, d)

        q_pos = torch.arange(length, device=q.device)
        return self._dense(q, summaries(k), summaries(v), mask=self._summary_mask(q_pos, nb))

    @property
    def _spread(self) -> int:
        return 1 if self.attn_func == 4 else self.spread

    def _summary_mask(self, q_pos: torch.Tensor, n_blocks: int) -> torch.Tensor:
        """``(L, n_blocks * spread)`` bool: summary key (block j, slot i) sits at position
        ``j * block_ctx - spread + i``; block 0 holds the always-visible zero keys."""
        s = self._spread
        slot = torch.arange(n_blocks * s, device=q_pos.device)
        key_pos = (slot // s) * self.block_ctx - s + slot % s
        return key_pos[None, :] <= q_pos[:, None]

    @property
    def _prime_keys(self) -> int:
        # The original rounds prime_len up with `blocks` (not block_ctx), always adding one more.
        return (self.prime_len // self.blocks + 1) * self.blocks

    # ------------------------------------------------------------------ attention core
    def _dense(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               causal_offset: int | None = None, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Multi-head attention of q ``(B, Lq, n_state)`` over k, v ``(B, Lk, n_state)``.

        ``causal_offset=o`` lets query i see keys ``j <= i + o``; ``mask`` ``(Lq, Lk)`` bool is an
        explicit pattern (True = visible). Both are ignored when the layer is unmasked.
        """
        if not self.mask:
            causal_offset, mask = None, None
        lq, lk = q.shape[1], k.shape[1]
        square_causal = causal_offset == 0 and lq == lk
        if causal_offset is not None and (self.record_attn or not square_causal):
            mask = torch.ones(lq, lk, dtype=torch.bool, device=q.device).tril(causal_offset)
        qh, kh, vh = (self._split_heads(t) for t in (q, k, v))
        p = self.attn_dropout if self.training else 0.0
        if self.record_attn:
            a = self._explicit_attention(qh, kh, vh, mask, p)
        else:
            a = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=None if square_causal else mask,
                                               dropout_p=p, is_causal=square_causal, scale=self._score_scale)
        return a.transpose(1, 2).reshape(q.shape[0], lq, self.n_state)

    def _explicit_attention(self, q, k, v, mask, p):
        """Softmax attention that keeps the probabilities in ``self.w`` (for alignment)."""
        s = math.sqrt(self._score_scale)
        w = torch.matmul(q * s, (k * s).transpose(-1, -2))
        w = w.to(torch.promote_types(w.dtype, torch.float32))  # softmax in at least float32
        if mask is not None:
            w = w.masked_fill(~mask, -1e9)
        w = F.softmax(w, dim=-1).to(q.dtype)
        # Prime attention keeps only music queries over lyric keys, as alignment needs.
        self.w = w[:, :, self.prime_len:, :self.prime_len] if self.attn_func == 7 else w
        return torch.matmul(F.dropout(w, p, self.training), v)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.n_head, -1)).transpose(1, 2)  # (B, H, L, d_head)

    # ------------------------------------------------------------------ sampling
    def _sample(self, x: torch.Tensor, encoder_kv: torch.Tensor | None) -> torch.Tensor:
        n, length = x.shape[0], x.shape[1]
        t0, t1 = self.sample_t, self.sample_t + length
        if length < 1:
            raise ValueError("sampling needs at least one new position")
        if t1 > self.n_ctx:
            raise ValueError(f"sampling position {t1} is past n_ctx={self.n_ctx}; call del_cache() to start over")
        if not self.mask and self.attn_func in _MASKED_FUNCS:
            raise ValueError("cached sampling needs a causal transformer (mask=True)")
        if self.attn_func == 6:
            q = self.c_attn(x)
            if t0 == 0:
                k, v = self._encoder_kv(encoder_kv, q)
                self.cache = {"key": k.contiguous(), "value": v.contiguous()}
            self._check_batch(n, q.dtype)
            a = self._dense(q, self.cache["key"], self.cache["value"])
        else:
            q, k, v = self.c_attn(x).chunk(3, dim=2)
            if t0 == 0:
                self._allocate_cache(n, k)
            self._check_batch(n, k.dtype)
            step = {0: self._sample_dense, 1: self._sample_block, 2: self._sample_transpose,
                    3: self._sample_prev_block, 4: self._sample_summary, 5: self._sample_summary,
                    7: self._sample_prime}[self.attn_func]
            a = step(q, k, v, t0, t1)
        self.sample_t = t1
        return a

    def _cache_len(self) -> int:
        f = self.attn_func
        if f in (0, 2):
            return self.n_ctx
        if f in (1, 3):
            return self.block_ctx if f == 1 else 2 * self.block_ctx
        if f in (4, 5):
            return self.blocks * self._spread
        return min(self._prime_keys, self.n_ctx)

    def _allocate_cache(self, n: int, like: torch.Tensor) -> None:
        # Zero-filled: unwritten slots act as the zero keys/values and as finite padding.
        shape = (n, self._cache_len(), self.n_state)
        self.cache = {"key": like.new_zeros(shape), "value": like.new_zeros(shape)}

    def _check_batch(self, n: int, dtype: torch.dtype) -> None:
        key = self.cache["key"]
        if key.shape[0] != n or key.dtype != dtype:
            raise RuntimeError(f"the cache holds {key.shape[0]} samples of {key.dtype} but got {n} of {dtype}; "
                               "call del_cache() before sampling a new batch")

    def _pad_blocks(self, x: torch.Tensor, front: int) -> torch.Tensor:
        """Zero-pad ``(N, L, d)`` with ``front`` positions before and up to a block multiple after."""
        back = -(front + x.shape[1]) % self.block_ctx
        return F.pad(x, (0, 0, front, back))

    def _sample_dense(self, q, k, v, t0, t1):
        key, value = self.cache["key"], self.cache["value"]
        key[:, t0:t1] = k
        value[:, t0:t1] = v
        return self._dense(q, key[:, :t1], value[:, :t1], causal_offset=t0 if t1 - t0 > 1 else None)

    def _sample_block(self, q, k, v, t0, t1):
        # Cache slot p % block_ctx holds position p of the current block.
        key, value = self.cache["key"], self.cache["value"]
        bc, length = self.block_ctx, t1 - t0
        off = t0 % bc
        if length == 1:
            key[:, off] = k[:, 0]
            value[:, off] = v[:, 0]
            return self._dense(q, key[:, :off + 1], value[:, :off + 1])
        kc = self._pad_blocks(torch.cat([key[:, :off], k], dim=1), 0)
        vc = self._pad_blocks(torch.cat([value[:, :off], v], dim=1), 0)
        a = self._block(self._pad_blocks(q, off), kc, vc)[:, off:off + length]
        keep = min(length, bc)
        slots = torch.arange(t1 - keep, t1, device=k.device) % bc
        key[:, slots] = k[:, -keep:]
        value[:, slots] = v[:, -keep:]
        return a

    def _sample_transpose(self, q, k, v, t0, t1):
        # All positions in order; slots past t1 are still zero and serve as padding.
        key, value = self.cache["key"], self.cache["value"]
        bc, length = self.block_ctx, t1 - t0
        key[:, t0:t1] = k
        value[:, t0:t1] = v
        if length == 1:
            col = t0 % bc
            return self._dense(q, key[:, col:t1:bc], value[:, col:t1:bc])
        off = t0 % bc
        end = -(-t1 // bc) * bc
        return self._transpose_block(self._pad_blocks(q, off), key[:, :end], value[:, :end])[:, off:off + length]

    def _ring_slots(self, start: int, stop: int, device) -> torch.Tensor:
        """Slots of positions [start, stop) in the two-block ring used by attn_func 3."""
        pos = torch.arange(start, stop, device=device)
        return (pos // self.block_ctx) % 2 * self.block_ctx + pos % self.block_ctx

    def _sample_prev_block(self, q, k, v, t0, t1):
        # A ring of two blocks: block b lives at slots (b % 2) * block_ctx. Before block 1 is
        # written its half is all zeros, which is exactly block 0's zero "previous block".
        key, value = self.cache["key"], self.cache["value"]
        bc, length = self.block_ctx, t1 - t0
        if length == 1:
            b = t0 // bc
            slot = b % 2 * bc + t0 % bc
            key[:, slot] = k[:, 0]
            value[:, slot] = v[:, 0]
            prev = (b - 1) % 2 * bc
            return self._dense(q, key[:, prev:prev + bc], value[:, prev:prev + bc])
        off = t0 % bc
        start = max(t0 - off - bc, 0)  # the previous block (if any) and the current one so far
        old = self._ring_slots(start, t0, k.device)
        kc = self._pad_blocks(torch.cat([key[:, old], k], dim=1), 0)
        vc = self._pad_blocks(torch.cat([value[:, old], v], dim=1), 0)
        a = self._prev_block(self._pad_blocks(q, off), kc, vc)[:, off:off + length]
        keep = min(length, 2 * bc)
        slots = self._ring_slots(t1 - keep, t1, k.device)
        key[:, slots] = k[:, -keep:]
        value[:, slots] = v[:, -keep:]
        return a

    def _sample_summary(self, q, k, v, t0, t1):
        # Slot j * spread + i holds position j * block_ctx - spread + i (j >= 1); block 0 stays zero.
        key, value = self.cache["key"], self.cache["value"]
        bc, s = self.block_ctx, self._spread
        for b in range(t0 // bc, min((t1 - 1) // bc + 1, self.blocks - 1)):
            lo, hi = max(b * bc + bc - s, t0), min(b * bc + bc, t1)
            if lo < hi:
                slot = (b + 1) * s + lo - (b * bc + bc - s)
                key[:, slot:slot + hi - lo] = k[:, lo - t0:hi - t0]
                value[:, slot:slot + hi - lo] = v[:, lo - t0:hi - t0]
        q_pos = torch.arange(t0, t1, device=q.device)
        return self._dense(q, key, value, mask=self._summary_mask(q_pos, self.blocks))

    def _sample_prime(self, q, k, v, t0, t1):
        key, value = self.cache["key"], self.cache["value"]
        n_keys = key.shape[1]
        if t0 < n_keys:
            stop = min(t1, n_keys)
            key[:, t0:stop] = k[:, :stop - t0]
            value[:, t0:stop] = v[:, :stop - t0]
        stop = min(t1, n_keys)
        return self._dense(q, key[:, :stop], value[:, :stop], causal_offset=t0 if t1 - t0 > 1 else None)

    # ------------------------------------------------------------------ cache management
    def check_cache(self, n_samples: int, sample_t: int, dtype: torch.dtype) -> None:
        """Raise RuntimeError unless the cache holds ``sample_t`` positions of ``n_samples`` in ``dtype``."""
        if self.sample_t != sample_t:
            raise RuntimeError(f"attention cache is at position {self.sample_t}, expected {sample_t}")
        if sample_t == 0:
            if self.cache:
                raise RuntimeError("attention cache should be empty at position 0; call del_cache()")
            return
        for name, buf in self.cache.items():
            if buf.shape[0] != n_samples or buf.dtype != dtype:
                raise RuntimeError(f"cached {name} has {buf.shape[0]} samples of {buf.dtype}, "
                                   f"expected {n_samples} of {dtype}")

    def del_cache(self) -> None:
        """Drop the cached keys/values and restart sampling at position 0."""
        self.sample_t = 0
        self.cache = {}


def _check_config(n_ctx, n_state, n_head, attn_func, blocks, spread, encoder_dims, prime_len) -> None:
    if attn_func not in range(8):
        raise ValueError(f"attn_func must be 0..7, got {attn_func}")
    if n_state % n_head != 0:
        raise ValueError(f"n_state={n_state} is not divisible by n_head={n_head}")
    if blocks is not None and (blocks <= 0 or n_ctx % blocks != 0):
        raise ValueError(f"n_ctx={n_ctx} must be a multiple of blocks={blocks}")
    if attn_func in _BLOCKED_FUNCS and blocks is None:
        raise ValueError(f"attn_func {attn_func} needs `blocks`")
    if attn_func == 5 and (spread is None or not 1 <= spread <= n_ctx // blocks):
        raise ValueError(f"attn_func 5 needs 1 <= spread <= block_ctx, got spread={spread}")
    if attn_func == 6 and not encoder_dims:
        raise ValueError("attn_func 6 needs encoder_dims (the number of encoder states)")
    if attn_func == 7 and prime_len is None:
        raise ValueError("attn_func 7 needs prime_len (the number of lyric positions)")
