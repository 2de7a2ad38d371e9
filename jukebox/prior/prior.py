"""SimplePrior: the prior (or upsampler) of one VQ-VAE level, with its conditioning.

A prior models the codes ``z`` of its level, window by window (``n_ctx`` tokens). It is
conditioned on
* the codes of the level above (upsamplers): ``Conditioner`` -> ``x_cond``;
* labels y (artist, genre, and for top-level priors where the window lies in the song):
  ``LabelConditioner`` -> ``y_cond`` (the start token) and ``x_cond`` (timing);
* lyrics, either through a separate lyrics encoder whose output the music transformer
  attends to (``prime_prior``, 5b_lyrics), or as lyric tokens in front of the music tokens in
  one merged sequence and vocabulary (``single_enc_dec``, 1b_lyrics).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from jukebox.data.labels import EmptyLabeller, Labeller
from jukebox.inference.sampler import sample_codes
from jukebox.prior.autoregressive import ConditionalAutoregressive2D
from jukebox.prior.conditioners import Conditioner, LabelConditioner
from jukebox.transformer.ops import Conv1D, LayerNorm
from jukebox.utils.dist_utils import print_once
from jukebox.vqvae.vqvae import calculate_strides

__all__ = ["SimplePrior", "TransformerInputs"]


class TransformerInputs(NamedTuple):
    """The autoregressive transformer's inputs for one window of codes (``SimplePrior.transformer_inputs``).

    tokens: ``(N, n_ctx)`` codes, or with ``single_enc_dec`` the lyric tokens then the codes as one shifted sequence
    ``(N, n_tokens + n_ctx)``; x_cond: ``(N, L, width)`` over the same positions, or None; y_cond: ``(N, 1, width)``
    or None; encoder_kv: the separate lyrics encoder's output ``(N, n_tokens, width)``, or None; prime: the lyric
    tokens ``(N, n_tokens)``, or None.
    """

    tokens: torch.Tensor
    x_cond: torch.Tensor | None
    y_cond: torch.Tensor | None
    encoder_kv: torch.Tensor | None
    prime: torch.Tensor | None


class SimplePrior(nn.Module):
    """Prior of level ``level`` of a VQ-VAE with ``len(z_shapes)`` levels.

    z_shapes: per-level code shapes of one window, ``[(T_0,), (T_1,), ...]`` (this level's is
    ``(n_ctx,)``); encoder/decoder: the VQ-VAE's ``encode``/``decode`` (functions, so the VQ-VAE's
    weights are not part of this module). The kwargs dicts are those ``make_prior`` builds from hps.
    """

    def __init__(self, z_shapes: list[tuple[int, ...]], l_bins: int, encoder: Callable, decoder: Callable,
                 level: int, downs_t: tuple[int, ...], strides_t: tuple[int, ...], labels: bool,
                 prior_kwargs: dict[str, Any], x_cond_kwargs: dict[str, Any], y_cond_kwargs: dict[str, Any],
                 prime_kwargs: dict[str, Any], copy_input: bool, labels_v3: bool = False,
                 merged_decoder: bool = False, single_enc_dec: bool = False) -> None:
        super().__init__()
        prior_kwargs, prime_kwargs = dict(prior_kwargs), dict(prime_kwargs)
        self.use_tokens = prime_kwargs.pop("use_tokens")
        self.n_tokens = prime_kwargs.pop("n_tokens")
        self.prime_loss_fraction = prime_kwargs.pop("prime_loss_fraction")
        self.copy_input = copy_input
        if copy_input:
            prime_kwargs["bins"] = l_bins

        self.z_shapes = [tuple(s) for s in z_shapes]
        self.levels = len(self.z_shapes)
        if not 0 <= level < self.levels:
            raise ValueError(f"level must be in [0, {self.levels}) for a {self.levels}-level VQ-VAE, got {level}")
        self.level = level
        self.z_shape = self.z_shapes[level]
        self.l_bins = l_bins
        self.encoder = encoder
        self.decoder = decoder

        # Upsamplers are conditioned on the level above; labels give y_cond (and timing at the top).
        self.x_cond = level != self.levels - 1
        self.cond_level = level + 1
        self.y_cond = labels
        self.single_enc_dec = single_enc_dec
        if single_enc_dec and not labels:
            raise ValueError("single_enc_dec priors take their lyric tokens from the labels: set labels=True")

        if self.x_cond:
            self.conditioner_blocks = nn.ModuleList([
                Conditioner(input_shape=self.z_shapes[self.cond_level], bins=l_bins,
                            down_t=downs_t[self.cond_level], stride_t=strides_t[self.cond_level], **x_cond_kwargs)
            ])
        if self.y_cond:
            self.n_time = self.z_shape[0]
            self.y_emb = LabelConditioner(n_time=self.n_time, include_time_signal=not self.x_cond, **y_cond_kwargs)

        if single_enc_dec:
            # One sequence: n_tokens lyric tokens (ids [0, n_vocab)) then the music tokens (shifted by n_vocab).
            self.prior_shapes = [(self.n_tokens,), tuple(prior_kwargs.pop("input_shape"))]
            self.prior_bins = [prime_kwargs["bins"], prior_kwargs.pop("bins")]
            self.prior_dims = [int(np.prod(shape)) for shape in self.prior_shapes]
            self.prior_bins_shift = [int(s) for s in np.cumsum([0, *self.prior_bins])[:-1]]
            self.prior_width = prior_kwargs["width"]
            self.prime_loss_dims, self.gen_loss_dims = self.prior_dims
            self.total_loss_dims = self.prime_loss_dims + self.gen_loss_dims
            self.prior = ConditionalAutoregressive2D(input_shape=(sum(self.prior_dims),), bins=sum(self.prior_bins),
                                                     x_cond=True, y_cond=True, prime_len=self.prime_loss_dims,
                                                     **prior_kwargs)
        else:
            if self.n_tokens != 0 and self.use_tokens:
                self.prime_loss_dims = int(self.n_tokens)
                self.prime_acts_width, self.prime_state_width = prime_kwargs["width"], prior_kwargs["width"]
                self.prime_prior = ConditionalAutoregressive2D(input_shape=(self.n_tokens,), x_cond=False,
                                                               y_cond=False, only_encode=True, **prime_kwargs)
                self.prime_state_proj = Conv1D(self.prime_acts_width, self.prime_state_width,
                                               init_scale=prime_kwargs["init_scale"])
                self.prime_state_ln = LayerNorm(self.prime_state_width)
                self.prime_bins = prime_kwargs["bins"]
                self.prime_x_out = nn.Linear(self.prime_state_width, self.prime_bins, bias=False)
                nn.init.normal_(self.prime_x_out.weight, std=0.02 * prior_kwargs["init_scale"])
            else:
                self.prime_loss_dims = 0
            self.gen_loss_dims = int(np.prod(self.z_shape))
            self.total_loss_dims = self.prime_loss_dims + self.gen_loss_dims
            self.prior = ConditionalAutoregressive2D(x_cond=self.x_cond or self.y_cond, y_cond=self.y_cond,
                                                     encoder_dims=self.prime_loss_dims,
                                                     merged_decoder=merged_decoder, **prior_kwargs)

        self.n_ctx = self.gen_loss_dims
        self.downsamples = calculate_strides(strides_t, downs_t)
        self.cond_downsample = self.downsamples[level + 1] if level != self.levels - 1 else None
        self.raw_to_tokens = int(np.prod(self.downsamples[:level + 1]))
        self.sample_length = self.n_ctx * self.raw_to_tokens
        self.labels_v3 = labels_v3
        # Built outside the model (jukebox.make_models.make_labeller reads the id tables) and set here.
        self.labeller: Labeller | EmptyLabeller | None = None if labels else EmptyLabeller()
        print_once(f"Level:{level}, Cond downsample:{self.cond_downsample}, Raw to tokens:{self.raw_to_tokens}, "
                   f"Sample length:{self.sample_length}")

    # ------------------------------------------------------------------------------------------ labels
    def get_y_and_indices(self, labels: dict | None, start: int
                          ) -> tuple[torch.Tensor | None, list[list[int]] | None]:
        """y of the window starting at token ``start`` of this level (sample_length, offset and lyric tokens
        set for it) and, per item, the indices of its lyric tokens in the full lyrics (-1: padding).
        labels: ``{'y': (N, label_len), 'info': [...]}``. (None, None) for unlabelled priors."""
        if not self.y_cond:
            return None, None
        y = labels["y"].clone()
        y[:, 2] = int(self.sample_length)
        y[:, 1:2] = y[:, 1:2] + int(start * self.raw_to_tokens)
        if self.labeller is None:
            raise ValueError("this labelled prior has no labeller: set prior.labeller = "
                             "jukebox.make_models.make_labeller(prior) (it reads the artist/genre id tables)")
        indices = self.labeller.set_y_lyric_tokens(y, labels)
        return y, indices

    def get_y(self, labels: dict | None, start: int, get_indices: bool = False):
        """The window's y of ``get_y_and_indices``; ``get_indices=True`` is the original's call form for both."""
        y, indices = self.get_y_and_indices(labels, start)
        return (y, indices) if get_indices else y

    def get_z_conds(self, zs: list[torch.Tensor], start: int, end: int) -> list[torch.Tensor] | None:
        """Codes of the level above for the window [start, end) of this level (None at the top)."""
        if self.level == self.levels - 1:
            return None
        if len(zs) <= self.cond_level:
            raise ValueError(f"zs must hold the codes of every level, indexed by level; got {len(zs)} entries "
                             f"but this level-{self.level} prior needs zs[{self.cond_level}]")
        if start % self.cond_downsample or end % self.cond_downsample:
            raise ValueError(f"window [{start}, {end}) must be aligned to the conditioning downsample "
                             f"{self.cond_downsample}")
        z_cond = zs[self.cond_level][:, start // self.cond_downsample:end // self.cond_downsample]
        if z_cond.shape[1] != self.n_ctx // self.cond_downsample:
            raise ValueError(f"expected {self.n_ctx // self.cond_downsample} codes of level {self.level + 1} for "
                             f"window [{start}, {end}), got {z_cond.shape[1]}: the upper level is too short")
        return [z_cond]

    # ------------------------------------------------------------------------------- single enc-dec
    def prior_preprocess(self, xs: list[torch.Tensor], conds: list[torch.Tensor | None]
                         ) -> tuple[torch.Tensor, torch.Tensor]:
        """Merge [lyric tokens, music tokens] into one sequence of shifted ids ``(N, L)`` and their
        conditionings (None: zeros) into ``(N, n_tokens + n_ctx, width)``."""
        N = xs[0].shape[0]
        merged = []
        for x, shift in zip(xs, self.prior_bins_shift):
            if x.dtype != torch.long:
                raise TypeError(f"tokens must be int64 (long), got {x.dtype}")
            merged.append((x + shift).view(N, -1))
        filled = []
        for cond, dims in zip(conds, self.prior_dims):
            if cond is None:
                cond = torch.zeros(N, dims, self.prior_width, dtype=torch.float, device=xs[0].device)
            elif tuple(cond.shape) != (N, dims, self.prior_width):
                raise ValueError(f"conditioning must have shape {(N, dims, self.prior_width)}, got {tuple(cond.shape)}")
            filled.append(cond)
        return torch.cat(merged, dim=1), torch.cat(filled, dim=1)

    def prior_postprocess(self, z: torch.Tensor) -> torch.Tensor:
        """The music part of a merged sequence ``(N, L)`` as music ids ``(N, L - n_tokens)``.

        Nothing stops the model from sampling lyric ids at music positions; they are clamped to 0.
        """
        N, n_prime = z.shape[0], self.prior_dims[0]
        music = z[:, n_prime:] - self.prior_bins_shift[1]
        return music.clamp(min=0).view(N, -1, *self.prior_shapes[1][1:])

    # ---------------------------------------------------------------------------------- conditioning
    def x_emb(self, z_conds: list[torch.Tensor]) -> torch.Tensor:
        """Conditioning from the codes of the levels above ``[(N, T_{l+1}), ...]`` -> ``(N, n_ctx, width)``."""
        z_conds = list(z_conds or [])[:self.cond_level - self.level]
        if len(z_conds) != len(self.conditioner_blocks):
            raise ValueError(f"an upsampler of level {self.level} needs the codes of level {self.cond_level}, "
                             f"got {len(z_conds)} conditioning tensors")
        x_cond = None
        for z_cond, block in reversed(list(zip(z_conds, self.conditioner_blocks))):
            x_cond = block(z_cond, x_cond)
        return x_cond

    def _split_y(self, y: torch.Tensor | None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """y -> (label part, lyric tokens)."""
        if y is None or not self.y_cond:
            if y is not None and y.numel():
                raise ValueError("this prior has no labels (labels=False): pass y=None")
            if self.single_enc_dec:
                raise ValueError("a single_enc_dec prior needs y with its lyric tokens")
            return None, None
        expected = 4 + self.y_emb.max_bow_genre_size + self.n_tokens
        if y.dim() != 2 or y.shape[1] != expected:
            raise ValueError(f"y must have shape (N, {expected}) (4 + max_bow_genre_size "
                             f"{self.y_emb.max_bow_genre_size} + n_tokens {self.n_tokens}), got {tuple(y.shape)}")
        n_labels = y.shape[1] - self.n_tokens
        return y[:, :n_labels], y[:, n_labels:]

    def check_inputs(self, z: torch.Tensor | None = None, z_conds: list[torch.Tensor] | None = None,
                     y: torch.Tensor | None = None) -> None:
        """Raise unless codes z (this level), z_conds (the levels above) and labels y hold values this prior
        knows. Forward passes check shapes only; call this where inputs enter (sampling, data loading)."""
        for name, codes in (("z", z), *((f"z_conds[{i}]", c) for i, c in enumerate(z_conds or []))):
            if codes is not None and codes.numel() and not ((0 <= codes).all() and (codes < self.l_bins).all()):
                raise ValueError(f"{name}: codes must lie in [0, {self.l_bins}), got [{int(codes.min())}, "
                                 f"{int(codes.max())}]; were they made by another VQ-VAE?")
        labels, lyrics = self._split_y(y)
        if labels is not None:
            self.y_emb.check(labels)
        n_vocab = self.prior_bins[0] if self.single_enc_dec else getattr(self, "prime_bins", None)
        if lyrics is not None and n_vocab is not None and lyrics.numel() \
                and not ((0 <= lyrics).all() and (lyrics < n_vocab).all()):
            raise ValueError(f"lyric tokens must lie in [0, {n_vocab}), got [{int(lyrics.min())}, "
                             f"{int(lyrics.max())}]")

    def get_cond(self, z_conds: list[torch.Tensor] | None, y: torch.Tensor | None):
        """Conditioning of one window.

        Returns (x_cond ``(N, n_ctx, W)`` or None, y_cond ``(N, 1, W)`` or None, lyric tokens ``(N, n_tokens)``
        or None).
        """
        y, prime = self._split_y(y)
        y_cond, y_pos = self.y_emb(y) if self.y_cond else (None, None)
        x_cond = self.x_emb(z_conds) if self.x_cond else y_pos
        return x_cond, y_cond, prime

    def transformer_inputs(self, z: torch.Tensor, z_conds: list[torch.Tensor] | None, y: torch.Tensor | None,
                           fp16: bool = False) -> TransformerInputs:
        """What the autoregressive transformer takes to read codes z ``(N, n_ctx)`` of one window, given the codes
        above and labels (see ``TransformerInputs``)."""
        x_cond, y_cond, prime = self.get_cond(z_conds, y)
        if self.copy_input:
            prime = z[:, :self.n_tokens]
        if self.single_enc_dec:
            tokens, x_cond = self.prior_preprocess([prime, z], [None, x_cond])
            return TransformerInputs(tokens, x_cond, y_cond, None, prime)
        return TransformerInputs(z, x_cond, y_cond, self.get_encoder_kv(prime, fp16=fp16), prime)

    def get_timing_bins(self, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """The bin indices of the three timing embeddings for labels y (labelled top-level priors)."""
        if not self.y_cond:
            raise RuntimeError("this prior has no labels")
        return self.y_emb.get_timing_bins(self._split_y(y)[0])

    def get_encoder_kv(self, prime: torch.Tensor | None, fp16: bool = False, sample: bool = False
                       ) -> torch.Tensor | None:
        """Lyrics encoder output ``(N, n_tokens, width)`` for lyric tokens ``(N, n_tokens)`` (separate encoder)."""
        if not (self.n_tokens != 0 and self.use_tokens):
            return None
        if prime is None:
            raise ValueError("this prior is conditioned on lyrics: pass y with its lyric tokens")
        prime_acts = self.prime_prior.activations(prime, fp16=fp16)
        encoder_kv = self.prime_state_ln(self.prime_state_proj(prime_acts.float()))
        if sample and fp16 and encoder_kv.device.type != "cpu":
            encoder_kv = encoder_kv.half()
        return encoder_kv

    def get_prime_loss(self, encoder_kv: torch.Tensor | None, prime_t: torch.Tensor | None) -> torch.Tensor:
        """Cross entropy (bits) of predicting the lyric tokens from the encoder output (0 without lyrics)."""
        if encoder_kv is None:
            device = self.prior.x_emb.weight.device
            return torch.tensor(0.0, device=device)
        logits = self.prime_x_out(encoder_kv.float())
        return F.cross_entropy(logits.reshape(-1, self.prime_bins), prime_t.reshape(-1)) / math.log(2.0)

    # ------------------------------------------------------------------------------------------- VQ-VAE
    def encode(self, x: torch.Tensor, start_level: int | None = None, end_level: int | None = None,
               bs_chunks: int = 1) -> list[torch.Tensor]:
        """Audio ``(N, T, 1)`` -> codes of levels [start_level (default: this level), end_level)."""
        start_level = self.level if start_level is None else start_level
        end_level = self.levels if end_level is None else end_level
        with torch.no_grad():
            return self.encoder(x, start_level=start_level, end_level=end_level, bs_chunks=bs_chunks)

    def decode(self, zs: list[torch.Tensor], start_level: int | None = None, end_level: int | None = None,
               bs_chunks: int = 1) -> torch.Tensor:
        """Codes of levels [start_level, end_level) -> audio ``(N, T, 1)``."""
        start_level = self.level if start_level is None else start_level
        end_level = self.levels if end_level is None else end_level
        if len(zs) != end_level - start_level:
            raise ValueError(f"expected codes of {end_level - start_level} levels, got {len(zs)}")
        with torch.no_grad():
            return self.decoder(zs, start_level=start_level, end_level=end_level, bs_chunks=bs_chunks)

    # ---------------------------------------------------------------------------------- train/score
    def attention_weights(self, z: torch.Tensor, z_conds: list[torch.Tensor] | None = None,
                          y: torch.Tensor | None = None, layers: bool | set[int] = True,
                          fp16: bool = False) -> list[torch.Tensor]:
        """The attention probabilities ``(N, heads, queries, keys)`` of the transformer ``layers`` (True: all)
        for codes z ``(N, n_ctx)``; for prime attention, music queries over lyric keys (as alignment needs)."""
        self.prior.transformer.set_record_attn(layers)
        try:
            self._losses(z, z_conds, y, fp16, get_preds=False)
            return self.prior.transformer.ws
        finally:
            self.prior.transformer.set_record_attn(False)

    def z_forward(self, z: torch.Tensor, z_conds: list[torch.Tensor] | None = None, y: torch.Tensor | None = None,
                  fp16: bool = False, get_preds: bool = False, get_attn_weights: bool | set = False):
        """Loss of codes z ``(N, n_ctx)`` given the codes above and labels.

        Returns (loss, metrics) with metrics bpd, prime_loss, gen_loss (bits; and preds, the logits,
        with get_preds). ``get_attn_weights`` is the original's call form of ``attention_weights``.
        """
        if get_attn_weights:
            return self.attention_weights(z, z_conds, y, get_attn_weights, fp16)
        return self._losses(z, z_conds, y, fp16, get_preds)

    def _losses(self, z: torch.Tensor, z_conds: list[torch.Tensor] | None, y: torch.Tensor | None, fp16: bool,
                get_preds: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        tokens, x_cond, y_cond, encoder_kv, prime = self.transformer_inputs(z, z_conds, y, fp16)
        if self.single_enc_dec:
            logits = self.prior.logits(tokens, x_cond, y_cond, fp16=fp16)
            prime_loss, gen_loss = self.prior.separate_losses(logits, tokens)
        else:
            prime_loss = self.get_prime_loss(encoder_kv, prime)
            logits = self.prior.logits(tokens, x_cond, y_cond, encoder_kv, fp16=fp16)
            gen_loss = self.prior.loss(logits, tokens)
        loss = (self.prime_loss_fraction * prime_loss * self.prime_loss_dims / self.total_loss_dims
                + gen_loss * self.gen_loss_dims / self.total_loss_dims)
        metrics = dict(bpd=gen_loss.detach().clone(), prime_loss=prime_loss.detach().clone(),
                       gen_loss=gen_loss.detach().clone())
        if get_preds:
            metrics["preds"] = logits.detach().clone()
        return loss, metrics

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None, fp16: bool = False, decode: bool = False,
                get_preds: bool = False):
        """Audio x ``(N, sample_length, 1)`` -> (reconstruction or None, loss, metrics)."""
        z, *z_conds = self.encode(x, bs_chunks=x.shape[0])
        loss, metrics = self.z_forward(z=z, z_conds=z_conds, y=y, fp16=fp16, get_preds=get_preds)
        x_out = self.decode([z, *z_conds]) if decode else None
        return x_out, loss, metrics

    # ------------------------------------------------------------------------------------------ sample
    def sample(self, n_samples: int, z: torch.Tensor | None = None, z_conds: list[torch.Tensor] | None = None,
               y: torch.Tensor | None = None, fp16: bool = False, temp: float = 1.0, top_k: int = 0,
               top_p: float = 0.0, chunk_size: int | None = None, sample_tokens: int | None = None,
               cpu_backend: str | None = None) -> torch.Tensor:
        """Sample codes ``(N, sample_tokens or n_ctx)`` of one window, continuing the prefix z ``(N, L)`` if given
        (see ``jukebox.inference.sampler.sample_codes``)."""
        return sample_codes(self, n_samples, z, z_conds, y, fp16, temp, top_k, top_p, chunk_size, sample_tokens,
                            cpu_backend)
