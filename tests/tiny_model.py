"""The tiny random-weight 3-level lyric model of test_sample_e2e, saved as checkpoints, for tests that need the
real loading path (checkpoint files, lazy priors, labellers, id tables) without its end-to-end runs."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import torch

import test_sample_e2e as e2e
from jukebox import make_models
from jukebox.hparams import setup_hparams
from jukebox.utils.checkpoint import save_checkpoint

SR, TINY, COMMON, TOKENS = e2e.SR, e2e.TINY, e2e.COMMON, e2e.TOKENS
MODEL = "tiny_test"


def save_tiny_checkpoints(root: Path, seed: int = 0) -> None:
    """Write ``{name}.pth.tar`` of every part of the tiny model into ``root`` (registered to load from there)."""
    torch.manual_seed(seed)
    vq_hps = setup_hparams("tiny_vqvae", dict(sample_length=512, restore_vqvae=""))
    vqvae = make_models.make_vqvae(vq_hps, "cpu")
    save_checkpoint(root / "tiny_vqvae.pth.tar", dict(hps=vq_hps, model=vqvae.state_dict(), step=0))
    for name in list(TINY)[1:]:
        hps = setup_hparams(name, dict(restore_prior=""))
        prior = make_models.make_prior(hps, vqvae, "cpu")
        save_checkpoint(root / f"{name}.pth.tar", dict(hps=hps, model=prior.state_dict(), step=0))


@contextlib.contextmanager
def tiny_model(root: Path) -> Iterator[Path]:
    """Register the tiny model as ``MODELS['tiny_test']`` with checkpoints in ``root`` for the duration."""
    e2e._register(root)
    try:
        save_tiny_checkpoints(root)
        yield root
    finally:
        e2e._unregister()
