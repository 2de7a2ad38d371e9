"""The command lines end bad input with one line, ``error: <message>``, on stderr and exit status 2.

Each case runs the real entry point as a user would (``python jukebox/sample.py ...``); ``JUKEBOX_DEBUG=1``
brings the traceback back.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import DATA, REPO
from jukebox.utils.cli import ArgumentParser, check_options, error_message, run_cli

SAMPLE = str(REPO / "jukebox" / "sample.py")
TRAIN = str(REPO / "jukebox" / "train.py")
DEMO = ["--model=demo", "--levels=3", "--sample_length_in_seconds=1", "--total_sample_length_in_seconds=1",
        "--n_samples=1"]


def _run(args: list[str], cwd, debug: bool = False) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("JUKEBOX_DEBUG", None)
    if debug:
        env["JUKEBOX_DEBUG"] = "1"
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def _one_error_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-2000:]
    assert "Traceback" not in proc.stdout
    return lines[0]


@pytest.mark.parametrize("args, words", [
    (["--model=6b", "--name=out"], ["unknown model '6b'", "5b_lyrics"]),
    (["--model=demo", "--name=out", "--sample_lenght_in_seconds=3"],
     ["unknown option --sample_lenght_in_seconds", "did you mean --sample_length_in_seconds"]),
    ([*DEMO, "--name=out", "--mode=continue", "--codes_file=missing/level_0/data.pth.tar"],
     ["--codes_file 'missing/level_0/data.pth.tar' does not exist"]),
    ([*DEMO, "--name=out", "--sr=44100"], ["--sr=44100", "22050 Hz"]),
])
def test_sample_bad_input_is_one_line(tmp_path, args, words):
    line = _one_error_line(_run([SAMPLE, *args], tmp_path))
    assert all(w in line for w in words), line
    assert not (tmp_path / "out" / "level_0").exists()


def test_sample_corrupt_prompt_audio_is_one_line(tmp_path):
    corrupt = tmp_path / "broken.wav"
    corrupt.write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt " + os.urandom(200))
    line = _one_error_line(_run([SAMPLE, *DEMO, "--name=out", "--mode=primed", f"--audio_file={corrupt}",
                                 "--prompt_length_in_seconds=0.5"], tmp_path))
    assert "broken.wav" in line


def test_train_missing_audio_folder_is_one_line(tmp_path):
    line = _one_error_line(_run([TRAIN, "--hps=small_vqvae", "--name=x", "--sample_length=8192", "--bs=1",
                                 f"--audio_files_dir={tmp_path / 'nowhere'}", "--train"], tmp_path))
    assert str(tmp_path / "nowhere") in line


def test_train_mistyped_hparam_is_one_line(tmp_path):
    line = _one_error_line(_run([TRAIN, "--hps=small_vqvae", "--name=x", "--sample_lenght=8192"], tmp_path))
    assert "unknown hyperparameter 'sample_lenght'" in line and "sample_length" in line


def test_debug_shows_the_traceback(tmp_path):
    proc = _run([SAMPLE, "--model=6b", "--name=out"], tmp_path, debug=True)
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "unknown model '6b'" in proc.stderr


def test_bench_bad_flag_is_one_line(tmp_path):
    line = _one_error_line(_run(["-m", "jukebox.bench", "--n_sampels=1"], tmp_path))
    assert "--n_sampels" in line and "python -m jukebox.bench --help" in line


def test_run_cli_words_exceptions(capsys):
    def missing():
        open(DATA / "no_such_file.wav")

    with pytest.raises(SystemExit) as exit_info:
        run_cli(missing)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == f"error: No such file or directory: {DATA / 'no_such_file.wav'}\n"

    def wrapped():
        raise RuntimeError("first line\n  second line")

    with pytest.raises(SystemExit):
        run_cli(wrapped)
    assert capsys.readouterr().err == "error: first line second line\n"
    assert run_cli(lambda: 7) == 7
    assert error_message(KeyError("no such key")) == "no such key"


def test_run_cli_debug_lets_the_exception_through(monkeypatch):
    monkeypatch.setenv("JUKEBOX_DEBUG", "1")
    with pytest.raises(ValueError, match="boom"):
        run_cli(lambda: (_ for _ in ()).throw(ValueError("boom")))


def test_options_are_checked_against_the_signature():
    def command(model: str, n_samples: int = 1, fp16: bool = False) -> None:
        pass

    check_options(command, ["--model=x", "--n-samples=2", "--nofp16", "--", "--anything"], "prog")
    with pytest.raises(ValueError, match=r"unknown option --n_sampels; did you mean --n_samples\? \(see `prog --help`"):
        check_options(command, ["--n_sampels=2"], "prog")
    with pytest.raises(ValueError, match="unrecognized arguments: --x"):
        ArgumentParser(prog="prog").parse_args(["--x"])


def _small_vqvae_checkpoint(path, sr: int) -> None:
    import torch

    from jukebox.hparams import setup_hparams
    from jukebox.make_models import make_vqvae
    from jukebox.utils.checkpoint import save_checkpoint

    torch.manual_seed(0)
    hps = setup_hparams("small_vqvae", dict(sr=sr, sample_length=8192, width=8, depth=1, emb_width=8, l_bins=16))
    save_checkpoint(path, dict(hps=hps, model=make_vqvae(hps, "cpu").state_dict(), step=0))


def test_restored_vqvae_of_another_sample_rate_is_refused(tmp_path):
    from jukebox.hparams import setup_hparams
    from jukebox.make_models import make_vqvae
    from jukebox.utils.checkpoint import CheckpointError

    path = tmp_path / "vqvae.pth.tar"
    _small_vqvae_checkpoint(path, sr=22050)
    sizes = dict(sample_length=8192, width=8, depth=1, emb_width=8, l_bins=16, restore_vqvae=str(path))
    make_vqvae(setup_hparams("small_vqvae", dict(sr=22050, **sizes)), "cpu")  # the same rate loads
    with pytest.raises(CheckpointError, match="trained at 22050 Hz but sr=44100; pass --sr=22050"):
        make_vqvae(setup_hparams("small_vqvae", dict(sr=44100, **sizes)), "cpu")
    line = _one_error_line(_run([TRAIN, "--hps=small_vqvae,small_prior", "--name=p", "--sample_length=8192",
                                 "--bs=1", "--width=8", "--depth=1", "--emb_width=8", "--l_bins=16", "--sr=44100",
                                 f"--audio_files_dir={DATA / 'music'}", "--labels=False", "--train", "--prior",
                                 "--levels=2", "--level=1", f"--restore_vqvae={path}"], tmp_path))
    assert "22050 Hz" in line and "sr=44100" in line
