"""Copy the trained demo checkpoints into the package (jukebox/models/demo), small enough to commit.

    python scripts/export_demo.py --vqvae=logs/demo_vqvae/checkpoint_latest.pth.tar \\
        --priors=logs/demo_prior_level_0/checkpoint_latest.pth.tar,...,logs/demo_prior_level_2/... \\
        --out=jukebox/models/demo

Each exported file keeps ``hps``, ``step`` and ``model`` (the EMA weights train.py samples with) and drops
the optimiser state and the live weights. Prior weights are stored as float16 (they are loaded into
float32 modules; the rounding changes test bits per token by far less than the reported precision);
the VQ-VAE stays float32 so its codebook and therefore the codes of any audio stay exact.
``training.json`` records each stage's steps, batch and wall time.
"""
from __future__ import annotations

import glob
import json
import os
from typing import Any

from jukebox.utils.atomic import atomic_write
from jukebox.utils.checkpoint import load_checkpoint, save_checkpoint
from jukebox.utils.cli import fire_command

TRAINING_KEYS = ("name", "argv", "ngpus", "bs", "sample_length", "lr", "level", "levels", "n_ctx")


def _wall_time_min(ckpt_path: str) -> float:
    """Wall time of the run(s) that wrote ``ckpt_path``: each (resumed) run writes its own TensorBoard file,
    named with its start time and last written when that run ended."""
    logdir = os.path.dirname(os.path.abspath(ckpt_path))
    seconds = sum(os.path.getmtime(f) - int(os.path.basename(f).split(".")[3])
                  for f in glob.glob(os.path.join(logdir, "events.out.tfevents.*")))
    return round(seconds / 60, 1)


def export(src: str, dst: str, half: bool) -> dict[str, Any]:
    """Write the slim checkpoint ``dst`` from the train.py checkpoint ``src``; returns its record."""
    ckpt = load_checkpoint(src)
    model = {k: (v.half() if half and v.is_floating_point() else v) for k, v in ckpt["model"].items()}
    save_checkpoint(dst, dict(hps=ckpt["hps"], step=ckpt["step"], model=model))
    hps = ckpt["hps"]
    return dict(file=os.path.basename(dst), step=int(ckpt["step"]), bytes=os.path.getsize(dst),
                dtype="float16" if half else "float32", **{k: hps.get(k) for k in TRAINING_KEYS},
                wall_time_min=_wall_time_min(src))


def main(vqvae: str, priors: Any, out: str = "jukebox/models/demo") -> None:
    """Export the VQ-VAE and the priors (comma list, bottom level first) into ``out``."""
    priors = priors.split(",") if isinstance(priors, str) else list(priors)
    if len(priors) != 3:
        raise ValueError(f"--priors needs 3 checkpoints (levels 0, 1, 2), got {len(priors)}")
    os.makedirs(out, exist_ok=True)
    stages = {"vqvae": export(vqvae, os.path.join(out, "vqvae.pth.tar"), half=False)}
    for level, path in enumerate(priors):
        stages[f"prior_level_{level}"] = export(path, os.path.join(out, f"prior_level_{level}.pth.tar"), half=True)
    with atomic_write(os.path.join(out, "training.json"), mode="w") as f:
        json.dump(stages, f, indent=1, sort_keys=True)
    total = sum(s["bytes"] for s in stages.values())
    for name, s in stages.items():
        print(f"{name}: step {s['step']}, {s['bytes'] / 2 ** 20:.1f} MiB ({s['dtype']}), {s['wall_time_min']} min")
    print(f"total {total / 2 ** 20:.1f} MiB in {out}")


if __name__ == "__main__":
    fire_command(main, prog="python scripts/export_demo.py")
