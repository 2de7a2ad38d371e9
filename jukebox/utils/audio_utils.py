"""Spectral losses, reconstruction losses and loss normalisation (bandwidth) for audio.

Audio is ``(N, T, C)`` float with C in {1, 2}; stereo is averaged to mono before any STFT.
STFTs use a periodic Hann window of ``window_size`` samples, zero-padded at both ends to
``n_fft``, centred frames with reflect padding and one-sided magnitudes.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from jukebox.utils.dist_utils import allreduce, get_rank, get_world_size, print_once

__all__ = [
    "STFTValues", "DEFAULT_STFT", "multispec_stfts", "stft", "spec", "norm", "squeeze", "spectral_loss",
    "multi_stft_loss", "multispectral_loss", "spectral_convergence", "log_magnitude_loss",
    "reconstruction_loss", "audio_preprocess", "calculate_bandwidth",
]


@dataclass(frozen=True)
class STFTValues:
    n_fft: int
    hop_length: int
    window_size: int


# The single-resolution spectral loss, spectral convergence and the bandwidth always use these,
# whatever hps.n_fft / hps.hop_length say.
DEFAULT_STFT = STFTValues(n_fft=2048, hop_length=256, window_size=6 * 256)


def multispec_stfts(hps: Mapping[str, Any]) -> list[STFTValues]:
    """The STFT settings of the multi-resolution loss from ``hps.multispec_loss_*``."""
    n_ffts, hops, windows = (hps["multispec_loss_n_fft"], hps["multispec_loss_hop_length"],
                             hps["multispec_loss_window_size"])
    if not len(n_ffts) == len(hops) == len(windows):
        raise ValueError("multispec_loss_n_fft, multispec_loss_hop_length and multispec_loss_window_size "
                         f"must have the same length, got {len(n_ffts)}, {len(hops)}, {len(windows)}")
    return [STFTValues(int(n), int(h), int(w)) for n, h, w in zip(n_ffts, hops, windows)]


def stft(sig: torch.Tensor, values: STFTValues) -> torch.Tensor:
    """Complex STFT of ``(N, T)`` -> ``(N, n_fft // 2 + 1, frames)``."""
    window = torch.hann_window(values.window_size, device=sig.device, dtype=sig.dtype)
    return torch.stft(sig, values.n_fft, values.hop_length, win_length=values.window_size, window=window,
                      center=True, pad_mode="reflect", onesided=True, return_complex=True)


def spec(x: torch.Tensor, values: STFTValues = DEFAULT_STFT) -> torch.Tensor:
    """STFT magnitudes of ``(N, T)`` -> ``(N, n_fft // 2 + 1, frames)``."""
    return torch.linalg.vector_norm(torch.view_as_real(stft(x, values)), dim=-1)


def norm(x: torch.Tensor) -> torch.Tensor:
    """Per-item L2 norm: ``(N, ...)`` -> ``(N,)``."""
    return (x.reshape(x.shape[0], -1) ** 2).sum(dim=-1).sqrt()


def squeeze(x: torch.Tensor) -> torch.Tensor:
    """``(N, T, C)`` (C in {1, 2}, averaged) or ``(N, T)`` -> ``(N, T)`` float32."""
    x = x.float()
    if x.dim() == 3:
        if x.shape[-1] not in (1, 2):
            raise ValueError(f"audio must have 1 or 2 channels in the last axis (N, T, C), got shape {tuple(x.shape)}")
        x = torch.mean(x, -1)
    if x.dim() != 2:
        raise ValueError(f"audio must be (N, T, C) or (N, T), got shape {tuple(x.shape)}")
    return x


def _spec_pair(x_in: torch.Tensor, x_out: torch.Tensor, values: STFTValues) -> tuple[torch.Tensor, torch.Tensor]:
    return spec(squeeze(x_in), values), spec(squeeze(x_out), values)


def spectral_loss(x_in: torch.Tensor, x_out: torch.Tensor, hps: Mapping[str, Any] | None = None) -> torch.Tensor:
    """``|| |S(x_in)| - |S(x_out)| ||`` per item ``(N,)`` with the default STFT."""
    spec_in, spec_out = _spec_pair(x_in, x_out, DEFAULT_STFT)
    return norm(spec_in - spec_out)


def multi_stft_loss(x_in: torch.Tensor, x_out: torch.Tensor, stfts: Sequence[STFTValues]) -> torch.Tensor:
    """Mean over ``stfts`` of the spectral loss, per item ``(N,)``."""
    losses = []
    for values in stfts:
        spec_in, spec_out = _spec_pair(x_in, x_out, values)
        losses.append(norm(spec_in - spec_out))
    return sum(losses) / len(losses)


def multispectral_loss(x_in: torch.Tensor, x_out: torch.Tensor, hps: Mapping[str, Any]) -> torch.Tensor:
    """:func:`multi_stft_loss` over the ``hps.multispec_loss_*`` STFTs, per item ``(N,)``."""
    return multi_stft_loss(x_in, x_out, multispec_stfts(hps))


def spectral_convergence(x_in: torch.Tensor, x_out: torch.Tensor, hps: Mapping[str, Any] | None = None,
                         epsilon: float = 2e-3) -> torch.Tensor:
    """``||S_in - S_out|| / max(||S_in||, epsilon)`` per item ``(N,)``; 0 where ``||S_in|| <= epsilon``."""
    spec_in, spec_out = _spec_pair(x_in, x_out, DEFAULT_STFT)
    gt_norm = norm(spec_in)
    residual_norm = norm(spec_in - spec_out)
    mask = (gt_norm > epsilon).float()
    return (residual_norm * mask) / torch.clamp(gt_norm, min=epsilon)


def log_magnitude_loss(x_in: torch.Tensor, x_out: torch.Tensor, hps: Mapping[str, Any] | None = None,
                       epsilon: float = 1e-4) -> torch.Tensor:
    """Mean absolute difference of log magnitudes (default STFT), a scalar."""
    spec_in, spec_out = _spec_pair(x_in, x_out, DEFAULT_STFT)
    return torch.mean(torch.abs(torch.log(spec_in + epsilon) - torch.log(spec_out + epsilon)))


def reconstruction_loss(loss_fn: str, x_target: torch.Tensor, x_pred: torch.Tensor, bandwidth: Mapping[str, float],
                        linf_k: int, lmix: Mapping[str, float]) -> torch.Tensor:
    """Sample-domain loss normalised by ``bandwidth``: ``l1``, ``l2``, ``linf`` or ``lmix``, a scalar.

    ``linf`` is the mean of the ``linf_k`` largest squared errors of each item; ``lmix`` is
    ``lmix['l1'] * l1 + lmix['l2'] * l2 + lmix['linf'] * linf`` (zero weights skipped).
    """
    if loss_fn == "l1":
        return torch.mean(torch.abs(x_pred - x_target)) / bandwidth["l1"]
    if loss_fn == "l2":
        return torch.mean((x_pred - x_target) ** 2) / bandwidth["l2"]
    if loss_fn == "linf":
        residual = ((x_pred - x_target) ** 2).reshape(x_target.shape[0], -1)
        values, _ = torch.topk(residual, linf_k, dim=1)
        return torch.mean(values) / bandwidth["l2"]
    if loss_fn == "lmix":
        loss = 0.0
        for name in ("l1", "l2", "linf"):
            if lmix[name]:
                loss = loss + lmix[name] * reconstruction_loss(name, x_target, x_pred, bandwidth, linf_k, lmix)
        return loss
    raise ValueError(f"unknown loss_fn {loss_fn!r}; use one of 'l1', 'l2', 'linf', 'lmix'")


def audio_preprocess(x: torch.Tensor, hps: Mapping[str, Any]) -> torch.Tensor:
    """``(N, T, C)`` -> mono ``(N, T, 1)`` float32; stereo is mixed 0.5/0.5, or with a random
    per-item mix when ``hps.aug_blend``."""
    x = x.float()
    if x.dim() != 3 or x.shape[-1] not in (1, 2):
        raise ValueError(f"audio must be (N, T, C) with C in {{1, 2}}, got shape {tuple(x.shape)}")
    if x.shape[-1] == 2:
        mix = torch.rand((x.shape[0], 1), device=x.device) if hps.get("aug_blend") else 0.5
        return (mix * x[:, :, 0] + (1 - mix) * x[:, :, 1]).unsqueeze(2)
    return x


def calculate_bandwidth(dataset: Sequence[Any], hps: Mapping[str, Any], duration: float = 600) -> dict[str, float]:
    """Loss normalisers from about ``duration`` seconds of ``dataset``: ``l1`` = mean |x|, ``l2`` =
    variance of x, ``spec`` = mean Frobenius norm of the per-chunk STFT magnitudes (default STFT).

    ``dataset[i]`` is a ``(T, C)`` array/tensor or a ``(x, y)`` pair. Rank r reads items
    r, r+s, r+2s, ... with ``s = max(16, world_size)``; the sums are all-reduced over ranks.
    If the dataset runs out first, the statistics come from what was read.
    """
    import librosa

    sr = getattr(dataset, "sr", None) or hps["sr"]
    n_samples = int(sr * duration)
    l1 = total = total_sq = n_seen = spec_norm_total = spec_nelem = 0.0
    idx, step = get_rank(), max(16, get_world_size())
    while n_seen < n_samples and idx < len(dataset):
        x = dataset[idx]
        if isinstance(x, (tuple, list)):
            x = x[0]
        samples = np.asarray(x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else x, dtype=np.float64)
        if samples.ndim != 2:
            raise ValueError(f"calculate_bandwidth expects dataset items of shape (T, C), got {samples.shape}")
        # pad_mode: the original ran on librosa < 0.10, whose default was 'reflect'.
        stft_ = librosa.stft(np.mean(samples, axis=1), n_fft=DEFAULT_STFT.n_fft, hop_length=DEFAULT_STFT.hop_length,
                             win_length=DEFAULT_STFT.window_size, pad_mode="reflect")
        spec_norm_total += float(np.linalg.norm(np.abs(stft_)))
        spec_nelem += 1
        n_seen += samples.size
        l1 += float(np.sum(np.abs(samples)))
        total += float(np.sum(samples))
        total_sq += float(np.sum(samples ** 2))
        idx += step

    n_seen, total, total_sq, l1, spec_nelem, spec_norm_total = (
        allreduce(v) for v in (n_seen, total, total_sq, l1, spec_nelem, spec_norm_total))
    if n_seen == 0:
        raise ValueError("calculate_bandwidth saw no audio: the dataset is empty (or has fewer items than ranks)")
    mean = total / n_seen
    bandwidth = dict(l2=total_sq / n_seen - mean ** 2, l1=l1 / n_seen, spec=spec_norm_total / spec_nelem)
    print_once(f"bandwidth: {bandwidth}")
    return bandwidth
