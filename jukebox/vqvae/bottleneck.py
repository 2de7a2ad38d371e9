"""Vector quantisation with an EMA-updated codebook (one :class:`BottleneckBlock` per level).

Training updates the codebook ``k`` as exponential moving averages of the encoder vectors
assigned to each code (decay ``mu``), and re-seeds codes whose running usage falls below
``threshold`` with random encoder vectors. Everything that decides the codebook is made
identical across data-parallel ranks: random picks come from rank 0, the per-code sums are
all-reduced.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from jukebox.utils.dist_utils import allreduce, broadcast

__all__ = ["BottleneckBlock", "Bottleneck", "NoBottleneckBlock", "NoBottleneck"]


class BottleneckBlock(nn.Module):
    """Quantiser for one level: ``k_bins`` codes of size ``emb_width``, EMA decay ``mu``.

    ``k_sum`` / ``k_elem`` (the running per-code vector sums and counts) are training state,
    not part of the state_dict; ``restore_k`` rebuilds them from a loaded codebook.
    """

    def __init__(self, k_bins: int, emb_width: int, mu: float) -> None:
        super().__init__()
        self.k_bins = k_bins
        self.emb_width = emb_width
        self.mu = mu
        self.threshold = 1.0
        self.init = False
        self.k_sum: torch.Tensor | None = None
        self.k_elem: torch.Tensor | None = None
        self.register_buffer("k", torch.zeros(k_bins, emb_width))

    def _random_codes(self, x: torch.Tensor) -> torch.Tensor:
        """``k_bins`` rows of ``x`` (tiled with small noise if too few), identical on all ranks."""
        n, width = x.shape
        if n < self.k_bins:
            x = x.repeat((self.k_bins + n - 1) // n, 1)
            x = x + torch.randn_like(x) * (0.01 / math.sqrt(width))
        picks = x[torch.randperm(x.shape[0], device=x.device)][: self.k_bins].contiguous()
        return broadcast(picks, src=0)

    @torch.no_grad()
    def init_k(self, x: torch.Tensor) -> None:
        """Seed the codebook from encoder vectors ``x`` ``(N*T, emb_width)``."""
        self.init = True
        self.k.copy_(self._random_codes(x))
        self.k_sum = self.k.clone()
        self.k_elem = torch.ones(self.k_bins, device=self.k.device)

    @torch.no_grad()
    def restore_k(self, num_tokens: int | None = None, threshold: float = 1.0) -> None:
        """Start the EMA state from the current (loaded) codebook, as if each code had been used
        ``num_tokens / k_bins`` times; codes then need ``threshold`` usage to survive."""
        self.init = True
        self.k_sum = self.k.clone()
        self.k_elem = torch.ones(self.k_bins, device=self.k.device)
        if num_tokens is not None:
            expected_usage = num_tokens / self.k_bins
            self.k_elem.mul_(expected_usage)
            self.k_sum.mul_(expected_usage)
        self.threshold = threshold

    @torch.no_grad()
    def update_k(self, x: torch.Tensor, x_l: torch.Tensor) -> dict[str, torch.Tensor]:
        """One EMA step from vectors ``x`` ``(N*T, emb_width)`` and their codes ``x_l`` ``(N*T,)``."""
        mu, k_bins = self.mu, self.k_bins
        onehot = torch.zeros(k_bins, x.shape[0], device=x.device, dtype=x.dtype)
        onehot.scatter_(0, x_l.view(1, -1), 1)
        k_rand = self._random_codes(x)
        with torch.autocast(x.device.type, enabled=False):  # codebook sums stay in float32
            batch_sum = allreduce(onehot @ x)  # (k_bins, emb_width)
        batch_elem = allreduce(onehot.sum(dim=-1))  # (k_bins,)

        old_k = self.k.clone()
        self.k_sum = mu * self.k_sum + (1.0 - mu) * batch_sum
        self.k_elem = mu * self.k_elem + (1.0 - mu) * batch_elem
        usage = (self.k_elem.view(k_bins, 1) >= self.threshold).float()
        self.k.copy_(usage * (self.k_sum / self.k_elem.view(k_bins, 1)) + (1 - usage) * k_rand)

        prob = batch_elem / torch.sum(batch_elem)
        return dict(
            entropy=-torch.sum(prob * torch.log(prob + 1e-8)),
            used_curr=(batch_elem >= self.threshold).sum(),
            usage=torch.sum(usage),
            dk=torch.norm(self.k - old_k) / math.sqrt(old_k.numel()),
        )

    def preprocess(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(N, emb_width, T) -> (N*T, emb_width)`` float32 and the pre-norm ``||x - mean(x)|| / sqrt(numel)``."""
        if x.dim() != 3 or x.shape[1] != self.emb_width:
            raise ValueError(f"bottleneck expects latents of shape (N, {self.emb_width}, T), got {tuple(x.shape)}")
        x = x.permute(0, 2, 1).reshape(-1, self.emb_width).float()
        prenorm = torch.norm(x - torch.mean(x)) / math.sqrt(x.numel())
        return x, prenorm

    def quantise(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Nearest code of each row of ``x`` ``(M, emb_width)``: codes ``(M,)`` and the mean squared distance."""
        k_w = self.k.t()
        with torch.autocast(x.device.type, enabled=False):  # code choices need float32 distances
            distance = (torch.sum(x ** 2, dim=-1, keepdim=True) - 2 * torch.matmul(x, k_w)
                        + torch.sum(k_w ** 2, dim=0, keepdim=True))  # (M, k_bins)
        min_distance, x_l = torch.min(distance, dim=-1)
        return x_l, torch.mean(min_distance)

    def dequantise(self, x_l: torch.Tensor) -> torch.Tensor:
        return F.embedding(x_l, self.k)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Latents ``(N, emb_width, T)`` to codes ``(N, T)`` int64."""
        n, _, t = x.shape
        x, _ = self.preprocess(x)
        x_l, _ = self.quantise(x)
        return x_l.view(n, t)

    def decode(self, x_l: torch.Tensor) -> torch.Tensor:
        """Codes ``(N, T)`` to code vectors ``(N, emb_width, T)``."""
        n, t = x_l.shape
        return self.dequantise(x_l).view(n, t, self.emb_width).permute(0, 2, 1).contiguous()

    def forward(self, x: torch.Tensor, update_k: bool = True
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """Quantise ``x`` ``(N, emb_width, T)``.

        Returns codes ``(N, T)``, straight-through quantised latents ``(N, emb_width, T)``, the
        commit loss ``||x_q - x||^2 / numel`` and metrics (``fit``, ``pn`` and, when
        ``update_k``, ``entropy``, ``used_curr``, ``usage``, ``dk``).
        """
        n, _, t = x.shape
        x, prenorm = self.preprocess(x)
        if update_k and not self.init:
            self.init_k(x)
        x_l, fit = self.quantise(x)
        x_d = self.dequantise(x_l)
        update_metrics = self.update_k(x, x_l) if update_k else {}
        commit_loss = torch.norm(x_d.detach() - x) ** 2 / x.numel()
        x_d = x + (x_d - x).detach()  # gradients pass straight through to the encoder
        x_d = x_d.view(n, t, self.emb_width).permute(0, 2, 1).contiguous()
        return x_l.view(n, t), x_d, commit_loss, dict(fit=fit, pn=prenorm, **update_metrics)


class Bottleneck(nn.Module):
    """One :class:`BottleneckBlock` per level; the codebook is updated only in training mode."""

    def __init__(self, l_bins: int, emb_width: int, mu: float, levels: int) -> None:
        super().__init__()
        self.levels = levels
        self.level_blocks = nn.ModuleList(BottleneckBlock(l_bins, emb_width, mu) for _ in range(levels))

    def encode(self, xs: Sequence[torch.Tensor], start_level: int = 0) -> list[torch.Tensor]:
        """Latents of levels ``start_level, start_level + 1, ...`` -> their codes."""
        return [block.encode(x) for block, x in zip(self.level_blocks[start_level:], xs)]

    def decode(self, zs: Sequence[torch.Tensor], start_level: int = 0, end_level: int | None = None
               ) -> list[torch.Tensor]:
        end_level = self.levels if end_level is None else end_level
        return [block.decode(z) for block, z in zip(self.level_blocks[start_level:end_level], zs)]

    def forward(self, xs: Sequence[torch.Tensor]):
        """Per level: codes, quantised latents, commit losses, and (training only) metric dicts."""
        zs, xs_quantised, commit_losses, metrics = [], [], [], []
        for block, x in zip(self.level_blocks, xs):
            z, x_quantised, commit_loss, metric = block(x, update_k=self.training)
            if not self.training:
                # In eval, nothing may reach the encoder through the straight-through path.
                x_quantised = x_quantised.detach()
            zs.append(z)
            xs_quantised.append(x_quantised)
            commit_losses.append(commit_loss)
            if self.training:
                metrics.append(metric)
        return zs, xs_quantised, commit_losses, metrics


class NoBottleneckBlock(nn.Module):
    """Stand-in level block of :class:`NoBottleneck` (no codebook)."""

    def restore_k(self, num_tokens: int | None = None, threshold: float = 1.0) -> None:
        pass


class NoBottleneck(nn.Module):
    """Identity bottleneck: the continuous latents pass through unquantised (an autoencoder)."""

    def __init__(self, levels: int) -> None:
        super().__init__()
        self.levels = levels
        self.level_blocks = nn.ModuleList(NoBottleneckBlock() for _ in range(levels))

    def encode(self, xs: Sequence[torch.Tensor], start_level: int = 0) -> list[torch.Tensor]:
        return list(xs)

    def decode(self, zs: Sequence[torch.Tensor], start_level: int = 0, end_level: int | None = None
               ) -> list[torch.Tensor]:
        return list(zs)

    def forward(self, xs: Sequence[torch.Tensor]):
        zero = torch.zeros((), device=xs[0].device)
        commit_losses = [zero for _ in range(self.levels)]
        metrics = [dict(entropy=zero, usage=zero, used_curr=zero, pn=zero, dk=zero) for _ in range(self.levels)]
        return list(xs), list(xs), commit_losses, metrics
