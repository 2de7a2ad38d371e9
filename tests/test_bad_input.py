"""Bad input gets an error (or, for droppable lyric characters, a warning) that names the problem and the fix.

Runs through the real entry points (``sample.run``, ``make_model``, ``FilesAudioDataset``, ``Labeller``) on the
tiny model of helpers.tiny_model; every case fails before any sampling starts.
"""
from __future__ import annotations

import re
import warnings

import numpy as np
import pytest
import soundfile as sf
import torch

from conftest import IDS_DIR
from helpers.hostile_files import craft
from helpers.tiny_model import COMMON, SR, TINY, tiny_model
from jukebox import make_models, sample
from jukebox.data.files_dataset import AudioFileSkipped, FilesAudioDataset
from jukebox.data.labels import Labeller, get_relevant_lyric_tokens
from jukebox.hparams import HPARAMS_REGISTRY, Hyperparams, UnknownHparamError, setup_hparams
from jukebox.utils.checkpoint import CheckpointError, load_state_dict_checked, save_checkpoint
from jukebox.vqvae.vqvae import VQVAE

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    with tiny_model(tmp_path_factory.mktemp("bad_input")) as root:
        yield root


def _run(tiny, monkeypatch, tmp_path, **kwargs) -> None:
    monkeypatch.chdir(tmp_path)
    sample.run(**{**COMMON, "name": "out", **kwargs})


# ---------------------------------------------------------------------------------------------
# Options and hyperparameters
# ---------------------------------------------------------------------------------------------
def test_unknown_hparams_set_or_key_is_named_with_the_closest_ones():
    with pytest.raises(UnknownHparamError, match="unknown hparams set 'smal_prior'.*small_prior"):
        setup_hparams("small_vqvae,smal_prior", {})
    with pytest.raises(UnknownHparamError, match="unknown hyperparameter 'sample_lenght'.*sample_length"):
        setup_hparams("small_vqvae", dict(sample_lenght=1024))


def test_unknown_train_hps_set_or_key_fails_before_any_work(tmp_path, monkeypatch):
    from jukebox import train

    monkeypatch.chdir(tmp_path)
    with pytest.raises(UnknownHparamError, match="unknown hparams set 'smal_vqvae'.*small_vqvae"):
        train.main("smal_vqvae", name="run")
    with pytest.raises(UnknownHparamError, match="unknown hyperparameter 'sample_lenght'.*sample_length"):
        train.main("small_vqvae", name="run", sample_lenght=8192)
    assert not (tmp_path / "logs").exists()


def test_unknown_sample_option_is_named_before_any_work(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=r"unknown option --sampel_length_in_seconds; did you mean "
                                         r"--sample_length_in_seconds"):
        sample.main(["--model=5b", "--name=x", "--sampel_length_in_seconds=3"])
    assert not (tmp_path / "x").exists()
    # known options, in every spelling fire takes, get through to run (which then rejects the model)
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        sample.main(["--model=nope", "--name", "x", "--nofp16", "--n-samples=2", "--temp=0.9"])


def test_unknown_model_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown model '5B_lyrics'; known models: 5b, 5b_lyrics, 1b_lyrics.*"
                                         r"did you mean 5b_lyrics"):
        make_models.make_model("5B_lyrics", "cpu", Hyperparams(sample_length_in_seconds=1))


# ---------------------------------------------------------------------------------------------
# Checkpoints that do not fit the hps
# ---------------------------------------------------------------------------------------------
def _vqvae(**kw) -> VQVAE:
    values = dict(sample_length=64, levels=1, downs_t=(1,), strides_t=(2,), width=8, depth=1, emb_width=8,
                  l_bins=16)
    return make_models.make_vqvae(setup_hparams("", {**values, **kw}), "cpu")


def test_checkpoint_of_other_shapes_names_every_mismatch(tmp_path):
    path = tmp_path / "vqvae.pth.tar"
    save_checkpoint(path, dict(model=_vqvae(width=16).state_dict(), step=4))
    with pytest.raises(CheckpointError, match=r"shape mismatches: .*\(checkpoint \(16, .*\), model \(8, .*\)\)"):
        _vqvae(restore_vqvae=str(path))
    save_checkpoint(path, dict(model=_vqvae(levels=2, downs_t=(1, 1), strides_t=(2, 2)).state_dict()))
    with pytest.raises(CheckpointError, match=r"unexpected keys: .*encoders\.1\."):
        _vqvae(restore_vqvae=str(path))
    state = _vqvae().state_dict()
    dropped = next(iter(state))
    del state[dropped]
    with pytest.raises(CheckpointError, match=f"missing keys: {re.escape(dropped)}"):
        load_state_dict_checked(_vqvae(), state)


def test_lazy_prior_checkpoint_of_other_hps_is_named(tiny):
    vqvae = make_models.make_vqvae(setup_hparams("tiny_vqvae", dict(sample_length=512)), "cpu")
    hps = setup_hparams("tiny_upsampler_0", dict(restore_prior=str(tiny / "tiny_lyrics_prior.pth.tar")))
    with pytest.raises(CheckpointError, match=r"tiny_lyrics_prior\.pth\.tar does not fit the level-0 prior") as info:
        make_models.LazyPrior(hps, vqvae).load("cpu")
    message = str(info.value)
    assert "missing keys: conditioner_blocks.0.x_emb.weight" in message
    assert re.search(r"unexpected keys: .*prior\.transformer\._attn_mods\.2\.", message)
    assert "prior.x_emb.weight (checkpoint (95, 16), model (16, 16))" in message
    assert len(message) < 4000  # long lists are cut short


# ---------------------------------------------------------------------------------------------
# --codes_file
# ---------------------------------------------------------------------------------------------
def _codes(tmp_path, zs, name="codes.pth.tar"):
    path = tmp_path / name
    save_checkpoint(path, dict(zs=zs))
    return str(path)


def test_codes_file_with_other_n_samples_or_levels(tiny, monkeypatch, tmp_path):
    good = [torch.zeros(3, t, dtype=torch.long) for t in (128, 64, 32)]
    with pytest.raises(ValueError, match=r"holds 3 samples but --n_samples=2; pass --n_samples=3"):
        _run(tiny, monkeypatch, tmp_path, mode="continue", codes_file=_codes(tmp_path, good))
    with pytest.raises(ValueError, match=r"has no codes of 3 levels"):
        _run(tiny, monkeypatch, tmp_path, mode="upsample", codes_file=_codes(tmp_path, good[1:]), n_samples=3)
    with pytest.raises(FileNotFoundError, match=r"--codes_file 'missing\.pth\.tar' does not exist"):
        _run(tiny, monkeypatch, tmp_path, mode="continue", codes_file="missing.pth.tar")


def test_codes_file_with_foreign_codes(tiny, monkeypatch, tmp_path):
    out_of_range = [torch.full((2, t), 99, dtype=torch.long) for t in (128, 64, 32)]
    with pytest.raises(ValueError, match=r"level-0 codes lie outside \[0, 16\).*another model"):
        _run(tiny, monkeypatch, tmp_path, mode="continue", codes_file=_codes(tmp_path, out_of_range))
    as_floats = [torch.zeros(2, t) for t in (128, 64, 32)]
    with pytest.raises(ValueError, match=r"level-0 codes must be integers of shape \(2, T\)"):
        _run(tiny, monkeypatch, tmp_path, mode="continue", codes_file=_codes(tmp_path, as_floats))


def test_codes_file_that_runs_code_is_refused_by_the_command(tiny, monkeypatch, tmp_path):
    marker = tmp_path / "pwned"
    path = craft(tmp_path / "data.pth.tar", marker, "system_pickle2")
    with pytest.raises(CheckpointError, match=r"data\.pth\.tar' contains a Python object .*refusing to unpickle"):
        _run(tiny, monkeypatch, tmp_path, mode="continue", codes_file=str(path))
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------
# --audio_file prompts
# ---------------------------------------------------------------------------------------------
def _wav(path, samples: np.ndarray) -> str:
    sf.write(path, samples.astype(np.float32), SR)
    return str(path)


def test_prompt_files_missing_empty_or_silent(tiny, monkeypatch, tmp_path):
    sound = _wav(tmp_path / "sound.wav", 0.3 * np.sin(np.arange(SR) / 5.0))
    (tmp_path / "empty.wav").write_bytes(b"")
    silent = _wav(tmp_path / "silent.wav", np.zeros(SR))
    primed = dict(mode="primed", prompt_length_in_seconds=0.125)
    with pytest.raises(OSError, match=r"'nowhere\.wav': no such file"):
        _run(tiny, monkeypatch, tmp_path, audio_file=f"{sound},nowhere.wav", **primed)
    with pytest.raises(OSError, match=r"empty\.wav': it is empty \(0 bytes\)"):
        _run(tiny, monkeypatch, tmp_path, audio_file="empty.wav", **primed)
    with pytest.raises(ValueError, match=r"prompt file\(s\) '.*silent\.wav' are silent"):
        _run(tiny, monkeypatch, tmp_path, audio_file=f"{sound},{silent}", **primed)


def test_prompt_files_shorter_than_the_prompt(tmp_path, capsys):
    long = _wav(tmp_path / "long.wav", 0.3 * np.sin(np.arange(SR) / 5.0))
    short = _wav(tmp_path / "short.wav", 0.3 * np.sin(np.arange(200) / 5.0))
    x = sample.load_prompts([long, short], duration=256, n_samples=3, sr=SR, top_hop=16)
    assert x.shape == (3, 192, 1)  # 200 samples cut to whole top-level tokens
    assert re.search(r"shortened to 0\.09 s, the length of the shortest file \(.*short\.wav\), instead of the "
                     r"0\.12 s", capsys.readouterr().out)
    tiny_file = _wav(tmp_path / "tiny.wav", 0.3 * np.ones(10))
    with pytest.raises(ValueError, match=r"'.*tiny\.wav' is shorter than one top-level token \(16 samples"):
        sample.load_prompts([long, tiny_file], duration=256, n_samples=1, sr=SR, top_hop=16)


# ---------------------------------------------------------------------------------------------
# Lengths
# ---------------------------------------------------------------------------------------------
def test_sample_length_shorter_than_an_upsampler_window(tiny, monkeypatch, tmp_path):
    with pytest.raises(ValueError, match=r"upsampling needs at least one context.*at least 0\.06 s"):
        _run(tiny, monkeypatch, tmp_path, sample_length_in_seconds=0.05)
    # the bottom upsampler's window (128 tokens x 4 samples) is the longest here, not the level-1 one
    HPARAMS_REGISTRY["tiny_wide_upsampler_0"] = Hyperparams(
        TINY["tiny_upsampler_0"], n_ctx=128, restore_prior=str(tiny / "unused.pth.tar"))
    make_models.MODELS["tiny_wide"] = ("tiny_vqvae", "tiny_wide_upsampler_0", "tiny_upsampler_1", "tiny_lyrics_prior")
    try:
        with pytest.raises(ValueError, match=r"gives 256 samples, but upsampling needs .*at least 0\.25 s"):
            _run(tiny, monkeypatch, tmp_path, model="tiny_wide", sample_length_in_seconds=0.125)
    finally:
        HPARAMS_REGISTRY.pop("tiny_wide_upsampler_0")
        make_models.MODELS.pop("tiny_wide")


# ---------------------------------------------------------------------------------------------
# Training data and labels
# ---------------------------------------------------------------------------------------------
def test_audio_folder_without_usable_files(tmp_path):
    (tmp_path / "empty.wav").write_bytes(b"")
    _wav(tmp_path / "silent.wav", np.zeros(2 * SR))
    _wav(tmp_path / "short.wav", 0.3 * np.ones(100))
    (tmp_path / "notes.mp3").write_text("not audio at all")
    hps = setup_hparams("", dict(audio_files_dir=str(tmp_path), sr=SR, sample_length=SR, labels=False, bs=1,
                                 nworkers=0, prior=True))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ValueError, match=r"none of the 4 audio files under .* can be used: 4 unreadable, silent, "
                                             r"too short"):
            FilesAudioDataset(hps)
    reasons = "\n".join(str(w.message) for w in caught if issubclass(w.category, AudioFileSkipped))
    assert re.search(r"empty\.wav: cannot be decoded \(it is empty \(0 bytes\)\)", reasons)
    assert re.search(r"silent\.wav: is silent", reasons)
    assert re.search(r"short\.wav: is 0\.05 s long, shorter than one chunk", reasons)
    assert re.search(r"notes\.mp3: cannot be decoded", reasons)


def test_odd_n_tokens_is_refused():
    with pytest.raises(ValueError, match=r"n_tokens=7: only even.*use an even value such as 8"):
        Labeller(1, 7, 1024, v3=True, ids_dir=IDS_DIR)
    with pytest.raises(ValueError, match=r"n_tokens must be even"):
        get_relevant_lyric_tokens(list(range(20)), 7, 1000, 0, 100)


def test_lyric_characters_outside_the_vocabulary_are_dropped_with_one_warning():
    labeller = Labeller(1, 8, 1024, v3=True, ids_dir=IDS_DIR)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        label = labeller.get_label("unknown", "unknown", "Héllo @ wörld + 😀 ~", 10000, 0)
        again = labeller.get_label("unknown", "unknown", "more @ and + and ~", 10000, 0)
    dropped = [str(w.message) for w in caught if "vocabulary" in str(w.message)]
    assert dropped == ["lyrics characters outside the v3 vocabulary are dropped: '+', '@', '~', '😀'"]
    assert label["info"]["lyrics"] == "Hello  world   "
    assert again["info"]["lyrics"] == "more  and  and "
    tokens = label["info"]["full_tokens"]
    assert len(tokens) == len("Hello  world   ") and all(0 < t < 79 for t in tokens)
