"""SamplingSession on its own, driven as a program would (no command line): the tiny random-weight model of
helpers.tiny_model, loaded through the real path (checkpoints, lazy priors, labellers).

At 0.25 s the tiny model's levels hold 128/64/32 tokens in windows of 16: the top level samples 3 windows. The
tests on the model are marked slow (the first compiles the CPU kernels).
"""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from conftest import IDS_DIR
from helpers.tiny_model import MODEL, SR, TOKENS, tiny_model
from jukebox.hparams import Hyperparams
from jukebox.inference import schedule
from jukebox.inference.inputs import default_sampling_kwargs, make_metas
from jukebox.inference.session import ProgressFile, SamplingOptions, SamplingSession
from jukebox.make_models import make_model

pytestmark = pytest.mark.usefixtures("one_thread")

PROGRESS_KEYS = {"settings", "seed", "zs", "level", "windows_done", "rng", "cuda_rng", "alignments"}
SETTINGS_KEYS = {"model", "mode", "levels", "n_samples", "sample_length", "hop_fraction", "codes_file", "audio_file",
                 "prompt_length", "metas", "sampling"}


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """(vqvae, priors, sample_length of 0.25 s) of the tiny model."""
    with tiny_model(tmp_path_factory.mktemp("session")) as root:
        hps = Hyperparams(levels=3, sample_length_in_seconds=0.25, sr=SR)
        vqvae, priors = make_model(MODEL, "cpu", hps)
        for prior in priors:
            prior.ids_dir = str(IDS_DIR)
        yield root, vqvae, priors, hps.sample_length


def _options(sample_length: int, **changes) -> SamplingOptions:
    kwargs = default_sampling_kwargs(MODEL, 3)
    for kw in kwargs:
        kw["fp16"] = False
    return SamplingOptions(**{**dict(model=MODEL, n_samples=2, sample_length=sample_length, sr=SR,
                                     hop_fraction=(0.5, 0.5, 0.5), metas=make_metas(2, 2 * SR),
                                     sampling_kwargs=kwargs), **changes})


def _session(model, options: SamplingOptions, logdir) -> SamplingSession:
    _, vqvae, priors, _ = model
    return SamplingSession(vqvae, priors, options, str(logdir))


def _data(logdir, level: int) -> dict:
    return torch.load(logdir / f"level_{level}" / "data.pth.tar", map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def top_only(model):
    """A run of the top level alone (seed 7) and its folder."""
    root, _, _, sample_length = model
    zs = _session(model, _options(sample_length), root / "top").run(seed=7, levels=[2])
    return zs, root / "top"


@pytest.mark.slow
def test_top_level_alone(top_only):
    zs, logdir = top_only
    assert [tuple(z.shape) for z in zs] == [(2, 0), (2, 0), (2, TOKENS[2])]
    data = _data(logdir, 2)
    assert all(torch.equal(a, b) for a, b in zip(data["zs"], zs))
    assert tuple(data["x"].shape) == (2, TOKENS[2] * 16, 1)
    assert (logdir / "level_2" / "item_1.wav").is_file() and (logdir / "level_2" / "index.html").is_file()
    assert not (logdir / "level_1").exists()
    assert not (logdir / "progress.pth.tar").exists()


@pytest.mark.slow
def test_upsample_the_top_level_later(model, top_only):
    zs, logdir = top_only
    options = _options(model[3], mode="upsample", codes_file=str(logdir / "level_2" / "data.pth.tar"))
    session = _session(model, options, logdir)
    assert session.levels_to_sample == [0, 1]
    up = session.run(seed=8)
    assert [tuple(z.shape) for z in up] == [(2, t) for t in TOKENS]
    assert torch.equal(up[2], zs[2])
    data = _data(logdir, 0)
    assert all(torch.equal(a, b) for a, b in zip(data["zs"], up))
    assert tuple(data["x"].shape) == (2, 512, 1)
    assert (logdir / "level_1" / "item_0" / "align.json").is_file()  # aligned with the top prior before upsampling
    assert not (logdir / "progress.pth.tar").exists()


@pytest.mark.slow
def test_extend_the_top_level_later(model, top_only, tmp_path):
    zs, logdir = top_only
    options = _options(2 * model[3], mode="continue", codes_file=str(logdir / "level_2" / "data.pth.tar"))
    longer = _session(model, options, tmp_path).run(seed=9, levels=[2])
    assert tuple(longer[2].shape) == (2, 2 * TOKENS[2])
    assert torch.equal(longer[2][:, :TOKENS[2]], zs[2])
    assert tuple(_data(tmp_path, 2)["x"].shape) == (2, 1024, 1)


@pytest.mark.slow
def test_interrupted_session_resumes_to_the_same_codes(model, top_only, tmp_path, monkeypatch):
    real, calls = schedule.sample_window, []

    def interrupt_second_window(*args, **kwargs):
        if len(calls) == 1:
            raise KeyboardInterrupt
        calls.append(args[3])
        return real(*args, **kwargs)

    monkeypatch.setattr(schedule, "sample_window", interrupt_second_window)
    options = _options(model[3])
    with pytest.raises(KeyboardInterrupt):
        _session(model, options, tmp_path).run(seed=7, levels=[2])
    state = torch.load(tmp_path / "progress.pth.tar", map_location="cpu", weights_only=True)
    assert set(state) == PROGRESS_KEYS and (state["level"], state["windows_done"], state["seed"]) == (2, 1, 7)
    assert tuple(state["zs"][2].shape) == (2, 16)
    monkeypatch.setattr(schedule, "sample_window", real)

    with pytest.raises(RuntimeError, match=r"was sampled with --seed=7; pass that seed \(or none\)"):
        _session(model, options, tmp_path).run(seed=8, levels=[2])
    resumed = _session(model, options, tmp_path).run(levels=[2])  # no seed: the saved one
    assert torch.equal(resumed[2], top_only[0][2])
    assert not (tmp_path / "progress.pth.tar").exists()


@pytest.mark.slow
def test_unfinished_run_with_other_options_is_refused(model, tmp_path):
    options = _options(model[3])
    ProgressFile(str(tmp_path), options.settings()).write([torch.zeros(2, 0, dtype=torch.long)] * 3, 2, 0, 1, None)
    hotter = dataclasses.replace(options, sampling_kwargs=[dict(kw, temp=1.0) for kw in options.sampling_kwargs])
    with pytest.raises(RuntimeError, match=r"unfinished run with other settings \(sampling: .* then, .* now\)"):
        _session(model, hotter, tmp_path).run(seed=1)
    # options given as tuples equal the same options read back from the file's JSON
    same = _options(model[3], hop_fraction=[0.5, 0.5, 0.5], metas=tuple(options.metas))
    assert ProgressFile(str(tmp_path), same.settings()).read()["seed"] == 1


def test_progress_file_round_trip(tmp_path):
    settings = _options(512).settings()
    assert set(settings) == SETTINGS_KEYS
    progress = ProgressFile(str(tmp_path), settings)
    assert progress.read() is None
    zs = [torch.randint(0, 16, (2, t)) for t in (0, 8, 4)]
    alignments = [torch.rand(4, 9), torch.rand(4, 9)]
    torch.manual_seed(3)
    progress.write(zs, level=1, windows_done=2, seed=11, alignments=alignments)
    expected = torch.rand(5)
    state = ProgressFile(str(tmp_path), json.loads(json.dumps(settings))).read()
    assert set(state) == PROGRESS_KEYS and json.loads(state["settings"]) == settings
    assert (state["level"], state["windows_done"], state["seed"]) == (1, 2, 11)
    assert all(torch.equal(a, b) for a, b in zip(state["zs"], zs))
    assert all(torch.equal(a, b) for a, b in zip(state["alignments"], alignments))
    ProgressFile.restore_random_state(state)
    assert torch.equal(torch.rand(5), expected)  # sampling continues with the random state of the write
    progress.remove()
    assert progress.read() is None


def test_options_are_checked():
    with pytest.raises(ValueError, match="unknown --mode='sideways'"):
        _options(512, mode="sideways")
    with pytest.raises(ValueError, match="--mode=upsample needs --codes_file"):
        _options(512, mode="upsample")
    with pytest.raises(ValueError, match="--mode=primed needs --audio_file"):
        _options(512, mode="primed", audio_files=["a.wav"])
    with pytest.raises(ValueError, match=r"--hop_fraction must be in \(0, 1\]"):
        _options(512, hop_fraction=(0.5, 0.0, 0.5))
    with pytest.raises(ValueError, match="1 metas for n_samples=2"):
        _options(512, metas=make_metas(1, 2 * SR))
    with pytest.raises(ValueError, match="2 sampling_kwargs for 3 levels"):
        _options(512, sampling_kwargs=default_sampling_kwargs(MODEL, 2))
    assert _options(512, sampling_kwargs=None).sampling_kwargs == default_sampling_kwargs(MODEL, 3)


@pytest.mark.slow
def test_session_checks_the_model_and_levels(model):
    _, vqvae, priors, sample_length = model
    with pytest.raises(ValueError, match="model 'tiny_test' has 2 levels but --levels=3"):
        SamplingSession(vqvae, priors[1:], _options(sample_length), "unused")
    with pytest.raises(ValueError, match=r"levels \[3\] must be among the model's levels 0\.\.2"):
        _session(model, _options(sample_length), "unused").run(levels=[3])
    # 96 samples are less than the level-1 upsampler's window (16 tokens of 8 samples)
    with pytest.raises(ValueError, match="upsampling needs at least one context"):
        _session(model, _options(96), "unused").run(levels=[1])
