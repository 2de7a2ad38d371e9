"""A tiny random-weight 3-level lyric model, saved as checkpoints and registered as ``MODELS["tiny_test"]``, for
tests that need the real loading path (checkpoint files, lazy priors, labellers, id tables) quickly.

Lengths are chosen so that every level samples several windows."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import torch

from conftest import IDS_DIR
from jukebox import make_models
from jukebox.hparams import HPARAMS_REGISTRY, Hyperparams, setup_hparams
from jukebox.utils.checkpoint import save_checkpoint

SR = 2048
# hop lengths 4/8/16 samples; 0.25 s = 512 samples = 128/64/32 tokens, n_ctx 16 -> 15/7/3 windows at hop 0.5
TINY = dict(
    tiny_vqvae=dict(sr=SR, levels=3, downs_t=(2, 1, 1), strides_t=(2, 2, 2), emb_width=8, l_bins=16, width=8,
                    depth=1, m_conv=1.0, dilation_growth_rate=3, commit=0.02, loss_fn="l2"),
    tiny_upsampler_0=dict(sr=SR, level=0, n_ctx=16, prior_width=16, prior_depth=2, heads=1, attn_order=2, blocks=4,
                          labels=True, y_bins=(120, 4111), max_bow_genre_size=5, cond_width=8, cond_depth=2,
                          cond_dilation_growth_rate=3, cond_c_res=1),
    tiny_upsampler_1=dict(sr=SR, level=1, n_ctx=16, prior_width=16, prior_depth=2, heads=1, attn_order=2, blocks=4,
                          labels=True, y_bins=(120, 4111), max_bow_genre_size=5, cond_width=8, cond_depth=2,
                          cond_dilation_growth_rate=3, cond_c_res=1, cond_res_scale=True),
    tiny_lyrics_prior=dict(sr=SR, level=2, n_ctx=16, prior_width=16, prior_depth=16, heads=2, attn_order=12, blocks=4,
                           labels=True, labels_v3=True, y_bins=(604, 7898), t_bins=16, max_bow_genre_size=1,
                           min_duration=1.0, max_duration=10.0, use_tokens=True, n_tokens=8, n_vocab=79,
                           prime_loss_fraction=0.4, single_enc_dec=True, alignment_layer=15, alignment_head=1),
)
COMMON = dict(model="tiny_test", levels=3, sample_length_in_seconds=0.25, total_sample_length_in_seconds=2, sr=SR,
              n_samples=2, hop_fraction=(0.5, 0.5, 0.5), fp16=False, ids_dir=str(IDS_DIR))
TOKENS = [128, 64, 32]
MODEL = "tiny_test"


def register(checkpoints: Path) -> None:
    for name, values in TINY.items():
        key = "restore_vqvae" if name == "tiny_vqvae" else "restore_prior"
        HPARAMS_REGISTRY[name] = Hyperparams(values, **{key: str(checkpoints / f"{name}.pth.tar")})
    make_models.MODELS["tiny_test"] = ("tiny_vqvae", "tiny_upsampler_0", "tiny_upsampler_1", "tiny_lyrics_prior")


def unregister() -> None:
    for name in TINY:
        HPARAMS_REGISTRY.pop(name, None)
    make_models.MODELS.pop("tiny_test", None)


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
    register(root)
    try:
        save_tiny_checkpoints(root)
        yield root
    finally:
        unregister()
