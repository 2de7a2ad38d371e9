"""The models a representation needs: the VQ-VAE (for the top-level codes) and the top-level prior built with only
its first L transformer blocks and no output layer, loaded from the full-depth checkpoint without reading the rest."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from jukebox.hparams import Hyperparams, setup_hparams
from jukebox.make_models import make_model, model_name, model_sets
from jukebox.vqvae.vqvae import VQVAE, calculate_hop_lengths

__all__ = ["EmbeddingModel", "load_embedding_model", "prior_depth"]


@dataclass
class EmbeddingModel:
    """A VQ-VAE and a top-level prior (``SimplePrior``, possibly truncated) on one device; ``sr`` is the audio rate."""

    name: str
    vqvae: VQVAE
    prior: nn.Module
    sr: int

    @property
    def depth(self) -> int:
        """The transformer blocks the prior was built with."""
        return len(self.prior.prior.transformer._attn_mods)


def prior_depth(model: str) -> int:
    """The number of transformer blocks of ``MODELS[model]``'s top-level prior."""
    return int(setup_hparams(model_sets(model_name(model))[-1], {}).prior_depth)


def load_embedding_model(model: str, depth: int, device: str | torch.device, ids_dir: str | None = None,
                         weights_source: str | None = None) -> EmbeddingModel:
    """``model``'s VQ-VAE and its top-level prior with only its first ``depth`` blocks, on ``device``.

    ``model``: a ``MODELS`` name, ``hf://owner/name`` or a port-layout folder; ``weights_source``: see ``make_model``.

    The prior is built on the meta device without ``x_out`` and its checkpoint's tensors of the later blocks and of
    ``x_out`` are left unread (memory-mapped checkpoints); no upsampler is built. Its labeller reads the id tables in
    ``ids_dir`` (default: ``$JUKEBOX_IDS_DIR`` or the cache).
    """
    vqvae_name, *prior_names = model_sets(model_name(model))
    prior_hps, vq_hps = setup_hparams(prior_names[-1], {}), setup_hparams(vqvae_name, {})
    full_depth = int(prior_hps.prior_depth)
    if not 1 <= depth <= full_depth:
        raise ValueError(f"layers must lie in 1..{full_depth} (the blocks of {model}'s top-level prior), got {depth}")
    top_hop = calculate_hop_lengths(vq_hps.strides_t, vq_hps.downs_t)[-1]
    with torch.no_grad():
        vqvae, (lazy,) = make_model(model, device, Hyperparams(sample_length=prior_hps.n_ctx * top_hop),
                                    levels=[-1], weights_source=weights_source,
                                    prior_overrides={"prior_depth": depth}, encode_only=True)
    lazy.ids_dir = ids_dir
    prior = lazy.load(device)
    prior.labeller = lazy.labeller
    return EmbeddingModel(model, vqvae, prior, int(vq_hps.sr))
