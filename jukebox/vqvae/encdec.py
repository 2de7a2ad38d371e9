"""Convolutional encoders and decoders of the VQ-VAE.

Each VQ-VAE level has its own :class:`Encoder`, which runs from raw audio down to that level
through ``levels`` strided :class:`EncoderConvBlock` stages, and its own :class:`Decoder`,
which mirrors it with transposed convolutions.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn

from jukebox.vqvae.resnet import Resnet1D

__all__ = ["EncoderConvBlock", "DecoderConvBock", "Encoder", "Decoder"]


class EncoderConvBlock(nn.Module):
    """``down_t`` times (strided conv + residual stack), then a width-3 conv to ``output_emb_width``.

    ``(N, input_emb_width, T) -> (N, output_emb_width, T // stride_t ** down_t)``.
    """

    def __init__(self, input_emb_width: int, output_emb_width: int, down_t: int, stride_t: int, width: int,
                 depth: int, m_conv: float, dilation_growth_rate: int = 1, dilation_cycle: int | None = None,
                 zero_out: bool = False, res_scale: bool = False) -> None:
        super().__init__()
        filter_t, pad_t = stride_t * 2, stride_t // 2
        blocks: list[nn.Module] = []
        if down_t > 0:
            for i in range(down_t):
                blocks.append(nn.Sequential(
                    nn.Conv1d(input_emb_width if i == 0 else width, width, filter_t, stride_t, pad_t),
                    Resnet1D(width, depth, m_conv, dilation_growth_rate, dilation_cycle, zero_out, res_scale),
                ))
            blocks.append(nn.Conv1d(width, output_emb_width, 3, 1, 1))
        self.model = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class DecoderConvBock(nn.Module):
    """A width-3 conv from ``output_emb_width``, then ``down_t`` times (residual stack + transposed conv).

    ``(N, output_emb_width, T) -> (N, input_emb_width, T * stride_t ** down_t)``. The class name
    keeps the original's spelling so code written against it keeps working.
    """

    def __init__(self, input_emb_width: int, output_emb_width: int, down_t: int, stride_t: int, width: int,
                 depth: int, m_conv: float, dilation_growth_rate: int = 1, dilation_cycle: int | None = None,
                 zero_out: bool = False, res_scale: bool = False, reverse_decoder_dilation: bool = False,
                 checkpoint_res: bool | int = False) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        if down_t > 0:
            filter_t, pad_t = stride_t * 2, stride_t // 2
            blocks.append(nn.Conv1d(output_emb_width, width, 3, 1, 1))
            for i in range(down_t):
                blocks.append(nn.Sequential(
                    Resnet1D(width, depth, m_conv, dilation_growth_rate, dilation_cycle, zero_out=zero_out,
                             res_scale=res_scale, reverse_dilation=reverse_decoder_dilation,
                             checkpoint_res=checkpoint_res),
                    nn.ConvTranspose1d(width, input_emb_width if i == down_t - 1 else width, filter_t, stride_t,
                                       pad_t),
                ))
        self.model = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class _LevelStack(nn.Module):
    """The shape of an encoder or decoder: audio channels, latent width and the per-level down/up-sampling."""

    def __init__(self, input_emb_width: int, output_emb_width: int, levels: int, downs_t: Sequence[int],
                 strides_t: Sequence[int]) -> None:
        super().__init__()
        self.input_emb_width = input_emb_width
        self.output_emb_width = output_emb_width
        self.levels = levels
        self.downs_t = tuple(downs_t)
        self.strides_t = tuple(strides_t)


class Encoder(_LevelStack):
    """Raw audio ``(N, input_emb_width, T)`` to one latent per stage ``[(N, output_emb_width, T_l)]``."""

    def __init__(self, input_emb_width: int, output_emb_width: int, levels: int, downs_t: Sequence[int],
                 strides_t: Sequence[int], **block_kwargs: Any) -> None:
        super().__init__(input_emb_width, output_emb_width, levels, downs_t, strides_t)
        # The decoder-only option has no meaning for an encoder.
        block_kwargs = {k: v for k, v in block_kwargs.items() if k != "reverse_decoder_dilation"}
        self.level_blocks = nn.ModuleList(
            EncoderConvBlock(input_emb_width if level == 0 else output_emb_width, output_emb_width,
                             down_t, stride_t, **block_kwargs)
            for level, down_t, stride_t in zip(range(levels), self.downs_t, self.strides_t)
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        xs = []
        for level_block in self.level_blocks:
            x = level_block(x)
            xs.append(x)
        return xs


class Decoder(_LevelStack):
    """Latents ``[(N, output_emb_width, T_l)]`` back to audio ``(N, input_emb_width, T)``.

    With ``all_levels=False`` only the single (lowest) latent given is decoded; otherwise each
    stage's output is added to the next-lower latent before going on.
    """

    def __init__(self, input_emb_width: int, output_emb_width: int, levels: int, downs_t: Sequence[int],
                 strides_t: Sequence[int], **block_kwargs: Any) -> None:
        super().__init__(input_emb_width, output_emb_width, levels, downs_t, strides_t)
        self.level_blocks = nn.ModuleList(
            DecoderConvBock(output_emb_width, output_emb_width, down_t, stride_t, **block_kwargs)
            for down_t, stride_t in zip(self.downs_t, self.strides_t)
        )
        self.out = nn.Conv1d(output_emb_width, input_emb_width, 3, 1, 1)

    def forward(self, xs: Sequence[torch.Tensor], all_levels: bool = True) -> torch.Tensor:
        expected = self.levels if all_levels else 1
        if len(xs) != expected:
            raise ValueError(f"Decoder expected {expected} latent tensor(s) (all_levels={all_levels}), got {len(xs)}")
        x = xs[-1]
        for level in reversed(range(self.levels)):
            x = self.level_blocks[level](x)
            if level != 0 and all_levels:
                x = x + xs[level - 1]
        return self.out(x)
