"""The sparse transformer: a stack of pre-LayerNorm residual blocks whose attention pattern
cycles with depth as given by ``attn_order``."""
from __future__ import annotations

import warnings
from collections.abc import Iterable

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from jukebox.transformer.factored_attention import FactoredAttention
from jukebox.transformer.kv_cache import KVCache, LayerCache
from jukebox.transformer.ops import ACT_FNS, Conv1D, LayerNorm
from jukebox.transformer.patterns import AttentionPattern

__all__ = ["MLP", "ResAttnBlock", "Transformer", "layer_attn_func"]

# attn_order -> the repeating cycle of attention functions over depth.
_ATTN_CYCLES: dict[int, tuple[int, ...]] = {
    0: (0,),                     # dense everywhere
    1: (1, 2),                   # row, column
    2: (1, 2, 3),                # row, column, previous row
    3: (1, 4),                   # row, summary
    4: (1, 5),                   # row, summary spread
    5: (1, 4, 1, 1),
    6: (1, 2, 3, 6),
    7: (1, 2, 3) * 5 + (6,),
    8: (1, 2, 3) * 3 + (6,),     # separate lyrics encoder, small
    9: (1, 2, 3, 0),
    10: (1, 2, 3) * 3 + ((1, 2, 3) * 3 + (6,)) * 7,  # 79 layers: 5b_lyrics, lyrics at 18, 28, ..., 78
}


def layer_attn_func(attn_order: int, depth: int) -> AttentionPattern:
    """The attention pattern of layer ``depth`` under ``attn_order`` (0..12)."""
    if attn_order in (11, 12):
        # Rows/columns/previous rows by depth % 3; layers with depth % 16 == 15 attend to the
        # lyrics (6: encoder-decoder, 7: prime attention) except those with depth % 3 == 2 (dense).
        if depth % 16 != 15:
            return AttentionPattern((1, 2, 3)[depth % 3])
        lyrics_func = 6 if attn_order == 11 else 7
        return AttentionPattern((lyrics_func, lyrics_func, 0)[depth % 3])
    if attn_order not in _ATTN_CYCLES:
        raise ValueError(f"attn_order must be 0..12, got {attn_order}")
    cycle = _ATTN_CYCLES[attn_order]
    return AttentionPattern(cycle[depth % len(cycle)])


def _use_checkpoint(module: nn.Module, cached: bool) -> bool:
    return not cached and module.training and torch.is_grad_enabled()


class MLP(nn.Module):
    """``c_fc`` -> activation -> ``c_proj``: ``(N, L, n_in) -> (N, L, n_in)``."""

    def __init__(self, n_in: int, n_state: int, resid_dropout: float = 0.0, afn: str = "quick_gelu",
                 zero_out: bool = False, init_scale: float = 1.0):
        super().__init__()
        if afn not in ACT_FNS:
            raise ValueError(f"unknown activation afn={afn!r}; choose one of {sorted(ACT_FNS)}")
        self.c_fc = Conv1D(n_in, n_state, init_scale=init_scale)
        self.c_proj = Conv1D(n_state, n_in, zero_out, init_scale=init_scale)
        self.act = ACT_FNS[afn]
        self.resid_dropout = nn.Dropout(resid_dropout) if resid_dropout > 0.0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.resid_dropout(self.c_proj(self.act(self.c_fc(x))))


class ResAttnBlock(nn.Module):
    """``h = x + a + m`` with ``a = attn(ln_0(x))`` and ``m = mlp(ln_1(x + a))``; x ``(N, L, n_in)``.

    With ``res_scale != 1`` the update is ``x + res_scale * (a + m)``.
    """

    def __init__(self, n_in: int, n_ctx: int, n_head: int,
                 attn_dropout: float = 0.0, resid_dropout: float = 0.0,
                 afn: str = "quick_gelu", scale: bool = True, mask: bool = False,
                 zero_out: bool = False, init_scale: float = 1.0, res_scale: float = 1.0,
                 m_attn: float = 0.25, m_mlp: float = 1.0,
                 checkpoint_attn: int = 0, checkpoint_mlp: int = 0,
                 attn_func: int = 0, blocks: int | None = None, spread: int | None = None,
                 encoder_dims: int | None = None, prime_len: int | None = None):
        super().__init__()
        self.attn = FactoredAttention(n_in=n_in, n_ctx=n_ctx, n_state=int(m_attn * n_in), n_head=n_head,
                                      attn_dropout=attn_dropout, resid_dropout=resid_dropout,
                                      scale=scale, mask=mask, zero_out=zero_out, init_scale=init_scale,
                                      checkpoint_attn=checkpoint_attn, attn_func=attn_func, blocks=blocks,
                                      spread=spread, encoder_dims=encoder_dims, prime_len=prime_len)
        self.ln_0 = LayerNorm(n_in)
        self.mlp = MLP(n_in=n_in, n_state=int(m_mlp * n_in), resid_dropout=resid_dropout, afn=afn,
                       zero_out=zero_out, init_scale=init_scale)
        self.ln_1 = LayerNorm(n_in)
        self.res_scale = res_scale
        self.checkpoint_attn = checkpoint_attn
        self.checkpoint_mlp = checkpoint_mlp
        self.n_in = n_in
        self.attn_func = attn_func

    def forward(self, x: torch.Tensor, encoder_kv: torch.Tensor | None = None,
                cache: LayerCache | None = None, t0: int = 0) -> torch.Tensor:
        ckpt = _use_checkpoint(self, cache is not None)
        if ckpt and self.checkpoint_attn == 3:
            a = checkpoint(self._attn_branch, x, encoder_kv, use_reentrant=False)
        else:
            a = self._attn_branch(x, encoder_kv, cache, t0)
        h = x + a
        m = checkpoint(self._mlp_branch, h, use_reentrant=False) if ckpt and self.checkpoint_mlp == 1 \
            else self._mlp_branch(h)
        if self.res_scale == 1.0:
            return h + m
        return x + self.res_scale * (a + m)

    def _attn_branch(self, x, encoder_kv, cache=None, t0=0):
        return self.attn(self.ln_0(x), encoder_kv, cache, t0)

    def _mlp_branch(self, h):
        return self.mlp(self.ln_1(h))


class Transformer(nn.Module):
    """Stack of ``n_depth`` ``ResAttnBlock`` s: ``(N, L, n_in) -> (N, L, n_in)``.

    Layer d uses attention pattern ``layer_attn_func(attn_order, d)``; only encoder-decoder layers
    receive ``encoder_kv`` ``(N, encoder_dims, n_in)``. For sampling, ``new_cache`` allocates the
    key/value cache of a run and ``forward(x, cache=cache)`` feeds it the next positions.
    With ``res_scale`` each block's residual update is scaled by ``1 / full_depth``: the depth of the transformer
    whose first ``n_depth`` blocks these are (default ``n_depth``).
    """

    def __init__(self, n_in: int, n_ctx: int, n_head: int, n_depth: int,
                 attn_dropout: float = 0.0, resid_dropout: float = 0.0,
                 afn: str = "quick_gelu", scale: bool = True, mask: bool = False,
                 zero_out: bool = False, init_scale: float = 1.0, res_scale: bool = False,
                 m_attn: float = 0.25, m_mlp: float = 1.0,
                 checkpoint_attn: int = 0, checkpoint_mlp: int = 0, checkpoint_res: int = 0,
                 attn_order: int = 0, blocks: int | None = None, spread: int | None = None,
                 encoder_dims: int | None = None, prime_len: int | None = None, full_depth: int | None = None):
        super().__init__()
        if blocks is not None and n_ctx % blocks != 0:
            raise ValueError(f"n_ctx={n_ctx} must be a multiple of blocks={blocks}")
        self.n_in = n_in
        self.n_ctx = n_ctx
        self.n_head = n_head
        self.encoder_dims = encoder_dims
        self.blocks = blocks
        self.block_ctx = n_ctx // blocks if blocks is not None else None
        self.prime_len = prime_len
        self.attn_order = attn_order
        self.checkpoint_res = checkpoint_res
        block_res_scale = 1.0 / (full_depth or n_depth) if res_scale else 1.0

        self._attn_mods = nn.ModuleList()
        for d in range(n_depth):
            func = layer_attn_func(attn_order, d)
            lyrics = func == AttentionPattern.ENCODER_DECODER  # lyrics layers start as identity
            self._attn_mods.append(ResAttnBlock(
                n_in=n_in, n_ctx=n_ctx, n_head=n_head, attn_dropout=attn_dropout, resid_dropout=resid_dropout,
                afn=afn, scale=scale, mask=mask, zero_out=True if lyrics else zero_out,
                init_scale=init_scale, res_scale=block_res_scale, m_attn=m_attn, m_mlp=m_mlp,
                checkpoint_attn=checkpoint_attn, checkpoint_mlp=checkpoint_mlp, attn_func=func,
                blocks=blocks, spread=spread, encoder_dims=encoder_dims, prime_len=prime_len))
        self.ws: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor, encoder_kv: torch.Tensor | None = None, fp16: bool = False,
                fp16_out: bool = False, cache: KVCache | None = None) -> torch.Tensor:
        """x ``(N, L, n_in)`` -> ``(N, L, n_in)``; float32 out unless ``fp16_out``.

        With a ``cache`` (from ``new_cache``), x holds the next L positions of a sampling run.
        """
        if fp16:
            x = x.to(self.compute_dtype(fp16, x.device))
        t0 = 0
        if cache is not None:
            t0 = cache.position
            if t0 + x.shape[1] > self.n_ctx:
                raise ValueError(f"sampling position {t0 + x.shape[1]} is past n_ctx={self.n_ctx}; start a new cache")
            cache.check(x.shape[0], x.dtype)
        for i, block in enumerate(self._attn_mods):
            kv = encoder_kv if block.attn_func == AttentionPattern.ENCODER_DECODER else None
            if cache is not None:
                x = block(x, kv, cache.layers[i], t0)
            elif self.checkpoint_res == 1 and _use_checkpoint(self, False):
                x = checkpoint(block, x, kv, use_reentrant=False)
            else:
                x = block(x, kv)
            if block.attn.record_attn:
                self.ws.append(block.attn.w)
        if cache is not None:
            cache.advance(x.shape[1])
        if not fp16_out and x.dtype == torch.float16:
            x = x.float()
        return x

    def new_cache(self, n_samples: int, dtype: torch.dtype = torch.float32,
                  device: torch.device | str | None = None) -> KVCache:
        """An empty key/value cache for sampling ``n_samples`` sequences computed in ``dtype``."""
        device = device if device is not None else self._attn_mods[0].attn.c_attn.w.device
        return KVCache([LayerCache(block.attn.layout, n_samples, block.attn.n_state, dtype, device)
                        for block in self._attn_mods])

    @staticmethod
    def compute_dtype(fp16: bool, device: torch.device) -> torch.dtype:
        """float16 when ``fp16`` is asked for off the CPU, else float32 (with a warning on CPU)."""
        if not fp16:
            return torch.float32
        if device.type == "cpu":
            warnings.warn("fp16 was requested on CPU; computing in float32 instead", stacklevel=3)
            return torch.float32
        return torch.float16

    def set_record_attn(self, record_attn: bool | int | Iterable[int]) -> None:
        """Keep the attention probabilities of all layers (True), none (False) or the given layer
        indices; each forward appends them to ``self.ws``. Clears what was recorded so far."""
        if isinstance(record_attn, bool):
            layers = set(range(len(self._attn_mods))) if record_attn else set()
        elif isinstance(record_attn, int):
            layers = {record_attn}
        else:
            layers = set(record_attn)
        for i, block in enumerate(self._attn_mods):
            block.attn.record_attn = i in layers
            block.attn.w = None
        self.ws = []
