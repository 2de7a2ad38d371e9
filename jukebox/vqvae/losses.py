"""The VQ-VAE's training loss and metrics, computed from its reconstructions; built once from hps."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn as nn

from jukebox.utils.audio_utils import (
    STFTValues,
    multi_stft_loss,
    multispec_stfts,
    reconstruction_loss,
    spectral_convergence,
    spectral_loss,
)

__all__ = ["VQVAELoss", "make_vqvae_loss"]


def _average_metrics(metrics: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Per-key mean of the per-level metric dicts (empty in eval mode)."""
    if not metrics:
        return {}
    return {key: sum(m[key] for m in metrics) / len(metrics) for key in metrics[0]}


class VQVAELoss(nn.Module):
    """``recons + spectral * spec + multispectral * multispec + commit * commit_loss``, each term summed
    over the levels, and the metrics of training.

    ``bandwidth`` (``l1``, ``l2``, ``spec``) normalises the losses (``calculate_bandwidth``). ``loss_fn``
    is the sample-domain loss (``l1``, ``l2``, ``linf``, ``lmix``; see ``reconstruction_loss``, which takes
    ``linf_k`` and ``lmix``). The spectral term is the spectral loss over ``bandwidth['spec']`` with
    ``nonrelative_spec``, the spectral convergence otherwise; the multispectral term uses ``stfts``.
    """

    def __init__(self, bandwidth: Mapping[str, float], loss_fn: str, commit: float, spectral: float,
                 multispectral: float, nonrelative_spec: bool, stfts: Sequence[STFTValues], linf_k: int,
                 lmix: Mapping[str, float]) -> None:
        super().__init__()
        self.bandwidth, self.loss_fn = dict(bandwidth), loss_fn
        self.commit, self.spectral, self.multispectral = commit, spectral, multispectral
        self.nonrelative_spec, self.stfts = nonrelative_spec, list(stfts)
        self.linf_k, self.lmix = linf_k, dict(lmix)

    def _reconstruction(self, loss_fn: str, x_target: torch.Tensor, x_out: torch.Tensor) -> torch.Tensor:
        return reconstruction_loss(loss_fn, x_target, x_out, self.bandwidth, self.linf_k, self.lmix)

    def _spectral(self, x_target: torch.Tensor, x_out: torch.Tensor) -> torch.Tensor:
        if self.nonrelative_spec:
            return torch.mean(spectral_loss(x_target, x_out) / self.bandwidth["spec"])
        return torch.mean(spectral_convergence(x_target, x_out))

    def forward(self, x: torch.Tensor, x_outs: Sequence[torch.Tensor], commit_losses: Sequence[torch.Tensor],
                quantiser_metrics: Sequence[Mapping[str, torch.Tensor]]
                ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """Score the reconstructions ``x_outs`` (one ``(N, T, C)`` per level) of ``x`` ``(N, T, C)``.

        ``commit_losses`` and ``quantiser_metrics`` are the quantiser's, per level (``VQVAE.reconstruct``).
        Returns the level-0 reconstruction ``(N, T, C)``, the loss and detached metrics (per level
        ``*_l{level+1}``, sums, level-0 diagnostics, quantiser metrics averaged over levels).
        """
        metrics: dict[str, torch.Tensor] = {}
        recons_loss = torch.zeros((), device=x.device)
        spec_loss = torch.zeros((), device=x.device)
        multispec_loss = torch.zeros((), device=x.device)
        x_target = x.float()
        for level in reversed(range(len(x_outs))):
            x_out = x_outs[level]
            this_recons = self._reconstruction(self.loss_fn, x_target, x_out)
            this_spec = self._spectral(x_target, x_out)
            this_multispec = torch.mean(multi_stft_loss(x_target, x_out, self.stfts) / self.bandwidth["spec"])
            metrics[f"recons_loss_l{level + 1}"] = this_recons
            metrics[f"spectral_loss_l{level + 1}"] = this_spec
            metrics[f"multispectral_loss_l{level + 1}"] = this_multispec
            recons_loss = recons_loss + this_recons
            spec_loss = spec_loss + this_spec
            multispec_loss = multispec_loss + this_multispec

        commit_loss = sum(commit_losses)
        loss = (recons_loss + self.spectral * spec_loss + self.multispectral * multispec_loss
                + self.commit * commit_loss)

        # x_out is the level-0 reconstruction here (the loop ran top level first).
        with torch.no_grad():
            metrics.update(
                recons_loss=recons_loss,
                spectral_loss=spec_loss,
                multispectral_loss=multispec_loss,
                spectral_convergence=torch.mean(spectral_convergence(x_target, x_out)),
                l2_loss=self._reconstruction("l2", x_target, x_out),
                l1_loss=self._reconstruction("l1", x_target, x_out),
                linf_loss=self._reconstruction("linf", x_target, x_out),
                commit_loss=commit_loss,
                **_average_metrics(quantiser_metrics),
            )
        metrics = {key: torch.as_tensor(val).detach() for key, val in metrics.items()}
        return x_out, loss, metrics


def make_vqvae_loss(hps: Mapping[str, Any], loss_fn: str | None = None) -> VQVAELoss:
    """The VQ-VAE loss of ``hps`` (``loss_fn`` defaults to ``hps.loss_fn``)."""
    if "bandwidth" not in hps:
        raise ValueError("hps.bandwidth is not set: compute the loss normalisers with "
                         "jukebox.utils.audio_utils.calculate_bandwidth(dataset, hps) and store them in hps")
    return VQVAELoss(
        bandwidth=hps["bandwidth"], loss_fn=hps["loss_fn"] if loss_fn is None else loss_fn, commit=hps["commit"],
        spectral=hps["spectral"], multispectral=hps["multispectral"],
        nonrelative_spec=bool(hps["use_nonrelative_specloss"]), stfts=multispec_stfts(hps), linf_k=hps["linf_k"],
        lmix={name: hps[f"lmix_{name}"] for name in ("l1", "l2", "linf")})
