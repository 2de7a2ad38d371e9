"""Factored (sparse) multi-head attention: each layer attends with one ``AttentionPattern``
(see ``jukebox.transformer.patterns`` for the patterns and their cache layouts).

``forward(x)`` attends over the whole sequence. ``forward(x, cache=c, t0=t)`` runs the next positions
``t .. t + L - 1`` of a sampling run through the layer's ``LayerCache``: it writes their keys and values
at the slots of the cache layout and attends over what the pattern sees.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from jukebox.transformer.kv_cache import LayerCache
from jukebox.transformer.ops import Conv1D
from jukebox.transformer.patterns import AttentionPattern, CacheLayout, cache_layout

__all__ = ["FactoredAttention"]

P = AttentionPattern


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
        pattern = _check_config(n_ctx, n_state, n_head, attn_func, blocks, spread, encoder_dims, prime_len)
        self.n_in = n_in
        self.n_ctx = n_ctx
        self.n_state = n_state
        self.n_head = n_head
        self.scale = scale  # kept for config parity; scores are always scaled by 1/sqrt(head dim)
        self.mask = mask
        self.attn_func = pattern
        self.blocks = blocks
        self.block_ctx = n_ctx // blocks if blocks is not None else None
        self.spread = spread
        self.encoder_dims = encoder_dims
        self.prime_len = prime_len
        self.checkpoint_attn = checkpoint_attn
        self.layout: CacheLayout = cache_layout(pattern, n_ctx, blocks, spread, encoder_dims, prime_len)

        if pattern == P.ENCODER_DECODER:
            self.c_attn = Conv1D(n_in, n_state, init_scale=init_scale)
            self.c_enc_kv = Conv1D(n_in, n_state * 2, init_scale=init_scale)
        else:
            self.c_attn = Conv1D(n_in, n_state * 3, init_scale=init_scale)
        self.c_proj = Conv1D(n_state, n_in, zero_out, init_scale=init_scale)
        self.attn_dropout = attn_dropout
        self.resid_dropout = nn.Dropout(resid_dropout) if resid_dropout > 0.0 else nn.Identity()

        # (1/sqrt(sqrt(d)))**2 rather than 1/sqrt(d), as the original scales the scores.
        self.score_scale = (1.0 / math.sqrt(math.sqrt(n_state // n_head))) ** 2
        self.record_attn = False
        self.w: torch.Tensor | None = None

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor, encoder_kv: torch.Tensor | None = None,
                cache: LayerCache | None = None, t0: int = 0) -> torch.Tensor:
        """x: ``(N, L, n_in)``; encoder_kv: ``(N, encoder_dims, n_in)`` for encoder-decoder attention.

        With a ``cache``, x holds positions ``t0 .. t0 + L - 1`` of a sampling run whose earlier positions
        are in the cache.
        """
        if cache is not None:
            a = self._sample(x, encoder_kv, cache, t0)
        else:
            q, k, v = self._project(x, encoder_kv)
            if self.checkpoint_attn in (1, 2) and self.training and torch.is_grad_enabled():
                a = checkpoint(self._attend, q, k, v, use_reentrant=False)
            else:
                a = self._attend(q, k, v)
        return self.resid_dropout(self.c_proj(a))

    def _project(self, x: torch.Tensor, encoder_kv: torch.Tensor | None):
        if self.attn_func != P.ENCODER_DECODER:
            if encoder_kv is not None:
                raise ValueError(f"encoder_kv is only used by encoder-decoder attention, not {self.attn_func.name}")
            return self.c_attn(x).chunk(3, dim=2)
        q = self.c_attn(x)
        k, v = self._encoder_kv(encoder_kv, q)
        return q, k, v

    def _encoder_kv(self, encoder_kv: torch.Tensor | None, q: torch.Tensor):
        if encoder_kv is None:
            raise ValueError("encoder-decoder attention (attn_func 6) needs encoder_kv (N, encoder_dims, n_in)")
        if encoder_kv.shape[1] != self.encoder_dims or encoder_kv.shape[0] != q.shape[0]:
            raise ValueError(f"encoder_kv has shape {tuple(encoder_kv.shape)}; expected "
                             f"({q.shape[0]}, {self.encoder_dims}, {self.n_in})")
        return self.c_enc_kv(encoder_kv.type_as(q)).chunk(2, dim=2)

    # ------------------------------------------------------------------ full sequence
    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Attention of a whole sequence; q, k, v ``(N, L, n_state)`` (k, v ``(N, S, n_state)`` for the encoder)."""
        f = self.attn_func
        if f in (P.DENSE, P.ENCODER_DECODER):
            return self._dense(q, k, v, causal_offset=0 if f == P.DENSE else None)
        if f == P.PRIME:
            n = min(self.layout.length, k.shape[1])
            return self._dense(q, k[:, :n], v[:, :n], causal_offset=0)
        if q.shape[1] % self.block_ctx != 0:
            raise ValueError(f"{f.name} attention needs a length that is a multiple of block_ctx={self.block_ctx}, "
                             f"got {q.shape[1]}")
        if f == P.BLOCK:
            return self._block(q, k, v)
        if f == P.TRANSPOSE_BLOCK:
            return self._transpose_block(q, k, v)
        if f == P.PREV_BLOCK:
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
        return 1 if self.attn_func == P.SUMMARY else self.spread

    def _summary_mask(self, q_pos: torch.Tensor, n_blocks: int) -> torch.Tensor:
        """``(L, n_blocks * spread)`` bool: summary key (block j, slot i) sits at position
        ``j * block_ctx - spread + i``; block 0 holds the always-visible zero keys."""
        s = self._spread
        slot = torch.arange(n_blocks * s, device=q_pos.device)
        key_pos = (slot // s) * self.block_ctx - s + slot % s
        return key_pos[None, :] <= q_pos[:, None]

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
                                               dropout_p=p, is_causal=square_causal, scale=self.score_scale)
        return a.transpose(1, 2).reshape(q.shape[0], lq, self.n_state)

    def _explicit_attention(self, q, k, v, mask, p):
        """Softmax attention that keeps the probabilities in ``self.w`` (for alignment)."""
        s = math.sqrt(self.score_scale)
        w = torch.matmul(q * s, (k * s).transpose(-1, -2))
        w = w.to(torch.promote_types(w.dtype, torch.float32))  # softmax in at least float32
        if mask is not None:
            w = w.masked_fill(~mask, -1e9)
        w = F.softmax(w, dim=-1).to(q.dtype)
        # Prime attention keeps only music queries over lyric keys, as alignment needs.
        self.w = w[:, :, self.prime_len:, :self.prime_len] if self.attn_func == P.PRIME else w
        return torch.matmul(F.dropout(w, p, self.training), v)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.n_head, -1)).transpose(1, 2)  # (B, H, L, d_head)

    # ------------------------------------------------------------------ sampling
    def _sample(self, x: torch.Tensor, encoder_kv: torch.Tensor | None, cache: LayerCache, t0: int) -> torch.Tensor:
        if not self.mask and self.attn_func.causal:
            raise ValueError("cached sampling needs a causal transformer (mask=True)")
        if self.attn_func == P.ENCODER_DECODER:
            q = self.c_attn(x)
            if t0 == 0:
                k, v = self._encoder_kv(encoder_kv, q)
                cache.key.copy_(k)
                cache.value.copy_(v)
            return self._dense(q, cache.key, cache.value)
        q, k, v = self.c_attn(x).chunk(3, dim=2)
        if x.shape[1] == 1:
            cache.write(t0, k, v)
            return self._dense(q, *cache.visible(t0))
        return self._sample_chunk(q, k, v, cache, t0)

    def _pad_blocks(self, x: torch.Tensor, front: int) -> torch.Tensor:
        """Zero-pad ``(N, L, d)`` with ``front`` positions before and up to a block multiple after."""
        back = -(front + x.shape[1]) % self.block_ctx
        return F.pad(x, (0, 0, front, back))

    def _sample_chunk(self, q, k, v, cache: LayerCache, t0: int) -> torch.Tensor:
        """Several new positions: the whole-sequence arithmetic of the pattern over the cached keys it
        needs and the new ones, so a chunk costs about what the same positions cost in ``forward``."""
        f, length, t1 = self.attn_func, q.shape[1], t0 + q.shape[1]
        off = t0 % self.block_ctx if self.block_ctx else 0
        if cache.layout.ring:  # BLOCK, PREV_BLOCK: read the history before the new rows overwrite it
            old_k, old_v = cache.read(cache.layout.history(t0), t0)
            kc = self._pad_blocks(torch.cat([old_k, k], dim=1), 0)
            vc = self._pad_blocks(torch.cat([old_v, v], dim=1), 0)
            cache.write(t0, k, v)
            attend = self._block if f == P.BLOCK else self._prev_block
            return attend(self._pad_blocks(q, off), kc, vc)[:, off:off + length]
        cache.write(t0, k, v)
        key, value = cache.key, cache.value
        if f == P.TRANSPOSE_BLOCK:  # slots past t1 are still zero and serve as padding
            end = -(-t1 // self.block_ctx) * self.block_ctx
            return self._transpose_block(self._pad_blocks(q, off), key[:, :end], value[:, :end])[:, off:off + length]
        if f in (P.SUMMARY, P.SUMMARY_SPREAD):
            q_pos = torch.arange(t0, t1, device=q.device)
            return self._dense(q, key, value, mask=self._summary_mask(q_pos, self.blocks))
        stop = min(t1, cache.layout.length)  # DENSE, PRIME
        return self._dense(q, key[:, :stop], value[:, :stop], causal_offset=t0)


def _check_config(n_ctx, n_state, n_head, attn_func, blocks, spread, encoder_dims, prime_len) -> AttentionPattern:
    if attn_func not in range(8):
        raise ValueError(f"attn_func must be 0..7, got {attn_func}")
    pattern = AttentionPattern(attn_func)
    if n_state % n_head != 0:
        raise ValueError(f"n_state={n_state} is not divisible by n_head={n_head}")
    if blocks is not None and (blocks <= 0 or n_ctx % blocks != 0):
        raise ValueError(f"n_ctx={n_ctx} must be a multiple of blocks={blocks}")
    if pattern.blocked and blocks is None:
        raise ValueError(f"{pattern.name} attention (attn_func {attn_func}) needs `blocks`")
    if pattern == P.SUMMARY_SPREAD and (spread is None or not 1 <= spread <= n_ctx // blocks):
        raise ValueError(f"attn_func 5 needs 1 <= spread <= block_ctx, got spread={spread}")
    if pattern == P.ENCODER_DECODER and not encoder_dims:
        raise ValueError("attn_func 6 needs encoder_dims (the number of encoder states)")
    if pattern == P.PRIME and prime_len is None:
        raise ValueError("attn_func 7 needs prime_len (the number of lyric positions)")
    return pattern
