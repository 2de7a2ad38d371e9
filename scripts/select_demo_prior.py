"""Test bits per token of every saved checkpoint of one demo prior level, to pick the one to export.

    python scripts/select_demo_prior.py --level=1 [--vqvae=logs/demo_vqvae/checkpoint_latest.pth.tar]

The small demo priors overfit the 11 training tracks late in training, so the last checkpoint is not
always the best one. This scores ``logs/demo_prior_level_{level}/checkpoint_step_*.pth.tar`` (their EMA
weights) on the held-out tracks exactly as ``scripts/evaluate_demo.py`` does and prints the best path.
"""
from __future__ import annotations

import glob
import os
import re
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from evaluate_demo import bits_per_token, held_out_audio  # noqa: E402
from jukebox.hparams import setup_hparams  # noqa: E402
from jukebox.make_models import MODELS, make_prior, make_vqvae  # noqa: E402
from jukebox.utils.cli import fire_command  # noqa: E402


def main(level: int, vqvae: str = "logs/demo_vqvae/checkpoint_latest.pth.tar", logs: str = "logs",
         test_dir: str = "data/demo/test", offset_sec: float = 30.0, seconds: float = 60.0,
         piece_sec: float = 12.0, every: int = 1) -> None:
    """Print the test bits of every ``every``-th checkpoint of ``level`` (counted back from the last) and the best."""
    model = MODELS["demo"]
    vq_hps = setup_hparams(model[0], dict(restore_vqvae=vqvae))
    _, x = held_out_audio(test_dir, vq_hps, offset_sec, seconds, piece_sec)
    vq_hps.sample_length = x.shape[1]
    vq = make_vqvae(vq_hps, "cpu")
    with torch.no_grad():
        zs = vq.encode(x, bs_chunks=x.shape[0])
    paths = glob.glob(os.path.join(logs, f"demo_prior_level_{level}", "checkpoint_step_*.pth.tar"))
    if not paths:
        raise FileNotFoundError(f"no checkpoint_step_*.pth.tar under {logs}/demo_prior_level_{level}")
    paths.sort(key=lambda p: int(re.search(r"checkpoint_step_(\d+)", p).group(1)))
    paths = paths[(len(paths) - 1) % every::every]  # every-th, always ending with the last
    scores = {}
    for path in paths:
        hps = setup_hparams(model[1 + level], dict(restore_prior=path, sample_length=x.shape[1]))
        bits, _ = bits_per_token(make_prior(hps, vq, "cpu"), zs)
        scores[path] = bits
        print(f"{path}: {bits:.3f} bits/token", flush=True)
    best = min(scores, key=scores.get)
    print(f"best: {best} ({scores[best]:.3f})")


if __name__ == "__main__":
    fire_command(main, prog="python scripts/select_demo_prior.py")
