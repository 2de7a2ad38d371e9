"""The hparams registry keeps the original's names, values and merge semantics."""
import json

import pytest

from conftest import MANIFESTS
from jukebox.hparams import HPARAMS_REGISTRY, Hyperparams, setup_hparams

RELEASED = ["vqvae", "upsampler_level_0", "upsampler_level_1", "prior_5b", "prior_5b_lyrics", "prior_1b_lyrics"]
README_SETS = ["small_vqvae", "small_prior", "small_upsampler", "small_labelled_prior",
               "small_single_enc_dec_prior", "small_sep_enc_dec_prior", "all_fp16", "cpu_ema"]


def _plain(value):
    return [_plain(v) for v in value] if isinstance(value, (list, tuple)) else value


@pytest.mark.parametrize("name", RELEASED)
def test_released_sets_reproduce_manifest_hps(name):
    manifest = json.loads((MANIFESTS / f"{name}.json").read_text())
    # The manifests were built with restore_* set to '' and the vqvae with sample_length=1048576.
    overrides = {k: v for k, v in manifest["hps"].items() if k.startswith("restore_")}
    if name == "vqvae":
        overrides["sample_length"] = 1048576
    hps = setup_hparams(name, overrides)
    assert set(hps) == set(manifest["hps"])
    mismatched = {k: (hps[k], v) for k, v in manifest["hps"].items() if _plain(hps[k]) != v}
    assert not mismatched


@pytest.mark.parametrize("name", RELEASED)
def test_registry_entry_equals_manifest_overrides(name):
    manifest = json.loads((MANIFESTS / f"{name}.json").read_text())
    entry = {k: _plain(v) for k, v in HPARAMS_REGISTRY[name].items()}
    assert entry == manifest["hps_set_overrides"]


def test_readme_small_sets_exist_and_merge_in_order():
    for name in README_SETS:
        assert name in HPARAMS_REGISTRY
    hps = setup_hparams("small_vqvae,small_prior,all_fp16,cpu_ema", dict(bs=2, sample_length=65536))
    assert (hps.sr, hps.levels, tuple(hps.downs_t), hps.l_bins) == (22050, 2, (5, 3), 1024)
    assert (hps.n_ctx, hps.prior_width, hps.prior_depth, hps.attn_order, hps.blocks) == (8192, 1024, 48, 2, 64)
    assert hps.fp16 and hps.fp16_params and hps.cpu_ema and not hps.ema_fused
    assert (hps.bs, hps.sample_length) == (2, 65536)
    # later sets and overrides win
    assert setup_hparams("small_prior,small_single_enc_dec_prior", {}).n_ctx == 6144
    assert setup_hparams("small_prior", dict(n_ctx=64)).n_ctx == 64


def test_unknown_key_names_key_and_closest_matches():
    with pytest.raises(KeyError) as err:
        setup_hparams("small_vqvae", dict(sampel_length=4))
    message = str(err.value)
    assert "sampel_length" in message and "sample_length" in message


def test_unknown_set_names_set_and_closest_matches():
    with pytest.raises(KeyError) as err:
        setup_hparams("small_vqave", {})
    assert "small_vqave" in str(err.value) and "small_vqvae" in str(err.value)


def test_attribute_access_and_user_registration():
    my_prior = Hyperparams(restore_prior="/tmp/x.pth.tar", level=1, labels=False)
    my_prior.update(HPARAMS_REGISTRY["small_prior"])
    HPARAMS_REGISTRY["my_small_prior_for_test"] = my_prior
    try:
        hps = setup_hparams("my_small_prior_for_test", {})
        assert hps.restore_prior == "/tmp/x.pth.tar" and hps.level == 1 and hps.prior_depth == 48
        hps.level = 0
        assert hps["level"] == 0
        with pytest.raises(AttributeError):
            _ = hps.not_a_key
    finally:
        del HPARAMS_REGISTRY["my_small_prior_for_test"]
