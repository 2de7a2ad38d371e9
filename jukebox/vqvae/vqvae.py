"""Hierarchical VQ-VAE: per level an encoder from raw audio, a quantiser and a decoder back to audio."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import torch
import torch.nn as nn

from jukebox.vqvae.bottleneck import Bottleneck, NoBottleneck
from jukebox.vqvae.encdec import Decoder, Encoder
from jukebox.vqvae.losses import VQVAELoss, make_vqvae_loss

__all__ = ["VQVAE", "Reconstruction", "calculate_strides", "calculate_hop_lengths"]


def calculate_strides(strides: Sequence[int], downs: Sequence[int]) -> list[int]:
    """Per-level downsampling factor ``stride ** down`` (the original's meaning of this name)."""
    return [int(stride) ** int(down) for stride, down in zip(strides, downs)]


def calculate_hop_lengths(strides: Sequence[int], downs: Sequence[int]) -> list[int]:
    """Raw audio samples per token at each level: the running product of :func:`calculate_strides`."""
    hops, hop = [], 1
    for downsample in calculate_strides(strides, downs):
        hop *= downsample
        hops.append(hop)
    return hops


class Reconstruction(NamedTuple):
    """What :meth:`VQVAE.reconstruct` returns, per level ``l``: the reconstruction ``x_outs[l]`` ``(N, T, C)``,
    the quantiser's commitment loss ``commit_losses[l]`` (a scalar) and its metrics ``quantiser_metrics[l]``
    (empty in eval mode)."""

    x_outs: list[torch.Tensor]
    commit_losses: list[torch.Tensor]
    quantiser_metrics: list[dict[str, torch.Tensor]]


class VQVAE(nn.Module):
    """VQ-VAE over audio ``(N, T, C)`` with ``levels`` independent encoder/decoder pairs.

    Level ``l`` compresses by ``hop_lengths[l]`` samples per token into ``l_bins`` codes of
    size ``emb_width``; ``multipliers[l]`` scales that level's conv width and depth; ``mu`` is the
    codebooks' EMA decay. Training scores the reconstructions with a loss module beside the model
    (``jukebox.vqvae.losses``). ``block_kwargs``: ``width``, ``depth``, ``m_conv``, ``dilation_growth_rate``,
    ``dilation_cycle``, ``zero_out``, ``res_scale``, ``reverse_decoder_dilation``.
    """

    def __init__(self, input_shape: Sequence[int], levels: int, downs_t: Sequence[int], strides_t: Sequence[int],
                 emb_width: int, l_bins: int, mu: float, multipliers: Sequence[int] | None = None,
                 use_bottleneck: bool = True, **block_kwargs: Any) -> None:
        super().__init__()
        if not (len(downs_t) == len(strides_t) == levels):
            raise ValueError(f"downs_t {tuple(downs_t)} and strides_t {tuple(strides_t)} need one entry per level "
                             f"(levels={levels})")
        if multipliers is None:
            multipliers = [1] * levels
        if len(multipliers) != levels:
            raise ValueError(f"hvqvae_multipliers {tuple(multipliers)} needs one entry per level (levels={levels})")
        self.sample_length = int(input_shape[0])
        x_channels = int(input_shape[-1])
        self.x_shape = tuple(input_shape[:-1])
        self.downsamples = calculate_strides(strides_t, downs_t)
        self.hop_lengths = calculate_hop_lengths(strides_t, downs_t)
        self.z_shapes = [(self.sample_length // hop,) for hop in self.hop_lengths]
        self.levels = levels
        self.multipliers = list(multipliers)
        self.downs_t, self.strides_t = tuple(downs_t), tuple(strides_t)
        self.emb_width, self.l_bins = emb_width, l_bins

        def level_kwargs(level: int) -> dict[str, Any]:
            kwargs = dict(block_kwargs)
            kwargs["width"] *= self.multipliers[level]
            kwargs["depth"] *= self.multipliers[level]
            return kwargs

        self.encoders = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for level in range(levels):
            args = (x_channels, emb_width, level + 1, downs_t[: level + 1], strides_t[: level + 1])
            self.encoders.append(Encoder(*args, **level_kwargs(level)))
            self.decoders.append(Decoder(*args, **level_kwargs(level)))
        self.bottleneck = Bottleneck(l_bins, emb_width, mu, levels) if use_bottleneck else NoBottleneck(levels)

    def _check_audio(self, x: torch.Tensor) -> None:
        channels = self.encoders[0].input_emb_width
        if x.dim() != 3 or x.shape[-1] != channels:
            raise ValueError(f"VQVAE expects audio of shape (N, T, {channels}), got {tuple(x.shape)}")

    def _level_range(self, start_level: int, end_level: int | None) -> int:
        end_level = self.levels if end_level is None else end_level
        if not 0 <= start_level < end_level <= self.levels:
            raise ValueError(f"need 0 <= start_level < end_level <= {self.levels}, got {start_level}, {end_level}")
        return end_level

    def _encoder_outputs(self, x: torch.Tensor, start_level: int = 0, end_level: int | None = None
                         ) -> list[torch.Tensor]:
        """Audio ``(N, T, C)`` -> the encoder output ``(N, emb_width, T // hop_l)`` of each level asked for."""
        x_in = x.permute(0, 2, 1).float()
        return [encoder(x_in)[-1] for encoder in self.encoders[start_level:end_level]]

    def _encode(self, x: torch.Tensor, start_level: int, end_level: int) -> list[torch.Tensor]:
        xs = self._encoder_outputs(x, start_level, end_level)
        return self.bottleneck.encode(xs, start_level=start_level)

    def encode(self, x: torch.Tensor, start_level: int = 0, end_level: int | None = None,
               bs_chunks: int = 1) -> list[torch.Tensor]:
        """Audio ``(N, T, C)`` -> codes ``[(N, T // hop_l) int64 for l in start_level..end_level-1]``,
        processed in ``bs_chunks`` batch chunks."""
        self._check_audio(x)
        end_level = self._level_range(start_level, end_level)
        chunks = [self._encode(x_i, start_level, end_level) for x_i in torch.chunk(x, bs_chunks, dim=0)]
        return [torch.cat(level_zs, dim=0) for level_zs in zip(*chunks)]

    def _decode(self, zs: Sequence[torch.Tensor], start_level: int, end_level: int) -> torch.Tensor:
        xs_quantised = self.bottleneck.decode(zs, start_level=start_level, end_level=end_level)
        # Only the lowest given level is decoded; the higher ones are implied by it.
        x_out = self.decoders[start_level](xs_quantised[0:1], all_levels=False)
        return x_out.permute(0, 2, 1)

    def decode(self, zs: Sequence[torch.Tensor], start_level: int = 0, end_level: int | None = None,
               bs_chunks: int = 1) -> torch.Tensor:
        """Codes ``[(N, T_l)]`` of levels ``start_level, start_level + 1, ...`` -> audio ``(N, T, C)``.

        Only the lowest level, ``zs[0]``, goes through its decoder, so the levels above may be left out:
        ``decode(zs[:1], start_level=l)`` equals ``decode(zs, start_level=l)``. ``end_level`` defaults to
        ``start_level + len(zs)``.
        """
        if not zs:
            raise ValueError("decode needs the codes of at least one level")
        end_level = self._level_range(start_level, start_level + len(zs) if end_level is None else end_level)
        if len(zs) != end_level - start_level:
            raise ValueError(f"decode got {len(zs)} code tensors for levels {start_level}..{end_level - 1}; "
                             "pass one per level")
        z_chunks = [torch.chunk(z, bs_chunks, dim=0) for z in zs]
        x_outs = [self._decode([chunks[i] for chunks in z_chunks], start_level, end_level)
                  for i in range(len(z_chunks[0]))]
        return torch.cat(x_outs, dim=0)

    def sample(self, n_samples: int) -> torch.Tensor:
        """Decode uniformly random codes: ``(n_samples, sample_length, C)``."""
        device = self.decoders[0].out.weight.device
        zs = [torch.randint(0, self.l_bins, size=(n_samples, *z_shape), device=device) for z_shape in self.z_shapes]
        return self.decode(zs)

    def reconstruct(self, x: torch.Tensor) -> Reconstruction:
        """Encode, quantise and decode ``x`` ``(N, T, C)`` at every level (``T`` a multiple of the top hop)."""
        self._check_audio(x)
        if x.shape[1] % self.hop_lengths[-1]:
            raise ValueError(f"VQVAE needs audio whose length is a multiple of the top hop length "
                             f"{self.hop_lengths[-1]}, got T={x.shape[1]}")
        xs = self._encoder_outputs(x)
        _, xs_quantised, commit_losses, quantiser_metrics = self.bottleneck(xs)
        x_outs = [decoder(xs_quantised[level:level + 1], all_levels=False).permute(0, 2, 1)
                  for level, decoder in enumerate(self.decoders)]
        return Reconstruction(x_outs, list(commit_losses), list(quantiser_metrics))

    def forward(self, x: torch.Tensor, hps: Mapping[str, Any] | None = None, loss_fn: str = "l1",
                loss: VQVAELoss | None = None) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """Reconstruct ``x`` ``(N, T, C)`` and score it with ``loss`` (``make_vqvae_loss(hps)``).

        Returns the level-0 reconstruction ``(N, T, C)``, the training loss and detached metrics
        (see :class:`jukebox.vqvae.losses.VQVAELoss`). The original's form ``forward(x, hps, loss_fn)``
        builds the loss from ``hps`` for this one call.
        """
        if loss is None:
            if hps is None:
                raise TypeError("VQVAE.forward needs loss=make_vqvae_loss(hps) (or the original's hps and loss_fn)")
            loss = make_vqvae_loss(hps, loss_fn)
        return loss(x, *self.reconstruct(x))
