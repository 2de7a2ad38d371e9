"""The autoregressive sparse transformer over one flat sequence of tokens.

Training/scoring runs the whole sequence at once with the start token (or the label embedding
``y_cond``) in front. Sampling runs one token per step through the transformer's key/value
cache; a known prefix is first fed through that cache in chunks (``jukebox.inference.sampler``).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from jukebox.inference.sampler import TokenSampler
from jukebox.transformer.kv_cache import KVCache
from jukebox.transformer.transformer import Transformer

__all__ = ["PositionEmbedding", "ConditionalAutoregressive2D"]


def _normal(rows: int, width: int, std: float) -> torch.Tensor:
    w = torch.empty(rows, width)
    nn.init.normal_(w, std=std)
    return w


class PositionEmbedding(nn.Module):
    """Learned position embedding ``(prod(input_shape), width)``.

    With ``pos_init`` it is instead the sum of one table per axis of ``input_shape``.
    """

    def __init__(self, input_shape: tuple[int, ...], width: int, init_scale: float = 1.0,
                 pos_init: bool = False) -> None:
        super().__init__()
        self.input_shape = tuple(input_shape)
        self.input_dims = int(np.prod(input_shape))
        self.pos_init = pos_init
        if pos_init:
            axes = torch.meshgrid(*[torch.arange(n) for n in self.input_shape], indexing="ij")
            self.register_buffer("pos", torch.stack([a.reshape(-1) for a in axes], dim=1))
            self._pos_embs = nn.ModuleList()
            for n in self.input_shape:
                emb = nn.Embedding(n, width)
                nn.init.normal_(emb.weight, std=0.02)
                self._pos_embs.append(emb)
        else:
            self.pos_emb = nn.Parameter(_normal(self.input_dims, width, std=0.01 * init_scale))

    def forward(self) -> torch.Tensor:
        """-> ``(prod(input_shape), width)``."""
        if self.pos_init:
            return sum(emb(self.pos[:, i]) for i, emb in enumerate(self._pos_embs))
        return self.pos_emb


class ConditionalAutoregressive2D(nn.Module):
    """Transformer prior over ``prod(input_shape)`` tokens of ``bins`` values.

    x_cond: a conditioning ``(N, D, width)`` or ``(N, 1, width)`` added to the input (and, unless
    ``merged_decoder``, to the output) of the transformer. y_cond: ``(N, 1, width)`` that takes
    the place of the learned start token. encoder_dims / prime_len: lengths of the lyric
    sequence of encoder-decoder attention (separate encoder) or prime attention (one merged
    sequence). only_encode: return the activations, with no output layer. full_depth: the depth of the prior
    whose first ``depth`` blocks this one holds (its residual scale; see ``Transformer``).
    """

    def __init__(self, input_shape: tuple[int, ...], bins: int, width: int = 128, depth: int = 2, heads: int = 1,
                 attn_dropout: float = 0.0, resid_dropout: float = 0.0, emb_dropout: float = 0.0, mask: bool = True,
                 zero_out: bool = False, init_scale: float = 1.0, res_scale: bool = False, pos_init: bool = False,
                 m_attn: float = 0.25, m_mlp: float = 1.0, checkpoint_res: int = 0, checkpoint_attn: int = 0,
                 checkpoint_mlp: int = 0, attn_order: int = 0, blocks: int | None = None, spread: int | None = None,
                 x_cond: bool = False, y_cond: bool = False, encoder_dims: int = 0, only_encode: bool = False,
                 merged_decoder: bool = False, prime_len: int | None = None, full_depth: int | None = None) -> None:
        super().__init__()
        self.input_shape = tuple(input_shape)
        self.input_dims = int(np.prod(input_shape))
        self.encoder_dims = encoder_dims
        self.bins = bins
        self.width = width
        self.depth = depth

        self.x_emb = nn.Embedding(bins, width)
        nn.init.normal_(self.x_emb.weight, std=0.02 * init_scale)
        self.x_emb_dropout = nn.Dropout(emb_dropout)
        self.y_cond = y_cond
        self.x_cond = x_cond
        if not y_cond:
            self.start_token = nn.Parameter(_normal(1, width, std=0.01 * init_scale))

        self.pos_emb = PositionEmbedding(self.input_shape, width, init_scale=init_scale, pos_init=pos_init)
        self.pos_emb_dropout = nn.Dropout(emb_dropout)

        self.transformer = Transformer(
            n_in=width, n_ctx=self.input_dims, n_head=heads, n_depth=depth, attn_dropout=attn_dropout,
            resid_dropout=resid_dropout, afn="quick_gelu", scale=True, mask=mask, zero_out=zero_out,
            init_scale=init_scale, res_scale=res_scale, m_attn=m_attn, m_mlp=m_mlp,
            checkpoint_attn=checkpoint_attn, checkpoint_mlp=checkpoint_mlp, checkpoint_res=checkpoint_res,
            attn_order=attn_order, blocks=blocks, spread=spread, encoder_dims=encoder_dims, prime_len=prime_len,
            full_depth=full_depth)

        self.only_encode = only_encode
        self.prime_len = prime_len
        # The merged (untied) decoder of the 5b models does not add x_cond after the transformer.
        self.add_cond_after_transformer = not merged_decoder
        self.share_x_emb_x_out = not merged_decoder
        if not only_encode:
            self.x_out = nn.Linear(width, bins, bias=False)
            if self.share_x_emb_x_out:
                self.x_out.weight = self.x_emb.weight

    # ----------------------------------------------------------------------------------------- checks
    def check_tokens(self, x: torch.Tensor, what: str) -> None:
        """Raise unless ``x`` holds int64 token ids in ``[0, bins)``."""
        if x.dtype != torch.long:
            raise TypeError(f"{what} must be int64 (long) token ids, got {x.dtype}")
        if x.numel() and not ((0 <= x).all() and (x < self.bins).all()):
            raise ValueError(f"{what} must lie in [0, {self.bins}), got values in "
                             f"[{int(x.min())}, {int(x.max())}]")

    def check_conds(self, N: int, x_cond: torch.Tensor | None, y_cond: torch.Tensor | None) -> torch.Tensor | None:
        """Raise unless the conditioning fits this model for a batch of N; returns x_cond."""
        if self.y_cond:
            if y_cond is None or tuple(y_cond.shape) != (N, 1, self.width):
                got = None if y_cond is None else tuple(y_cond.shape)
                raise ValueError(f"this model needs y_cond of shape {(N, 1, self.width)}, got {got}")
        elif y_cond is not None:
            raise ValueError("this model takes no y_cond (it has a learned start token)")
        if self.x_cond:
            shapes = ((N, self.input_dims, self.width), (N, 1, self.width))
            if x_cond is None or tuple(x_cond.shape) not in shapes:
                got = None if x_cond is None else tuple(x_cond.shape)
                raise ValueError(f"this model needs x_cond of shape {shapes[0]} or {shapes[1]}, got {got}. "
                                 "Did you pass the correct --sample_length?")
        elif x_cond is not None:
            raise ValueError("this model takes no x_cond")
        return x_cond

    def start_input(self, N: int, y_cond: torch.Tensor | None) -> torch.Tensor:
        """The input at position 0: ``(N, 1, width)``."""
        if self.y_cond:
            return y_cond.view(N, 1, self.width)
        return self.start_token.view(1, 1, self.width).expand(N, 1, self.width)

    # ---------------------------------------------------------------------------------------- forward
    def activations(self, x: torch.Tensor, x_cond: torch.Tensor | None = None, y_cond: torch.Tensor | None = None,
                    encoder_kv: torch.Tensor | None = None, fp16: bool = False) -> torch.Tensor:
        """Tokens x ``(N, *input_shape)`` -> the transformer's output activations ``(N, D, width)`` (position t
        sees the tokens before t)."""
        N = x.shape[0]
        x = x.reshape(N, -1).long()
        h = self.x_emb(x)
        h = torch.cat([self.start_input(N, y_cond).to(h.dtype), h[:, :-1]], dim=1)
        h = self.x_emb_dropout(h) + self.pos_emb_dropout(self.pos_emb())
        if x_cond is not None:
            h = h + x_cond
        return self.add_output_cond(self.transformer(h, encoder_kv=encoder_kv, fp16=fp16), x_cond)

    def add_output_cond(self, h: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        """The transformer's output ``(N, L, width)`` plus the conditioning of its positions, which the
        tied-decoder models add again after the transformer (the merged decoder of the 5b models does not)."""
        return h + cond if self.add_cond_after_transformer and cond is not None else h

    def logits(self, x: torch.Tensor, x_cond: torch.Tensor | None = None, y_cond: torch.Tensor | None = None,
               encoder_kv: torch.Tensor | None = None, fp16: bool = False) -> torch.Tensor:
        """Tokens x ``(N, *input_shape)`` -> the logits of every position ``(N, D, bins)``."""
        return self.x_out(self.activations(x, x_cond, y_cond, encoder_kv, fp16))

    def loss(self, logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Cross entropy in bits of tokens x ``(N, *input_shape)`` under ``logits`` ``(N, D, bins)``."""
        return F.cross_entropy(logits.reshape(-1, self.bins), x.reshape(-1).long()) / math.log(2.0)

    def separate_losses(self, logits: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(lyrics loss, music loss) in bits of a merged sequence (single encoder-decoder): the first
        ``prime_len`` positions are the lyrics."""
        if self.prime_len is None:
            raise ValueError("separate losses need a model built with prime_len (single encoder-decoder)")
        p, x = self.prime_len, x.reshape(x.shape[0], -1)
        return self.loss(logits[:, :p], x[:, :p]), self.loss(logits[:, p:], x[:, p:])

    def forward(self, x: torch.Tensor, x_cond: torch.Tensor | None = None, y_cond: torch.Tensor | None = None,
                encoder_kv: torch.Tensor | None = None, fp16: bool = False, loss_full: bool = False,
                encode: bool = False, get_preds: bool = False, get_acts: bool = False,
                get_sep_loss: bool = False):
        """The original's call form. Returns ``activations`` when ``only_encode``; otherwise ``(loss, extra)``
        where loss is the cross entropy in bits (``separate_losses`` with ``get_sep_loss``) and extra is the
        logits (get_preds), the activations (get_acts) or None."""
        if self.only_encode:
            return self.activations(x, x_cond, y_cond, encoder_kv, fp16)
        acts = self.activations(x, x_cond, y_cond, encoder_kv, fp16)
        logits = self.x_out(acts)
        loss = self.separate_losses(logits, x) if get_sep_loss else self.loss(logits, x)
        return loss, logits if get_preds else acts if get_acts else None

    # --------------------------------------------------------------------------------------- sampling
    def sampling_inputs(self, x: torch.Tensor, t0: int, t1: int, start: torch.Tensor, pos_emb: torch.Tensor,
                        x_cond: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Transformer inputs of positions [t0, t1) ``(N, t1 - t0, width)`` and their conditioning.

        Position t sees the token at t - 1 (the start token at 0), plus its position embedding and x_cond.
        """
        h = self.x_emb(x[:, max(t0 - 1, 0):t1 - 1])
        if t0 == 0:
            h = torch.cat([start, h], dim=1)
        h = h + pos_emb[t0:t1]
        if x_cond is None:
            return h, None
        cond = x_cond if x_cond.shape[1] == 1 else x_cond[:, t0:t1]
        return h + cond, cond

    def cached_forward(self, h: torch.Tensor, cond: torch.Tensor | None, encoder_kv: torch.Tensor | None,
                       fp16: bool, cache: KVCache) -> torch.Tensor:
        """Inputs ``(N, L, width)`` at the next L positions of ``cache`` -> output activations ``(N, L, width)``."""
        return self.add_output_cond(self.transformer(h, encoder_kv=encoder_kv, fp16=fp16, cache=cache), cond)

    def cached_logits(self, x: torch.Tensor, x_cond: torch.Tensor | None = None, y_cond: torch.Tensor | None = None,
                      encoder_kv: torch.Tensor | None = None, fp16: bool = False, n_prime: int = 0,
                      chunk_size: int | None = None) -> torch.Tensor:
        """Logits ``(N, L, bins)`` of given tokens x ``(N, L)`` computed along the sampling path.

        The first n_prime tokens are primed in chunks of chunk_size, the rest are fed one step at a time,
        exactly as :meth:`primed_sample` does with drawn tokens; so this checks the key/value cache
        against :meth:`forward` without random draws.
        """
        return TokenSampler(self).cached_logits(x, x_cond, y_cond, encoder_kv, fp16, n_prime, chunk_size)

    def sample(self, n_samples: int, x_cond: torch.Tensor | None = None, y_cond: torch.Tensor | None = None,
               encoder_kv: torch.Tensor | None = None, fp16: bool = False, temp: float = 1.0, top_k: int = 0,
               top_p: float = 0.0, get_preds: bool = False, sample_tokens: int | None = None):
        """Ancestral sampling of ``sample_tokens`` (default: all D) tokens.

        Returns tokens ``(N, *input_shape)`` (``(N, sample_tokens)`` when fewer), and with get_preds
        also the logits before temperature/filtering at every step ``(N, sample_tokens, bins)``.
        """
        return TokenSampler(self).sample(n_samples, x_cond, y_cond, encoder_kv, fp16, temp, top_k, top_p,
                                         get_preds, sample_tokens)

    def primed_sample(self, n_samples: int, x: torch.Tensor, x_cond: torch.Tensor | None = None,
                      y_cond: torch.Tensor | None = None, encoder_kv: torch.Tensor | None = None, fp16: bool = False,
                      temp: float = 1.0, top_k: int = 0, top_p: float = 0.0, get_preds: bool = False,
                      chunk_size: int | None = None, sample_tokens: int | None = None):
        """Continue the prefix x ``(N, L)``: it fills the cache in chunks of ``chunk_size`` (None: one
        pass), then tokens are drawn one at a time up to ``sample_tokens`` (default D).

        Returns the tokens including the prefix, and with get_preds the logits of every position
        ``(N, sample_tokens, bins)`` (those of the prefix positions come from the priming passes).
        """
        return TokenSampler(self).primed_sample(n_samples, x, x_cond, y_cond, encoder_kv, fp16, temp, top_k, top_p,
                                                get_preds, chunk_size, sample_tokens)
