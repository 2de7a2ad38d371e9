"""Faults: processes killed mid-work, failing disks, failing MPI ranks. Nothing finished may be lost, a rerun of
the same command continues where the work stopped, and a broken job ends in bounded time with a clear error.

Sampling runs the tiny model of helpers.tiny_model in subprocesses (alone and under ``mpiexec -n 2``); windows are
slowed down there (by the runner, not the library) so that SIGKILL lands in the middle of a level.
"""
from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from conftest import HELPERS, IDS_DIR, MPIEXEC, requires_mpiexec
from helpers.tiny_model import COMMON, SR, TOKENS, tiny_model
from helpers.training import TINY_VQVAE
from jukebox import sample
from jukebox.utils import checkpoint
from jukebox.utils.checkpoint import load_checkpoint, save_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    with tiny_model(tmp_path_factory.mktemp("faults")) as root:
        yield root


def _reference(tiny: Path, name: str, seed: int) -> list[torch.Tensor]:
    """The codes of an uninterrupted run in this process."""
    mp = pytest.MonkeyPatch()
    try:
        mp.chdir(tiny)
        if not (tiny / name / "level_0" / "data.pth.tar").exists():
            sample.run(**{**COMMON, "name": name, "seed": seed})
    finally:
        mp.undo()
    return load_checkpoint(tiny / name / "level_0" / "data.pth.tar")["zs"]


def _command(tiny: Path, name: str, seed: int, ranks: int = 1) -> list[str]:
    args = [sys.executable, str(HELPERS / "slow_tiny_sample.py"), str(tiny), "--model=tiny_test", f"--name={name}",
            "--levels=3",
            "--sample_length_in_seconds=0.25", "--total_sample_length_in_seconds=2", f"--sr={SR}",
            f"--n_samples={COMMON['n_samples']}", "--hop_fraction=0.5,0.5,0.5", "--fp16=False",
            f"--ids_dir={IDS_DIR}", f"--seed={seed}"]
    return ([str(MPIEXEC), "-n", str(ranks)] if ranks > 1 else []) + args


def _progress(path: Path) -> tuple[int, int] | None:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError):
        return None
    return state["level"], state["windows_done"]


WINDOWS = {2: 3, 1: 7, 0: 15}  # windows of each level of the tiny model at these lengths


def _windows_after(level: int, done: int) -> list[int]:
    """The levels of the windows still to sample after ``done`` windows of ``level``."""
    return [level] * (WINDOWS[level] - done) + [lower for lower in range(level - 1, -1, -1)
                                                for _ in range(WINDOWS[lower])]


def _kill(tiny: Path, cmd: list[str], progress_files: list[Path], victim: str, when,
          timeout_s: float = 120.0) -> list[tuple[int, int]]:
    """Start ``cmd`` with slow windows, SIGKILL process ``victim`` (a pid file) once ``when(level, windows_done)``
    holds for every progress file, and return the progress seen then."""
    proc = subprocess.Popen(cmd, cwd=tiny, env={**ENV, "WINDOW_DELAY": "0.15"}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            seen = [_progress(p) for p in progress_files]
            if all(s is not None and when(*s) for s in seen):
                os.kill(int((tiny / victim).read_text()), signal.SIGKILL)
                proc.wait(timeout=60)
                assert proc.returncode != 0
                return seen
            if proc.poll() is not None:
                pytest.fail(f"the run ended before it could be killed:\n{proc.stdout.read().decode()[-3000:]}")
            time.sleep(0.05)
        pytest.fail("the run never reached the point to kill it at")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return []


def _windows_run(tiny: Path, rank: int = 0) -> list[int]:
    log = tiny / f"windows_{rank}.log"
    return [int(line) for line in log.read_text().split()] if log.exists() else []


def _rerun(tiny: Path, cmd: list[str]) -> str:
    for log in tiny.glob("windows_*.log"):
        log.unlink()
    result = subprocess.run(cmd, cwd=tiny, env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


@pytest.mark.slow
def test_sampling_killed_mid_level_resumes_to_the_same_codes(tiny):
    expected = _reference(tiny, "reference_7", seed=7)
    cmd = _command(tiny, "killed", seed=7)
    [(level, done)] = _kill(tiny, cmd, [tiny / "killed" / "progress.pth.tar"], "runner_0.pid",
                            when=lambda level, done: level == 1 and 2 <= done < 6)
    state = load_checkpoint(tiny / "killed" / "progress.pth.tar")  # the file survives the kill intact
    assert state["level"] == 1 and state["windows_done"] >= done
    assert (tiny / "killed" / "level_2" / "data.pth.tar").is_file() and not (tiny / "killed" / "level_1").exists()

    out = _rerun(tiny, cmd)
    assert f"Resuming {Path('killed') / 'progress.pth.tar'}: level 1, after {state['windows_done']} windows" in out
    assert _windows_run(tiny) == _windows_after(1, state["windows_done"])  # nothing finished is redone
    assert "http.server --bind 127.0.0.1" in out
    got = load_checkpoint(tiny / "killed" / "level_0" / "data.pth.tar")["zs"]
    assert [tuple(z.shape) for z in got] == [(2, t) for t in TOKENS]
    assert all(torch.equal(a, b) for a, b in zip(got, expected))
    assert not (tiny / "killed" / "progress.pth.tar").exists()
    for level in range(3):  # every output loads without unpickling anything but tensors and containers
        path = tiny / "killed" / f"level_{level}" / "data.pth.tar"
        assert torch.serialization.get_unsafe_globals_in_checkpoint(str(path)) == []


@pytest.mark.slow
@requires_mpiexec
def test_mpi_sampling_killed_mid_level_resumes_to_the_same_codes(tiny):
    expected = [_reference(tiny, f"reference_{seed}", seed=seed) for seed in (7, 8)]  # rank r samples seed + r
    cmd = _command(tiny, "mpi", seed=7, ranks=2)
    files = [tiny / f"mpi_rank_{rank}" / "progress.pth.tar" for rank in range(2)]
    # rank 0 dies once both ranks have finished a window; the launcher must take rank 1 down with it
    _kill(tiny, cmd, files, "runner_0.pid", when=lambda level, done: level < 2 or done >= 1)
    states = [load_checkpoint(path) for path in files]

    _rerun(tiny, cmd)
    for rank, state in enumerate(states):
        assert _windows_run(tiny, rank) == _windows_after(state["level"], state["windows_done"])
        got = load_checkpoint(tiny / f"mpi_rank_{rank}" / "level_0" / "data.pth.tar")["zs"]
        assert all(torch.equal(a, b) for a, b in zip(got, expected[rank]))


# ---------------------------------------------------------------------------------------------
# Training killed at random moments
# ---------------------------------------------------------------------------------------------
# Once the file "hold_writes" exists, the runner (Linux: /proc) holds the next checkpoint write (and says so in
# "in_write") so that one kill lands in the middle of it: the temporary file is written but has not replaced its
# target yet.
SAVE_ITERS = 2


def _train_records(logdir: Path, skip: int) -> list[int]:
    lines = (logdir / "metrics.jsonl").read_text().splitlines()[skip:] if (logdir / "metrics.jsonl").exists() else []
    return [r["step"] for r in map(json.loads, lines) if r["split"] == "train"]


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="the runner finds file names through /proc")
def test_training_killed_at_random_moments_resumes_from_the_last_checkpoint(tmp_path):
    logdir = tmp_path / "logs" / "run"
    latest = logdir / "checkpoint_latest.pth.tar"
    env = {**ENV, "JUKEBOX_CACHE": str(tmp_path / "cache")}
    rng = random.Random()
    saved_step = 0
    # how each run ends: killed some time into its steps, killed inside a checkpoint write, stopped by Ctrl-C
    for run, how in enumerate(["kill_random", "kill_in_write", "sigint"]):
        cmd = [sys.executable, str(HELPERS / "held_write_train.py"), "--name=run", *TINY_VQVAE, "--local_logdir=logs",
               "--exit_train=100000",
               f"--save_iters={SAVE_ITERS}", "--log_steps=1"]
        if run:
            cmd.append(f"--restore_vqvae={latest}")
        seen = len((logdir / "metrics.jsonl").read_text().splitlines()) if run else 0
        proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True)
        try:
            deadline = time.monotonic() + 120
            while len(_train_records(logdir, seen)) <= SAVE_ITERS:  # past this run's first checkpoint
                assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0][-3000:]
                time.sleep(0.05)
            if how == "kill_in_write":
                (tmp_path / "hold_writes").touch()
                while not (tmp_path / "in_write").exists():
                    assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0][-3000:]
                    time.sleep(0.05)
            else:
                time.sleep(rng.uniform(0.0, 1.5))
            proc.send_signal(signal.SIGINT if how == "sigint" else signal.SIGKILL)
            out = proc.communicate(timeout=60)[0]
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        steps = _train_records(logdir, seen)
        if run:
            assert f"Resuming at step {saved_step}" in out, out[-3000:]
        assert steps[0] == saved_step + 1 and steps == list(range(steps[0], steps[-1] + 1)), (how, steps)
        state = load_checkpoint(latest)  # whatever the moment of the kill, the checkpoint loads
        assert steps[-1] - SAVE_ITERS <= state["step"] <= steps[-1], (how, steps, state["step"])
        if how == "kill_in_write":
            assert list(logdir.glob(".checkpoint_*.tmp")), "the kill missed the checkpoint write"
            (tmp_path / "hold_writes").unlink()
        if how == "sigint":
            assert proc.returncode == 128 + signal.SIGINT, out[-3000:]
            assert "Received signal" in out and state["step"] == steps[-1]  # nothing lost
        else:
            assert proc.returncode == -signal.SIGKILL
        saved_step = state["step"]


# ---------------------------------------------------------------------------------------------
# Failing writes
# ---------------------------------------------------------------------------------------------
def test_failed_checkpoint_write_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint_latest.pth.tar"
    save_checkpoint(path, dict(model={"w": torch.ones(3)}, step=10))
    before = path.read_bytes()
    real_save = torch.save

    def disk_full(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)  # part of the data reaches the temporary file, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint.torch, "save", disk_full)
    with pytest.raises(OSError, match="No space left on device"):
        save_checkpoint(path, dict(model={"w": torch.zeros(3)}, step=20))
    assert path.read_bytes() == before and load_checkpoint(path)["step"] == 10
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temporary file left behind


def test_failed_fsync_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "progress.pth.tar"
    save_checkpoint(path, dict(step=1))

    def io_error(fd):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(checkpoint.os, "fsync", io_error)
    with pytest.raises(OSError, match="Input/output error"):
        save_checkpoint(path, dict(step=2))
    assert load_checkpoint(path)["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]


def test_unwritable_sampling_folder_fails_before_any_work(tiny, tmp_path, monkeypatch):
    def no_model(*args, **kwargs):
        raise AssertionError("the model was built although its outputs cannot be written")

    monkeypatch.setattr(sample, "make_model", no_model)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a_file").write_text("")
    with pytest.raises(OSError, match=r"cannot create the output folder 'a_file/out'.*pass another --name"):
        sample.run(**{**COMMON, "name": "a_file/out"})
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    monkeypatch.setattr(sample.os, "access", lambda path, mode: not str(path).startswith("locked"))  # root may write
    with pytest.raises(PermissionError, match=r"the output folder 'locked' is not writable"):
        sample.run(**{**COMMON, "name": "locked"})


def test_unwritable_log_folder_fails_before_training_starts(tmp_path, monkeypatch):
    from jukebox import train

    def no_trainer(*args, **kwargs):
        raise AssertionError("training was set up although its log folder cannot be written")

    monkeypatch.setattr(train, "Trainer", no_trainer)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a_file").write_text("")
    with pytest.raises(OSError, match=r"cannot create the log folder 'a_file/run'.*--local_logdir"):
        train.main("small_vqvae", name="run", local_logdir="a_file")
    (tmp_path / "locked" / "run").mkdir(parents=True)
    monkeypatch.setattr(os, "access", lambda path, mode: not str(path).startswith("locked"))  # root may write
    with pytest.raises(PermissionError, match=r"the log folder 'locked/run' is not writable"):
        train.main("small_vqvae", name="run", local_logdir="locked")


@pytest.mark.parametrize("failing_write", [1, 2])
def test_disk_full_while_training_saves_keeps_checkpoint_latest(tmp_path, monkeypatch, failing_write):
    """Trainer.save writes checkpoint_step_N, then copies it over checkpoint_latest; either write may fail."""
    from jukebox import train

    latest = tmp_path / "checkpoint_latest.pth.tar"
    save_checkpoint(latest, dict(step=4))
    trainer = SimpleNamespace(step=6, local_rank=0, hps=SimpleNamespace(save=True, train=True), logdir=str(tmp_path),
                              state=SimpleNamespace(checkpoint=lambda: dict(step=6, model={"w": torch.ones(2)})))
    real_fsync, writes = os.fsync, []

    def disk_full_at_one_write(fd):
        writes.append(fd)
        if len(writes) == failing_write:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", disk_full_at_one_write)
    with pytest.raises(OSError, match="No space left"):
        train.Trainer.save(trainer, with_step=True)
    assert load_checkpoint(latest)["step"] == 4
    expected = ["checkpoint_latest.pth.tar"] + (["checkpoint_step_6.pth.tar"] if failing_write == 2 else [])
    assert sorted(p.name for p in tmp_path.iterdir()) == expected  # no temporary file left behind


# ---------------------------------------------------------------------------------------------
# A failing MPI rank
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
@requires_mpiexec
@pytest.mark.parametrize("failure", ["raise", "kill"])
def test_one_failing_rank_ends_the_whole_job(tmp_path, failure):
    script = HELPERS / "failing_rank.py"
    start = time.monotonic()
    result = subprocess.run([str(MPIEXEC), "-n", "2", sys.executable, str(script), failure], cwd=tmp_path, env=ENV,
                            capture_output=True, text=True, timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert time.monotonic() - start < 60, "the surviving rank hung"
    assert "got past the barrier" not in output
    if failure == "raise":
        assert "rank 1 failed on purpose" in output  # the traceback reaches the user before the abort
