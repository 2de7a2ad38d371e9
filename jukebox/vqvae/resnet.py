"""Dilated 1-D residual stacks used by the VQ-VAE encoders/decoders and the upsampler conditioner."""
from __future__ import annotations

import math

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

__all__ = ["ResConv1DBlock", "Resnet1D"]


class ResConv1DBlock(nn.Module):
    """``x + res_scale * conv1x1(relu(conv3(relu(x))))`` on ``(N, n_in, T)``; the length is kept."""

    def __init__(self, n_in: int, n_state: int, dilation: int = 1, zero_out: bool = False,
                 res_scale: float = 1.0) -> None:
        super().__init__()
        self.model = nn.Sequential(
            nn.ReLU(),
            nn.Conv1d(n_in, n_state, 3, 1, dilation, dilation),
            nn.ReLU(),
            nn.Conv1d(n_state, n_in, 1, 1, 0),
        )
        if zero_out:
            nn.init.zeros_(self.model[-1].weight)
            nn.init.zeros_(self.model[-1].bias)
        self.res_scale = res_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.res_scale * self.model(x)


class Resnet1D(nn.Module):
    """``n_depth`` residual blocks with dilation ``dilation_growth_rate ** (depth % dilation_cycle)``.

    ``checkpoint_res`` true keeps the blocks in ``self.blocks`` (a ModuleList) and recomputes
    their activations in the backward pass while training; otherwise they sit in ``self.model``
    (a Sequential). The two layouts give different state_dict names, as in the original.
    """

    def __init__(self, n_in: int, n_depth: int, m_conv: float = 1.0, dilation_growth_rate: int = 1,
                 dilation_cycle: int | None = None, zero_out: bool = False, res_scale: bool = False,
                 reverse_dilation: bool = False, checkpoint_res: bool | int = False) -> None:
        super().__init__()
        scale = 1.0 / math.sqrt(n_depth) if res_scale else 1.0
        blocks = []
        for depth in range(n_depth):
            exponent = depth if dilation_cycle is None else depth % dilation_cycle
            blocks.append(ResConv1DBlock(n_in, int(m_conv * n_in), dilation=dilation_growth_rate ** exponent,
                                         zero_out=zero_out, res_scale=scale))
        if reverse_dilation:
            blocks = blocks[::-1]
        self.checkpoint_res = bool(checkpoint_res)
        if self.checkpoint_res:
            self.blocks = nn.ModuleList(blocks)
        else:
            self.model = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, n_in, T) -> (N, n_in, T)``."""
        if not self.checkpoint_res:
            return self.model(x)
        recompute = self.training and torch.is_grad_enabled()
        for block in self.blocks:
            x = checkpoint(block, x, use_reentrant=False) if recompute else block(x)
        return x
