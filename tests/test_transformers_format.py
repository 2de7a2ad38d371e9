"""Checkpoints in the transformers port's naming: the documented renaming rules and loading them back."""
from __future__ import annotations

import json

import pytest
import torch

from conftest import MANIFESTS, load_fixture
from jukebox.hparams import Hyperparams
from jukebox.make_models import LazyPrior, make_prior, make_vqvae
from jukebox.utils.transformers_format import (
    from_transformers_state_dict,
    is_transformers_state_dict,
    to_transformers_key,
    to_transformers_state_dict,
)

# (our key, level or None for the VQ-VAE, the port's key): names as they appear in the port's checkpoints
KNOWN_NAMES = [
    ("encoders.0.level_blocks.0.model.0.0.weight", None, "vqvae.encoders.0.level_blocks.0.downsample_block.0.weight"),
    ("encoders.2.level_blocks.1.model.1.1.model.3.model.1.bias", None,
     "vqvae.encoders.2.level_blocks.1.downsample_block.3.resnet_block.3.conv1d_1.bias"),
    ("encoders.1.level_blocks.1.model.2.weight", None, "vqvae.encoders.1.level_blocks.1.proj_out.weight"),
    ("decoders.1.level_blocks.0.model.0.bias", None, "vqvae.decoders.1.level_blocks.0.proj_in.bias"),
    ("decoders.1.level_blocks.0.model.2.0.model.0.model.3.weight", None,
     "vqvae.decoders.1.level_blocks.0.upsample_block.2.resnet_block.0.conv1d_2.weight"),
    ("decoders.0.level_blocks.0.model.3.1.weight", None, "vqvae.decoders.0.level_blocks.0.upsample_block.5.weight"),
    ("decoders.2.out.weight", None, "vqvae.decoders.2.out.weight"),
    ("bottleneck.level_blocks.2.k", None, "vqvae.bottleneck.level_blocks.2.codebook"),
    ("prior.x_emb.weight", 2, "priors.0.prior.embed_tokens.weight"),
    ("prior.x_out.weight", 2, "priors.0.prior.fc_proj_out.weight"),
    ("prior.pos_emb.pos_emb", 2, "priors.0.prior.pos_emb.pos_emb"),
    ("prior.transformer._attn_mods.3.ln_1.bias", 2, "priors.0.prior.transformer._attn_mods.3.layer_norm_1.bias"),
    ("prior.transformer._attn_mods.18.attn.c_enc_kv.w", 2,
     "priors.0.prior.transformer._attn_mods.18.attn.c_enc_kv.weight"),
    ("prior.transformer._attn_mods.0.mlp.c_fc.b", 2, "priors.0.prior.transformer._attn_mods.0.mlp.c_fc.bias"),
    ("y_emb.artist_emb.emb.weight", 2, "priors.0.metadata_embedding.artist_emb.weight"),
    ("y_emb.bow_genre_emb.emb.weight", 1, "priors.1.metadata_embedding.bow_genre_emb.weight"),
    ("y_emb.total_length_emb.emb.weight", 2, "priors.0.metadata_embedding.total_length_emb.emb.weight"),
    ("prime_prior.x_emb.weight", 2, "priors.0.encoder.embed_tokens.weight"),
    ("prime_prior.start_token", 2, "priors.0.encoder.start_token"),
    ("prime_prior.transformer._attn_mods.5.ln_0.weight", 2,
     "priors.0.encoder.transformer._attn_mods.5.layer_norm_0.weight"),
    ("prime_state_proj.w", 2, "priors.0.encoder.proj_in.weight"),
    ("prime_state_ln.bias", 2, "priors.0.encoder.final_layer_norm.bias"),
    ("prime_x_out.weight", 2, "priors.0.encoder.lm_head.weight"),
    ("conditioner_blocks.0.x_emb.weight", 0, "priors.2.conditioner_blocks.embed_tokens.weight"),
    ("conditioner_blocks.0.ln.bias", 1, "priors.1.conditioner_blocks.layer_norm.bias"),
    ("conditioner_blocks.0.cond.model.0.weight", 0, "priors.2.conditioner_blocks.upsampler.proj_in.weight"),
    ("conditioner_blocks.0.cond.model.1.0.blocks.7.model.1.weight", 0,
     "priors.2.conditioner_blocks.upsampler.upsample_block.0.resnet_block.7.conv1d_1.weight"),
    ("conditioner_blocks.0.cond.model.2.1.bias", 1, "priors.1.conditioner_blocks.upsampler.upsample_block.3.bias"),
]


@pytest.mark.parametrize("ours,level,theirs", KNOWN_NAMES)
def test_known_names(ours, level, theirs):
    assert to_transformers_key(ours, level, 3) == theirs


@pytest.mark.parametrize("name,level", [("vqvae", None), ("upsampler_level_0", 0), ("upsampler_level_1", 1),
                                        ("prior_5b", 2), ("prior_5b_lyrics", 2), ("prior_1b_lyrics", 2)])
def test_renaming_is_one_to_one_on_released_models(name, level):
    keys = [k for k, _, _ in json.loads((MANIFESTS / f"{name}.json").read_text())["params"]]
    renamed = [to_transformers_key(k, level, 3) for k in keys]
    assert len(set(renamed)) == len(keys)
    # every key is renamed by a rule except the few names both sides share
    kept = {k for k, new in zip(keys, renamed) if new.split(".", 1 if level is None else 2)[-1] == k}
    assert all(k.endswith(("pos_emb.pos_emb", "start_token", "out.weight", "out.bias")) or ".attn.c_" in k
               or ".mlp.c_" in k for k in kept if not k.endswith((".w", ".b")))
    assert not any(k.endswith((".w", ".b")) for k in kept)


def _models():
    vq = load_fixture("vqvae_3level")
    vqvae = make_vqvae(Hyperparams(vq["hps"]), "cpu")
    vqvae.load_state_dict(vq["state_dict"])
    fixtures = [load_fixture(n) for n in ("upsampler_level_0", "upsampler_level_1", "prior_sep_enc_dec_lyrics")]
    priors = []
    for fx in fixtures:
        prior = make_prior(Hyperparams(fx["hps"]), vqvae, "cpu")
        prior.load_state_dict(fx["state_dict"])
        priors.append(prior)
    return vq, vqvae, fixtures, priors


@pytest.fixture(scope="module")
def models():
    return _models()


@pytest.fixture(scope="module")
def hf_file(models, tmp_path_factory):
    _, vqvae, _, priors = models
    state = to_transformers_state_dict(vqvae.state_dict(), [p.state_dict() for p in priors])
    # save_pretrained with safetensors keeps tied tensors once: drop the output layers tied to the embeddings
    for level, prior in enumerate(priors):
        if prior.prior.x_out.weight is prior.prior.x_emb.weight:
            del state[to_transformers_key("prior.x_out.weight", level, 3)]
    path = tmp_path_factory.mktemp("hf") / "pytorch_model.bin"
    torch.save({k: v.clone() for k, v in state.items()}, path)
    return path, state


def test_detects_transformers_naming(models, hf_file):
    _, vqvae, _, _ = models
    assert is_transformers_state_dict(hf_file[1])
    assert not is_transformers_state_dict(vqvae.state_dict())


@pytest.mark.slow
def test_round_trip_restores_identical_models(models, hf_file):
    vq, vqvae, fixtures, priors = models
    path, _ = hf_file
    vq_hps = Hyperparams(vq["hps"])
    vq_hps.restore_vqvae = str(path)
    restored_vqvae = make_vqvae(vq_hps, "cpu")
    x = vq["inputs"]["x"][:1, :2048]
    zs = restored_vqvae.encode(x)
    assert all(torch.equal(a, b) for a, b in zip(zs, vqvae.encode(x)))
    assert torch.equal(restored_vqvae.decode(zs), vqvae.decode(zs))

    for fx, prior in zip(fixtures, priors):
        hps = Hyperparams(fx["hps"])
        hps.restore_prior = str(path)
        restored = make_prior(hps, restored_vqvae, "cpu")
        restored_state = restored.state_dict()
        for key, value in prior.state_dict().items():
            assert torch.equal(restored_state[key], value), key
    # outputs of the prior with the most renamed parts (labels, lyrics encoder, enc-dec attention)
    out = fixtures[-1]["outputs"]
    loss, metrics = restored.z_forward(out["z"], out["z_conds"], fixtures[-1]["inputs"]["y"], get_preds=True)
    torch.testing.assert_close(loss, out["loss"], atol=0, rtol=1e-5)
    torch.testing.assert_close(metrics["preds"], out["logits"], atol=1e-4, rtol=0)


def test_lazy_prior_loads_transformers_checkpoint(models, hf_file):
    _, vqvae, fixtures, priors = models
    path, _ = hf_file
    hps = Hyperparams(fixtures[1]["hps"])
    hps.restore_prior = str(path)
    lazy = LazyPrior(hps, vqvae)
    assert not lazy.loaded and lazy.n_ctx == priors[1].n_ctx and lazy.raw_to_tokens == priors[1].raw_to_tokens
    assert all(p.is_meta for p in lazy.module.parameters())
    module = lazy.load("cpu")
    loaded_state = module.state_dict()
    for key, value in priors[1].state_dict().items():
        assert torch.equal(loaded_state[key], value), key
    assert module.prior.x_out.weight is module.prior.x_emb.weight  # tie restored after assign-loading
    lazy.unload()
    assert not lazy.loaded and all(p.is_meta for p in lazy.module.parameters())


def test_missing_tensors_are_named(models):
    _, vqvae, _, _ = models
    state = to_transformers_state_dict(vqvae.state_dict(), [])
    del state["vqvae.bottleneck.level_blocks.1.codebook"]
    with pytest.raises(ValueError, match="bottleneck.level_blocks.1.codebook"):
        from_transformers_state_dict(state, vqvae)
