"""get_alignment against the original's output on the single enc-dec lyrics prior (alignment_single_enc_dec.pt)."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import IDS_DIR, load_fixture
from jukebox.align import can_align, get_alignment
from jukebox.hparams import Hyperparams
from jukebox.make_models import make_labeller, make_prior, make_vqvae


@pytest.fixture(scope="module")
def prior():
    model = load_fixture("prior_single_enc_dec_lyrics")
    vq = load_fixture(model["vqvae_fixture"])
    vqvae = make_vqvae(Hyperparams(vq["hps"]), "cpu")
    vqvae.load_state_dict(vq["state_dict"])
    prior = make_prior(Hyperparams(model["hps"]), vqvae, "cpu")
    prior.load_state_dict(model["state_dict"])
    prior.labeller = make_labeller(prior, IDS_DIR)
    return prior


@pytest.mark.parametrize("run", [0, 1])
def test_alignment_matches_original(prior, run):
    fixture = load_fixture("alignment_single_enc_dec")
    assert (prior.alignment_layer, prior.alignment_head) == (fixture["alignment_layer"], fixture["alignment_head"])
    assert can_align(prior)
    case = fixture["runs"][run]
    levels = case["levels"]
    zs = [None] * (levels - 1) + [case["z_top"]]
    labels = dict(y=case["labels_y"], info=case["labels_info"])
    hps = Hyperparams(levels=levels, hop_fraction=case["hop_fraction"])
    alignments = get_alignment(None, zs, labels, prior, levels - 1, False, hps)
    assert len(alignments) == len(case["alignments"])
    for got, expected in zip(alignments, case["alignments"]):
        assert got.shape == tuple(expected.shape)
        np.testing.assert_allclose(got, expected.numpy(), atol=1e-5, rtol=0)
    # attention recording is switched off again afterwards
    assert not any(getattr(block.attn, "record_attn", False) for block in prior.prior.transformer._attn_mods)


def test_can_align_needs_lyrics_and_a_layer(prior):
    class NoLyrics:
        n_tokens = 0
    assert not can_align(NoLyrics())
    layer = prior.alignment_layer
    prior.alignment_layer = None
    try:
        assert not can_align(prior)
    finally:
        prior.alignment_layer = layer
