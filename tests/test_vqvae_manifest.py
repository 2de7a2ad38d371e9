"""make_vqvae builds the released VQ-VAE with the original's exact state_dict layout."""
import json

import torch

from conftest import MANIFESTS
from jukebox.hparams import setup_hparams
from jukebox.make_models import make_vqvae


def test_released_vqvae_state_dict_matches_manifest():
    manifest = json.loads((MANIFESTS / "vqvae.json").read_text())
    vqvae = make_vqvae(setup_hparams("vqvae", dict(sample_length=1048576)), "meta")
    got = [[key, list(value.shape), str(value.dtype).removeprefix("torch.")]
           for key, value in vqvae.state_dict().items()]
    assert got == manifest["params"]
    assert [name for name, _ in vqvae.named_buffers()] == manifest["buffers"]
    assert sum(p.numel() for p in vqvae.parameters()) == manifest["n_params"]
    assert f"z_shapes={[list(shape) for shape in vqvae.z_shapes]}" in manifest["note"]
    assert vqvae.hop_lengths == [8, 32, 128] and vqvae.sample_length == 1048576
    assert not vqvae.training and not any(p.requires_grad for p in vqvae.parameters())


def test_meta_build_allocates_no_memory():
    vqvae = make_vqvae(setup_hparams("vqvae", dict(sample_length=1048576)), "meta")
    assert all(t.device == torch.device("meta") for t in vqvae.state_dict().values())
