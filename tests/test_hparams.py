"""The hparams registry keeps the original's names, values and merge semantics."""
import json
import re
import warnings

import pytest

from conftest import MANIFESTS, REPO
from helpers.hparams_reads import hparam_reads
from jukebox.hparams import (
    COMPAT_ONLY_KEYS,
    DEFAULTS,
    HPARAMS_REGISTRY,
    CompatOnlyHparamWarning,
    Hyperparams,
    UnknownHparamError,
    setup_hparams,
)

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


# --- every key is read or documented as compat-only --------------------------------------------------
def _code_files():
    own = REPO / "jukebox" / "hparams.py"  # defines the keys; reads none
    return [p for p in [*(REPO / "jukebox").rglob("*.py"), *(REPO / "scripts").rglob("*.py")] if p != own]


def _default_keys():
    return set().union(*DEFAULTS.values())


def test_read_scanner_sees_every_read_form(tmp_path):
    source = tmp_path / "reader.py"
    source.write_text(
        'NAMES = ("in_module_tuple",)\n'
        "def f(hps, self):\n"
        '    a = hps.attr + self.hps["subscript"] + hps.get("get") + getattr(vq_hps, "getattr")\n'
        '    b = [hps[n] for n in ("loop_a", "loop_b")] + [hps.get(k) for k in NAMES]\n'
        '    return a, b, [hps[f"prefix_{s}"] for s in ("x", "y")]\n'
        "def g(other):\n"
        '    return other.not_hps, other["nor_this"], other.get("nor_that")\n')
    reads = hparam_reads([source])
    assert {"attr", "subscript", "get", "getattr", "loop_a", "loop_b", "in_module_tuple", "prefix_x",
            "prefix_y"} <= reads
    assert not {"not_hps", "nor_this", "nor_that"} & reads


def test_every_default_key_is_read_or_compat_only():
    unaccounted = _default_keys() - hparam_reads(_code_files()) - COMPAT_ONLY_KEYS.keys()
    assert not unaccounted, (f"DEFAULTS keys read nowhere: {sorted(unaccounted)}; read them or add them to "
                             "COMPAT_ONLY_KEYS in jukebox/hparams.py with the reason")


def test_compat_only_keys_are_defaults_that_nothing_reads():
    assert COMPAT_ONLY_KEYS.keys() <= _default_keys()
    read = COMPAT_ONLY_KEYS.keys() & hparam_reads(_code_files())
    assert not read, f"{sorted(read)} are read now: remove them from COMPAT_ONLY_KEYS"
    assert all(reason.strip() and "\n" not in reason for reason in COMPAT_ONLY_KEYS.values())


# --- setting a compat-only key warns -------------------------------------------------------------------
def _other_value(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, str):
        return value + "x"
    return 1  # None


@pytest.mark.parametrize("key", sorted(COMPAT_ONLY_KEYS))
def test_compat_only_key_set_away_from_default_warns_once_naming_it(key):
    value = _other_value(setup_hparams("", {})[key])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        hps = setup_hparams("small_vqvae", {key: value})
    assert hps[key] == value  # still accepted and kept, as in the original
    assert len(caught) == 1 and issubclass(caught[0].category, CompatOnlyHparamWarning)
    message = str(caught[0].message)
    assert f"{key}=" in message and COMPAT_ONLY_KEYS[key] in message and "\n" not in message


def test_compat_only_keys_at_their_defaults_do_not_warn():
    defaults = {key: setup_hparams("", {})[key] for key in COMPAT_ONLY_KEYS}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        setup_hparams("small_vqvae", defaults)
        setup_hparams("small_vqvae,cpu_ema", dict(ema_fused=True))  # back to the default: no effect to explain


def test_shipped_sets_and_readme_combinations_do_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for name in HPARAMS_REGISTRY:
            setup_hparams(name, {})
        for sets in ("small_vqvae,small_prior,all_fp16,cpu_ema", "small_vqvae,small_upsampler,all_fp16,cpu_ema",
                     "vqvae,small_prior,all_fp16,cpu_ema"):
            setup_hparams(sets, dict(bs=4, sample_length=262144, train=True, prior=True))


def test_own_set_that_sets_a_compat_only_key_warns():
    HPARAMS_REGISTRY["my_fp16_set_for_test"] = Hyperparams(fp16=True, fp16_opt=True)
    try:
        with pytest.warns(CompatOnlyHparamWarning, match="fp16_opt=True .*'my_fp16_set_for_test'"):
            setup_hparams("small_vqvae,my_fp16_set_for_test", {})
        with pytest.warns(CompatOnlyHparamWarning, match="fp16_opt=True .*overrides"):  # shipped value, set by hand
            setup_hparams("small_vqvae,all_fp16", dict(fp16_opt=True))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            setup_hparams("my_fp16_set_for_test", dict(fp16_opt=True))
        assert [str(w.message).split(" has ")[0] for w in caught] == ["hyperparameter fp16_opt=True (from overrides)"]
    finally:
        del HPARAMS_REGISTRY["my_fp16_set_for_test"]


def _train_commands(text):
    """The flags of each `jukebox/train.py` command in ``text`` (backslash-continued lines joined)."""
    for line in text.replace("\\\n", " ").splitlines():
        if "jukebox/train.py" in line:
            yield re.findall(r"--(\w+)", line.split("jukebox/train.py", 1)[1])


def test_readme_and_script_training_commands_set_no_compat_only_key():
    texts = [(REPO / "README.md").read_text(), *(p.read_text() for p in (REPO / "scripts").glob("*.sh"))]
    commands = [flags for text in texts for flags in _train_commands(text)]
    assert len(commands) >= 5
    used = {flag for flags in commands for flag in flags} & COMPAT_ONLY_KEYS.keys()
    assert not used


def test_unknown_key_is_still_an_error_beside_compat_only_keys():
    HPARAMS_REGISTRY["my_typo_set_for_test"] = Hyperparams(ema_fused=False, ema_fusd=False)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # the error comes first, with no warning before it
            with pytest.raises(UnknownHparamError, match="'ema_fusd'.*ema_fused"):
                setup_hparams("my_typo_set_for_test", {})
            with pytest.raises(UnknownHparamError, match="'fp16_opts'.*fp16_opt"):
                setup_hparams("small_vqvae", dict(fp16_opt=True, fp16_opts=True))
    finally:
        del HPARAMS_REGISTRY["my_typo_set_for_test"]
