"""Command-line arguments of the small training runs the tests share."""
from __future__ import annotations

from conftest import DATA

# small_vqvae scaled down on the command line; lr warm-up short enough for a few dozen steps.
TINY_VQVAE = ["--hps=small_vqvae", "--sample_length=8192", "--bs=2", f"--audio_files_dir={DATA / 'music'}",
              "--labels=False", "--train", "--aug_shift", "--aug_blend", "--width=16", "--depth=2",
              "--emb_width=16", "--l_bins=64", "--lr=1e-3", "--lr_warmup=2", "--log_steps=1", "--nworkers=0"]
