"""End-to-end runs of ``jukebox/train.py`` as users launch it: under ``mpiexec -n 2`` and as plain
``python``, on the shared music clips with a scaled-down ``small_vqvae``."""
from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import DATA, HELPERS, MPIEXEC, REPO, requires_mpiexec
from helpers.training import TINY_VQVAE

PYTHON = sys.executable
TRAIN = str(REPO / "jukebox" / "train.py")
SCRIPTS = REPO / "scripts"

MPI_STEPS = 30


def _env(tmp: Path) -> dict[str, str]:
    return {**os.environ, "JUKEBOX_CACHE": str(tmp / "cache"), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
            "PYTHON": PYTHON, "MPIEXEC": str(MPIEXEC)}


def _start(cmd: list[str], tmp: Path) -> subprocess.Popen:
    # A new session, so that on timeout the whole launcher tree can be ended by its group id.
    return subprocess.Popen(cmd, cwd=tmp, env=_env(tmp), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)


def _finish(proc: subprocess.Popen, timeout: float) -> tuple[int, str]:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"{proc.args[:3]} ran past {timeout} s (a hung rank?); output:\n{out[-4000:]}")
    return proc.returncode, out


def _run(cmd: list[str], tmp: Path, timeout: float) -> tuple[int, str]:
    return _finish(_start(cmd, tmp), timeout)


def _records(logdir: Path, split: str = "train") -> list[dict]:
    lines = (logdir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["split"] == split]


def _event_tags(logdir: Path) -> set[str]:
    """Summary tags in the TensorBoard event files (TFRecord framing: length, crc, payload, crc)."""
    from tensorboardX.proto import event_pb2
    tags = set()
    for path in logdir.glob("events.out.tfevents.*"):
        data, i = path.read_bytes(), 0
        while i < len(data):
            (n,) = struct.unpack("<Q", data[i:i + 8])
            event = event_pb2.Event()
            event.ParseFromString(data[i + 12:i + 12 + n])
            tags.update(v.tag for v in event.summary.value)
            i += 12 + n + 4
    return tags


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def mpi_run(tmp_path_factory):
    """Two ranks train the tiny VQ-VAE for MPI_STEPS steps, saving every 10."""
    tmp = tmp_path_factory.mktemp("mpi_train")
    # The README's command through its launch script, scaled down by overrides (the last value wins).
    cmd = ["bash", str(SCRIPTS / "train_vqvae.sh"), str(DATA / "music"), "2", "--name=mpi", *TINY_VQVAE,
           f"--local_logdir={tmp / 'logs'}", f"--exit_train={MPI_STEPS}", "--save_iters=10"]
    code, out = _run(cmd, tmp, timeout=240)
    assert code == 0, out[-4000:]
    return tmp, tmp / "logs" / "mpi", out


@pytest.mark.slow
@requires_mpiexec
def test_mpi_training_learns_and_keeps_replicas_in_sync(mpi_run):
    _, logdir, out = mpi_run
    records = _records(logdir)
    assert [r["step"] for r in records] == list(range(1, MPI_STEPS + 1))
    losses = [r["loss"] for r in records]
    first, last = sum(losses[:6]) / 6, sum(losses[-6:]) / 6
    assert last < 0.8 * first, f"loss did not fall: first steps {losses[:6]}, last steps {losses[-6:]}"
    assert records[0]["lr"] == 0.0 and records[1]["lr"] == pytest.approx(5e-4) and records[-1]["lr"] == 1e-3

    # Every rank reported a fingerprint of its weights at the end; DDP must keep them identical.
    (replicas,) = _records(logdir, "replicas")
    assert len(replicas["checksums"]) == 2 and replicas["checksums"][0] == replicas["checksums"][1]

    tags = _event_tags(logdir)
    assert {"loss", "lr", "gn", "recons_loss", "entropy", "usage", "hps/text_summary"} <= tags
    assert {"0/train_x_in", "0/train_x_out", "0/train_x_ds_start_0", "0/train_x_ds_start_1"} <= tags
    assert "mpiexec" not in (logdir / "argv.txt").read_text() and "--name=mpi" in (logdir / "argv.txt").read_text()


@pytest.mark.slow
@requires_mpiexec
def test_mpi_checkpoints_are_complete_and_weights_only(mpi_run):
    _, logdir, _ = mpi_run
    for step in (10, 20, 30):
        assert (logdir / f"checkpoint_step_{step}.pth.tar").is_file()
    ckpt = _load(logdir / "checkpoint_latest.pth.tar")
    assert {"hps", "model", "opt", "shd", "step", "epoch", "ema"} <= set(ckpt)
    assert ckpt["step"] == MPI_STEPS and ckpt["epoch"] == 0 and ckpt["shd"]["last_epoch"] == MPI_STEPS
    assert type(ckpt["hps"]) is dict and ckpt["hps"]["width"] == 16 and ckpt["hps"]["ngpus"] == 2
    assert set(ckpt["hps"]["bandwidth"]) == {"l1", "l2", "spec"}
    assert not any(k.startswith("module.") for k in ckpt["model"])
    assert "bottleneck.level_blocks.0.k" in ckpt["model"]
    assert all(int(s["step"]) == MPI_STEPS for s in ckpt["opt"]["state"].values())
    # `model` holds the EMA weights, `ema` the live ones: equal in shape, different in value.
    live = ckpt["ema"]["params"]
    assert ckpt["ema"]["steps"] == MPI_STEPS and ckpt["ema"]["mu"] == pytest.approx(1 - (2 * 2 / 8) / 1000)
    assert set(live) <= set(ckpt["model"])
    assert any(not torch.equal(live[k], ckpt["model"][k]) for k in live)


@pytest.mark.slow
@requires_mpiexec
def test_resume_continues_step_optimizer_and_schedule(mpi_run):
    tmp, logdir, _ = mpi_run
    saved = _load(logdir / "checkpoint_latest.pth.tar")
    cmd = [PYTHON, TRAIN, "--name=resumed", *TINY_VQVAE, f"--local_logdir={tmp / 'logs'}",
           f"--restore_vqvae={logdir / 'checkpoint_latest.pth.tar'}", f"--exit_train={MPI_STEPS + 4}"]
    code, out = _run(cmd, tmp, timeout=180)
    assert code == 0, out[-4000:]
    assert f"Resuming at step {MPI_STEPS}" in out
    resumed = tmp / "logs" / "resumed"
    assert [r["step"] for r in _records(resumed)] == [MPI_STEPS + 1 + i for i in range(4)]
    ckpt = _load(resumed / "checkpoint_latest.pth.tar")
    assert ckpt["step"] == MPI_STEPS + 4 and ckpt["shd"]["last_epoch"] == MPI_STEPS + 4
    # Adam's per-parameter step counts continue from the saved ones: the optimiser state was restored.
    assert all(int(s["step"]) == MPI_STEPS + 4 for s in ckpt["opt"]["state"].values())
    assert ckpt["ema"]["steps"] == MPI_STEPS + 4
    before = saved["opt"]["state"][0]["exp_avg_sq"]
    after = ckpt["opt"]["state"][0]["exp_avg_sq"]
    # Four more updates with beta2=0.999 keep most of the restored second moment.
    assert torch.all(after >= 0.999 ** 4 * before * 0.999)


def test_unknown_hparam_fails_fast_with_a_clear_message(tmp_path):
    start = time.time()
    code, out = _run([PYTHON, TRAIN, "--hps=small_vqvae", "--name=x", "--sample_lenght=8192"], tmp_path, timeout=60)
    assert code != 0
    assert "unknown hyperparameter 'sample_lenght'" in out and "sample_length" in out
    assert not (tmp_path / "logs").exists()
    assert time.time() - start < 60




@pytest.mark.slow
@requires_mpiexec
def test_an_exception_on_one_rank_ends_the_whole_mpi_job(tmp_path):
    script = HELPERS / "failing_train_step.py"
    start = time.time()
    cmd = [str(MPIEXEC), "-n", "2", PYTHON, str(script), "--name=fail", *TINY_VQVAE,
           f"--local_logdir={tmp_path / 'logs'}", "--exit_train=50"]
    code, out = _run(cmd, tmp_path, timeout=150)
    assert code != 0
    assert "injected failure on rank 1" in out, out[-3000:]
    assert time.time() - start < 150


@pytest.mark.slow
@pytest.mark.parametrize("target", ["process", "group"])
def test_sigterm_stops_cleanly_and_saves_latest(tmp_path, target):
    """SIGTERM to the trainer, or to its whole process group with a loader worker (what a terminal's
    Ctrl-C or a job scheduler does): the step in progress ends and checkpoint_latest holds it."""
    logdir = tmp_path / "logs" / "term"
    workers = "--nworkers=1" if target == "group" else "--nworkers=0"
    proc = _start([PYTHON, TRAIN, "--name=term", *TINY_VQVAE, workers, f"--local_logdir={tmp_path / 'logs'}",
                   "--exit_train=100000", "--save_iters=100000"], tmp_path)
    deadline = time.time() + 150
    while time.time() < deadline and proc.poll() is None:
        if (logdir / "metrics.jsonl").exists() and len(_records(logdir)) >= 3:
            break
        time.sleep(0.5)
    assert proc.poll() is None, "training ended before it could be signalled"
    if target == "group":
        os.killpg(proc.pid, signal.SIGTERM)
    else:
        proc.send_signal(signal.SIGTERM)
    code, out = _finish(proc, timeout=60)
    assert code == 128 + signal.SIGTERM, out[-3000:]
    assert "Received signal" in out and "Traceback" not in out, out[-3000:]
    ckpt = _load(logdir / "checkpoint_latest.pth.tar")
    assert ckpt["step"] == _records(logdir)[-1]["step"] >= 3


@pytest.mark.slow
@requires_mpiexec
def test_prior_trains_on_frozen_vqvae_codes_and_resumes(mpi_run):
    """The README's small_prior recipe (all_fp16, cpu_ema) scaled down, on the tiny VQ-VAE's top level:
    32 tokens of level 1 (hop 256) per 8192-sample window."""
    tmp, vqvae_dir, _ = mpi_run
    prior = ["--hps=small_vqvae,small_prior,all_fp16,cpu_ema", *TINY_VQVAE[1:], "--test", "--prior", "--levels=2",
             "--level=1", "--weight_decay=0.01", f"--restore_vqvae={vqvae_dir / 'checkpoint_latest.pth.tar'}",
             "--n_ctx=32", "--blocks=8", "--prior_width=32", "--prior_depth=2", "--break_test=2",
             "--cpu_ema_freq=2", f"--local_logdir={tmp / 'logs'}"]
    code, out = _run(["bash", str(SCRIPTS / "train_prior.sh"), str(DATA / "music"), "1", "--name=prior", *prior,
                      "--exit_train=4", "--save_iters=2"], tmp, timeout=180)
    assert code == 0, out[-4000:]
    assert "fp16/all_fp16 needs a CUDA device" in out and "float16 parameters" in out
    logdir = tmp / "logs" / "prior"
    train = _records(logdir)
    assert [r["step"] for r in train] == [1, 2, 3, 4]
    assert all(abs(r["bpd"] - 6.0) < 0.1 for r in train)  # log2(64 codes) bits at initialisation
    (test,) = _records(logdir, "test")
    assert {"loss", "bpd", "gen_loss", "prime_loss"} <= set(test)
    ckpt = _load(logdir / "checkpoint_latest.pth.tar")
    assert ckpt["step"] == 4 and ckpt["ema"]["freq"] == 2 and ckpt["ema"]["steps"] == 4
    assert ckpt["hps"]["prior"] is True and ckpt["hps"]["level"] == 1
    w = "prior.transformer._attn_mods.0.attn.c_attn.w"
    assert ckpt["model"][w].dtype == torch.float16  # fp16_params checkpoints keep float16 weights
    assert ckpt["ema"]["params"][w].dtype == torch.float32
    assert not any(k.startswith(("module.", "vqvae", "encoder")) for k in ckpt["model"])

    code, out = _run([PYTHON, TRAIN, "--name=prior_resumed", *prior, "--exit_train=6",
                      f"--restore_prior={logdir / 'checkpoint_latest.pth.tar'}"], tmp, timeout=180)
    assert code == 0, out[-4000:]
    resumed = _load(tmp / "logs" / "prior_resumed" / "checkpoint_latest.pth.tar")
    assert resumed["step"] == 6 and resumed["ema"]["steps"] == 6
    assert all(int(s["step"]) == 6 for s in resumed["opt"]["state"].values())


# The README's training commands (flags after `jukebox/train.py`), with {audio} for the audio folder.
README_COMMANDS = {
    "train_vqvae.sh": "--hps=small_vqvae --name=small_vqvae --sample_length=262144 --bs=4 --audio_files_dir={audio} "
                      "--labels=False --train --aug_shift --aug_blend",
    "train_prior.sh": "--hps=small_vqvae,small_prior,all_fp16,cpu_ema --name=small_prior --sample_length=2097152 "
                      "--bs=4 --audio_files_dir={audio} --labels=False --train --test --aug_shift --aug_blend "
                      "--restore_vqvae=logs/small_vqvae/checkpoint_latest.pth.tar --prior --levels=2 --level=1 "
                      "--weight_decay=0.01 --save_iters=1000",
    "train_upsampler.sh": "--hps=small_vqvae,small_upsampler,all_fp16,cpu_ema --name=small_upsampler "
                          "--sample_length=262144 --bs=4 --audio_files_dir={audio} --labels=False --train --test "
                          "--aug_shift --aug_blend --restore_vqvae=logs/small_vqvae/checkpoint_latest.pth.tar --prior "
                          "--levels=2 --level=0 --weight_decay=0.01 --save_iters=1000",
    "train_pretrained_vqvae_prior.sh": "--hps=vqvae,small_prior,all_fp16,cpu_ema --name=pretrained_vqvae_small_prior "
                                       "--sample_length=1048576 --bs=4 --aug_shift --aug_blend "
                                       "--audio_files_dir={audio} --labels=False --train --test --prior --levels=3 "
                                       "--level=2 --weight_decay=0.01 --save_iters=1000",
    "train_labelled_prior.sh": "--hps=vqvae,small_labelled_prior,all_fp16,cpu_ema "
                               "--name=pretrained_vqvae_small_prior_labels --sample_length=1048576 --bs=4 --aug_shift "
                               "--aug_blend --audio_files_dir={audio} --labels=True --train --test --prior --levels=3 "
                               "--level=2 --weight_decay=0.01 --save_iters=1000",
    "train_single_enc_dec_prior.sh": "--hps=vqvae,small_single_enc_dec_prior,all_fp16,cpu_ema "
                                     "--name=pretrained_vqvae_small_single_enc_dec_prior_labels "
                                     "--sample_length=786432 --bs=4 --aug_shift --aug_blend --audio_files_dir={audio} "
                                     "--labels=True --train --test --prior --levels=3 --level=2 --weight_decay=0.01 "
                                     "--save_iters=1000",
    "train_sep_enc_dec_prior.sh": "--hps=vqvae,small_sep_enc_dec_prior,all_fp16,cpu_ema "
                                  "--name=pretrained_vqvae_small_sep_enc_dec_prior_labels "
                                  "--sample_length=786432 --bs=4 --aug_shift --aug_blend --audio_files_dir={audio} "
                                  "--labels=True --train --test --prior --levels=3 --level=2 --weight_decay=0.01 "
                                  "--save_iters=1000",
    "finetune_1b_lyrics.sh": "--hps=vqvae,prior_1b_lyrics,all_fp16,cpu_ema --name=finetuned --sample_length=1048576 "
                             "--bs=1 --aug_shift --aug_blend --audio_files_dir={audio} --labels=True --train --test "
                             "--prior --levels=3 --level=2 --weight_decay=0.01 --save_iters=1000",
    "anneal_prior.sh": "--hps=small_vqvae,small_prior,all_fp16,cpu_ema --name=small_prior --sample_length=2097152 "
                       "--bs=4 --audio_files_dir={audio} --labels=False --train --test --aug_shift --aug_blend "
                       "--restore_vqvae=logs/small_vqvae/checkpoint_latest.pth.tar --prior --levels=2 --level=1 "
                       "--weight_decay=0.01 --save_iters=1000 "
                       "--restore_prior=logs/small_prior/checkpoint_latest.pth.tar "
                       "--lr_use_linear_decay --lr_start_linear_decay=5000 --lr_decay=2000",
}


@pytest.mark.parametrize("script", sorted(README_COMMANDS))
def test_launch_scripts_run_the_readme_commands(script, tmp_path):
    audio = DATA / "music"
    extra = ["5000", "2000"] if script == "anneal_prior.sh" else []
    out = subprocess.run(["bash", str(SCRIPTS / script), str(audio), "3", *extra, "--seed=7"], env={
        **_env(tmp_path), "DRY_RUN": "1"}, capture_output=True, text=True, timeout=30, check=True).stdout.split()
    assert out[:5] == [str(MPIEXEC), "-n", "3", PYTHON, "jukebox/train.py"]
    assert out[5:] == README_COMMANDS[script].format(audio=audio).split() + ["--seed=7"]


def test_launch_scripts_reject_a_missing_audio_folder(tmp_path):
    proc = subprocess.run(["bash", str(SCRIPTS / "train_vqvae.sh"), str(tmp_path / "nowhere")],
                          env={**_env(tmp_path), "DRY_RUN": "1"}, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and "does not exist" in proc.stderr




@pytest.mark.slow
@pytest.mark.parametrize("set_omp", [False, True])
def test_cpu_ranks_on_one_machine_share_its_cores(set_omp):
    """Two CPU ranks of one machine each take half its cores (not all of them, which oversubscribes
    the machine), unless OMP_NUM_THREADS says otherwise."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    share = max(1, (os.cpu_count() or 1) // 2)
    omp_threads = ("1" if share > 1 else "2") if set_omp else None  # a count the split would not give
    procs = []
    for rank in range(2):
        env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
        env.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2",
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), CUDA_VISIBLE_DEVICES="")
        if omp_threads:
            env["OMP_NUM_THREADS"] = omp_threads
        procs.append(subprocess.Popen([sys.executable, str(HELPERS / "rank_threads.py")], env=env, cwd=REPO,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err for _, err in outs]
    expected = int(omp_threads) if omp_threads else share
    assert [int(out.split()[-1]) for out, _ in outs] == [expected, expected]


@pytest.mark.parametrize("device, local_size, gpus, expected", [
    ("cpu", 2, 0, "gloo"), ("cuda", 1, 1, "nccl"), ("cuda", 4, 8, "nccl"), ("cuda", 2, 1, "gloo")])
def test_ranks_that_share_a_gpu_reduce_through_gloo(monkeypatch, device, local_size, gpus, expected):
    """NCCL refuses two ranks on one GPU, so ranks that outnumber a machine's GPUs go through gloo."""
    from jukebox.utils import dist_utils

    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    assert dist_utils.default_backend(torch.device(device), local_size) == expected
