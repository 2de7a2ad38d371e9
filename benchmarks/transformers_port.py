"""Sampling speed of this project against the transformers port of Jukebox (4.40.2), side by side.

    python benchmarks/transformers_port.py [--n_samples 4] [--tokens 48] [--rounds 5] [--threads 2]

The port lives in its own environment, ``benchmarks/.venv-port`` (made on the first run with
``pip install torch==2.13.0 transformers==4.40.2``; git ignores it). Two workers start, one per
side, each building a prior of the shape of ``small_vqvae,small_prior`` (1024 wide, 48 layers, one
head, row/column/previous-row attention, 8192 context, no labels) with random weights: the port's
``JukeboxPrior`` in its environment, ours in this one. Then, in alternating rounds after a warm-up,
each samples ``--tokens`` tokens of ``--n_samples`` samples on ``--threads`` threads and reports its
median step: the time between consecutive output-layer calls (the transformer step, output layer
and draw of one position). The medians over rounds, tokens/s and the ratio are printed.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
VENV = HERE / ".venv-port"
PORT_PACKAGES = ["torch==2.13.0", "transformers==4.40.2"]
# small_prior on the two-level small_vqvae (jukebox/hparams.py), in the port's configuration names.
SHAPE = dict(hidden_size=1024, num_layers=48, n_heads=1, blocks=64, n_ctx=8192, attention_multiplier=0.25,
             mlp_multiplier=1.0, attention_pattern="raw_column_previous_row_attention", music_vocab_size=1024,
             res_downs_t=[5, 3], res_strides_t=[2, 2], init_scale=0.7, mask=True)


def _venv_python() -> Path:
    return VENV / "bin" / "python"


def ensure_port_env() -> Path:
    """The port's interpreter, after making its environment if missing. A CUDA build of torch is refused."""
    python = _venv_python()
    if not python.exists():
        print(f"making {VENV} with {' '.join(PORT_PACKAGES)} (once)", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *PORT_PACKAGES], check=True)
    check = subprocess.run([str(python), "-c", "import torch, transformers; print(torch.version.cuda, "
                            "transformers.__version__)"], capture_output=True, text=True, check=True)
    cuda, version = check.stdout.split()
    if cuda != "None" or version != "4.40.2":
        raise SystemExit(f"error: {VENV} has torch for CUDA {cuda} / transformers {version}; delete it and rerun")
    return python


# ---------------------------------------------------------------------- workers (one per side)
def _port_sampler(n: int, tokens: int):
    import torch
    from transformers import JukeboxPriorConfig
    from transformers.models.jukebox.modeling_jukebox import JukeboxPrior

    config = JukeboxPriorConfig(**SHAPE, level=0, metadata_conditioning=False, is_encoder_decoder=False,
                                nb_relevant_lyric_tokens=0)
    torch.manual_seed(0)
    prior = JukeboxPrior(config, level=0, nb_priors=2).eval()
    with torch.no_grad():  # the constructor leaves some tensors (biases) uninitialised
        for p in prior.parameters():
            p.normal_(0.0, 0.02)
    prior.apply(prior._init_weights)
    model = prior.prior
    # Unconditioned, the port's sample asks its output Linear for a .device it does not have: give it one.
    model.fc_proj_out.device = torch.device("cpu")

    def one_round(on_step) -> None:
        handle = model.fc_proj_out.register_forward_hook(lambda *args: on_step())
        try:
            with torch.no_grad():
                model.sample(n, sample_tokens=tokens)
        finally:
            handle.remove()
    return one_round


def _our_sampler(n: int, tokens: int):
    import torch

    sys.path.insert(0, str(REPO))
    from jukebox.bench import build_prior
    from jukebox.inference.sampler import TokenSampler

    model = build_prior("small_vqvae,small_prior", torch.device("cpu")).prior

    def one_round(on_step) -> None:
        with torch.no_grad():
            TokenSampler(model, on_draw=on_step).sample(n, sample_tokens=tokens)
    return one_round


def worker(side: str, n: int, tokens: int, threads: int) -> None:
    """Build the side's prior, then run a round for every line on stdin, answering with its median step."""
    import logging

    import torch

    logging.disable(logging.WARNING)
    os.environ["TQDM_DISABLE"] = "1"
    torch.set_num_threads(threads)
    one_round = (_port_sampler if side == "port" else _our_sampler)(n, tokens)
    print(json.dumps(dict(ready=side, torch=torch.__version__)), flush=True)
    for _ in sys.stdin:
        stamps: list[float] = []
        one_round(lambda stamps=stamps: stamps.append(time.perf_counter()))
        steps = [b - a for a, b in zip(stamps[1:], stamps[2:])]  # after the first position and the step plan
        print(json.dumps(dict(step_s=statistics.median(steps))), flush=True)


# ---------------------------------------------------------------------- driver
def _answer(proc: subprocess.Popen) -> dict:
    """A worker's next JSON line (the models' builders print other lines first)."""
    while True:
        line = proc.stdout.readline()
        if not line:
            raise SystemExit(f"error: a worker ended early (exit status {proc.wait()}); see its messages above")
        if line.startswith("{"):
            return json.loads(line)


def _round(proc: subprocess.Popen) -> float:
    """One round of a worker: its median step in seconds."""
    proc.stdin.write("go\n")
    proc.stdin.flush()
    return _answer(proc)["step_s"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n_samples", type=int, default=4)
    p.add_argument("--tokens", type=int, default=48)
    p.add_argument("--rounds", type=int, default=5, help="timed rounds per side, after a warm-up round")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--worker", choices=["port", "ours"], help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        return worker(a.worker, a.n_samples, a.tokens, a.threads)
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads), TQDM_DISABLE="1")
    args = [str(Path(__file__).resolve()), f"--n_samples={a.n_samples}", f"--tokens={a.tokens}",
            f"--threads={a.threads}"]
    pythons = dict(port=ensure_port_env(), ours=Path(sys.executable))
    workers = {side: subprocess.Popen([str(python), *args, f"--worker={side}"], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, text=True, env=env, cwd=REPO)
               for side, python in pythons.items()}
    try:
        for side, proc in workers.items():
            print(f"{side}: {_answer(proc)}", flush=True)
        from jukebox.bench import alternating

        steps = alternating({side: functools.partial(_round, proc) for side, proc in workers.items()}, a.rounds)
        for r in range(a.rounds):
            print(f"round {r + 1}: " + ", ".join(f"{s} {steps[s][r] * 1e3:.1f} ms/step" for s in steps), flush=True)
    finally:
        for proc in workers.values():
            proc.stdin.close()
            proc.wait()
    rate = {side: a.n_samples / statistics.median(v) for side, v in steps.items()}
    load = os.getloadavg()[0]
    print(f"n_samples {a.n_samples}, {a.threads} threads, medians of {a.rounds} alternating rounds "
          f"(load average {load:.1f}): port {rate['port']:.1f} tokens/s, ours {rate['ours']:.1f} tokens/s, "
          f"ours / port = {rate['ours'] / rate['port']:.2f}x")


if __name__ == "__main__":
    main()
