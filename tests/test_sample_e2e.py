"""jukebox/sample.py end to end on a tiny random-weight 3-level model saved as checkpoints.

The model is registered under temporary hparams/MODELS names, so the real loading path (checkpoint files, lazy
priors, labellers, id tables) runs. Lengths are chosen so that every level samples several windows.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import DATA, HELPERS, IDS_DIR, MPIEXEC, requires_mpiexec
from helpers.tiny_model import COMMON, SR, TOKENS, tiny_model
from jukebox import make_models, sample
from jukebox.hparams import setup_hparams
from jukebox.inference import schedule
from jukebox.utils.checkpoint import save_checkpoint
from jukebox.utils.io import load_audio

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]


@pytest.fixture(scope="module", autouse=True)
def _one_thread_for_module_fixtures():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """Checkpoints of the tiny model (random weights) and the registry entries pointing at them."""
    with tiny_model(tmp_path_factory.mktemp("sample_e2e")) as root:
        yield root


def _run(workdir: Path, monkeypatch, **kwargs) -> None:
    monkeypatch.chdir(workdir)
    sample.run(**{**COMMON, **kwargs})


def _data(workdir: Path, name: str, level: int) -> dict:
    return torch.load(workdir / name / f"level_{level}" / "data.pth.tar", map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def ancestral(workdir):
    mp = pytest.MonkeyPatch()
    try:
        _run(workdir, mp, name="anc", seed=7)
    finally:
        mp.undo()
    return workdir / "anc"


def test_ancestral_outputs(ancestral):
    for level in range(3):
        logdir = ancestral / f"level_{level}"
        data = torch.load(logdir / "data.pth.tar", map_location="cpu", weights_only=True)
        assert [tuple(z.shape) for z in data["zs"]][level:] == [(2, t) for t in TOKENS[level:]]
        assert all(z.dtype == torch.int64 and 0 <= int(z.min()) and int(z.max()) < 16 for z in data["zs"][level:])
        assert tuple(data["x"].shape) == (2, 512, 1)
        assert len(data["labels"]) == 3 and data["labels"][-1]["y"].shape == (2, 4 + 1 + 8)
        assert data["labels"][-1]["info"][0]["artist"] == sample.EXAMPLE_METAS[0]["artist"]
        assert [kw["temp"] for kw in data["sampling_kwargs"]] == [0.99, 0.99, 0.99]
        for i in range(2):
            assert (logdir / f"item_{i}.wav").is_file()
            assert (logdir / f"item_{i}" / "index.html").is_file()
            assert (logdir / f"item_{i}" / "audio.wav").is_file()
            assert (logdir / f"item_{i}" / "align.json").is_file()
            assert (logdir / f"item_{i}" / "align.png").is_file()
        assert (logdir / "index.html").is_file()
    assert not (ancestral / "progress.pth.tar").exists()
    # lower levels keep the codes of the levels above
    top = _data(ancestral.parent, "anc", 2)["zs"]
    bottom = _data(ancestral.parent, "anc", 0)["zs"]
    assert torch.equal(top[2], bottom[2]) and torch.equal(_data(ancestral.parent, "anc", 1)["zs"][1], bottom[1])


def test_interrupted_run_resumes_to_the_same_codes(workdir, ancestral, monkeypatch):
    real = schedule.sample_window
    calls = []

    def interrupt_after_five(*args, **kwargs):
        if len(calls) == 5:  # the top level's 3 windows and 2 of level 1 are done
            raise KeyboardInterrupt
        calls.append(args[3])
        return real(*args, **kwargs)

    monkeypatch.setattr(schedule, "sample_window", interrupt_after_five)
    with pytest.raises(KeyboardInterrupt):
        _run(workdir, monkeypatch, name="resumed", seed=7)
    assert calls == [2, 2, 2, 1, 1]
    assert (workdir / "resumed" / "progress.pth.tar").is_file()
    assert (workdir / "resumed" / "level_2" / "data.pth.tar").is_file()
    assert not (workdir / "resumed" / "level_1").exists()

    resumed_calls = []
    monkeypatch.setattr(schedule, "sample_window", lambda *a, **k: resumed_calls.append(a[3]) or real(*a, **k))
    _run(workdir, monkeypatch, name="resumed")  # no --seed: the saved one is used
    assert resumed_calls == [1] * 5 + [0] * 15
    assert not (workdir / "resumed" / "progress.pth.tar").exists()
    for level in range(3):
        expected, got = _data(workdir, "anc", level), _data(workdir, "resumed", level)
        assert all(torch.equal(a, b) for a, b in zip(expected["zs"], got["zs"]))
        torch.testing.assert_close(got["x"], expected["x"], atol=1e-5, rtol=0)


def test_resume_with_other_settings_is_refused(workdir, monkeypatch):
    state = dict(settings='{"mode": "ancestral"}', zs=[], level=2, windows_done=0, rng=torch.get_rng_state(),
                 seed=1)
    save_checkpoint(workdir / "other" / "progress.pth.tar", state)
    with pytest.raises(RuntimeError, match="unfinished run with other settings"):
        _run(workdir, monkeypatch, name="other")


def test_continue_extends_the_codes(workdir, ancestral, monkeypatch):
    _run(workdir, monkeypatch, name="cont", mode="continue", codes_file="anc/level_0/data.pth.tar",
         sample_length_in_seconds=0.5, seed=1)
    before = _data(workdir, "anc", 0)["zs"]
    after = _data(workdir, "cont", 0)["zs"]
    assert [tuple(z.shape) for z in after] == [(2, 2 * t) for t in TOKENS]
    for level in range(3):
        assert torch.equal(after[level][:, :TOKENS[level]], before[level])
    assert _data(workdir, "cont", 0)["x"].shape == (2, 1024, 1)


def test_continue_from_the_top_level_codes(workdir, ancestral, monkeypatch):
    _run(workdir, monkeypatch, name="cont2", mode="continue", codes_file="anc/level_2/data.pth.tar",
         sample_length_in_seconds=0.5, seed=1)
    after = _data(workdir, "cont2", 0)["zs"]
    assert [tuple(z.shape) for z in after] == [(2, 2 * t) for t in TOKENS]
    assert torch.equal(after[2][:, :TOKENS[2]], _data(workdir, "anc", 2)["zs"][2])


def test_upsample_keeps_the_top_level(workdir, ancestral, monkeypatch):
    _run(workdir, monkeypatch, name="up", mode="upsample", codes_file="anc/level_2/data.pth.tar", seed=2)
    assert not (workdir / "up" / "level_2").exists()
    data = _data(workdir, "up", 0)
    assert torch.equal(data["zs"][2], _data(workdir, "anc", 2)["zs"][2])
    assert [tuple(z.shape) for z in data["zs"]] == [(2, t) for t in TOKENS]
    assert (workdir / "up" / "level_1" / "item_0" / "align.json").is_file()


def test_primed_starts_from_the_encoded_prompt(workdir, monkeypatch):
    files = sorted((DATA / "music").glob("*.flac"))[:2]
    _run(workdir, monkeypatch, name="primed", mode="primed", audio_file=",".join(str(f) for f in files),
         prompt_length_in_seconds=0.125, n_samples=3, seed=3, metas=None, artist="Nina Simone", genre="Soul",
         lyrics="la la la, sing along")
    data = _data(workdir, "primed", 0)
    assert [tuple(z.shape) for z in data["zs"]] == [(3, t) for t in TOKENS]
    assert [info["artist"] for info in data["labels"][2]["info"]] == ["Nina Simone"] * 3
    vqvae = make_models.make_vqvae(setup_hparams("tiny_vqvae", dict(sample_length=512)), "cpu")
    prompts = [torch.from_numpy(load_audio(f, sr=SR, offset=0, duration=256, channels=1)).T for f in files]
    zs = vqvae.encode(torch.stack([prompts[0], prompts[1], prompts[0]]))
    for level, z in enumerate(zs):
        assert torch.equal(data["zs"][level][:, :z.shape[1]], z)


def test_bad_arguments_are_explained(workdir, monkeypatch):
    with pytest.raises(ValueError, match="--mode=continue needs --codes_file"):
        _run(workdir, monkeypatch, name="bad", mode="continue")
    with pytest.raises(ValueError, match="unknown --mode"):
        _run(workdir, monkeypatch, name="bad", mode="sideways")
    with pytest.raises(ValueError, match="unknown model 'tiny_tset'.*tiny_test"):
        _run(workdir, monkeypatch, name="bad", model="tiny_tset")
    with pytest.raises(ValueError, match="--hop_fraction needs one value or 3"):
        _run(workdir, monkeypatch, name="bad", hop_fraction=(0.5, 0.5))
    with pytest.raises(ValueError, match="upsampling needs at least one context"):
        _run(workdir, monkeypatch, name="bad", sample_length_in_seconds=0.05)


@requires_mpiexec
def test_cli_under_mpiexec_writes_one_folder_per_rank(workdir):
    cmd = [str(MPIEXEC), "-n", "2", sys.executable, str(HELPERS / "tiny_sample.py"), str(workdir),
           "--model=tiny_test", "--name=mpi", "--levels=3",
           "--sample_length_in_seconds=0.25", "--total_sample_length_in_seconds=2", f"--sr={SR}", "--n_samples=1",
           "--hop_fraction=0.5,0.5,0.5", "--fp16=False", f"--ids_dir={IDS_DIR}", "--seed=5"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    codes = []
    for rank in range(2):
        data = _data(workdir, f"mpi_rank_{rank}", 0)
        assert [tuple(z.shape) for z in data["zs"]] == [(1, t) for t in TOKENS]
        codes.append(data["zs"][0])
    assert not torch.equal(codes[0], codes[1])  # seed + rank: the ranks sample different songs
    assert not (workdir / "mpi").exists()
