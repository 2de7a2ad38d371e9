"""make_prior builds the released priors with the original's state_dict names, shapes and dtypes.

Built on the meta device, so no memory is allocated for the billions of parameters.
"""
import json

import pytest

from conftest import MANIFESTS
from jukebox.hparams import setup_hparams
from jukebox.make_models import make_prior, make_vqvae

SETS = ["upsampler_level_0", "upsampler_level_1", "prior_5b", "prior_5b_lyrics", "prior_1b_lyrics"]


@pytest.fixture(scope="module")
def vqvae():
    return make_vqvae(setup_hparams("vqvae", dict(sample_length=1048576)), "meta")


@pytest.fixture(scope="module", params=SETS)
def built(request, vqvae):
    manifest = json.loads((MANIFESTS / f"{request.param}.json").read_text())
    prior = make_prior(setup_hparams(request.param, {}), vqvae, "meta")
    return manifest, prior


def test_state_dict_matches_manifest(built):
    manifest, prior = built
    got = [[k, list(v.shape), str(v.dtype).removeprefix("torch.")] for k, v in prior.state_dict().items()]
    expected = manifest["params"]
    assert len(got) == manifest["n_state_dict_keys"] == len(expected)
    mismatches = [(g, e) for g, e in zip(got, expected) if g != e]
    assert not mismatches, f"{len(mismatches)} mismatches, first: {mismatches[:3]}"
    assert all(t.device.type == "meta" for t in prior.state_dict().values())


def test_tied_weights_and_param_counts(built):
    manifest, prior = built
    state = prior.state_dict(keep_vars=True)
    for a, b in manifest["tied_keys"]:
        assert state[a] is state[b]
    if not manifest["tied_keys"]:  # merged_decoder: x_out is its own matrix
        assert state["prior.x_out.weight"] is not state["prior.x_emb.weight"]
    params = list(prior.parameters())  # parameters() counts a tied tensor once
    assert sum(p.numel() for p in params) == manifest["n_params"]
    by_dtype = {}
    for p in params:
        key = str(p.dtype).removeprefix("torch.")
        by_dtype[key] = by_dtype.get(key, 0) + p.numel()
    assert by_dtype == manifest["n_params_by_dtype"]
    assert sorted(name for name, _ in prior.named_buffers()) == sorted(manifest["buffers"])


def test_derived_sizes(built):
    manifest, prior = built
    hps = manifest["hps"]
    assert prior.n_ctx == hps["n_ctx"]
    assert prior.level == hps["level"]
    assert prior.raw_to_tokens == {0: 8, 1: 32, 2: 128}[hps["level"]]
    assert prior.sample_length == prior.n_ctx * prior.raw_to_tokens
    assert not prior.training
    assert not any(p.requires_grad for p in prior.parameters())
