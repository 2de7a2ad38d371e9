"""How the size of the CPU calibration's trials ranks the backends, and what a calibration costs.

    python benchmarks/calibration_trials.py [--hps small_vqvae,small_prior] [--n_samples 1,4] [--rounds 2]

For each batch, in ``--rounds`` rounds, one process builds fresh step plans of the prior (random weights) and
calibrates each into a calibration file of its own, three ways in turn: every candidate on the short trial alone
(the leading layers that hold ``CALIBRATION_SCREEN_MIB`` of weights), every candidate on the long one
(``CALIBRATION_PROXY_MIB``), and as sampling does (the short trial, then the long one for the backends within
``CALIBRATION_SCREEN_MARGIN`` of the fastest). Each line gives the calibration's seconds, the layers its trials ran
and every backend's time per whole step as a multiple of the fastest one's, so that the rankings of the two trials
can be compared and the cost of each read. A calibration of a batch of 2 runs first: it loads the numba kernels.
"""
from __future__ import annotations

import argparse
import itertools
import os
import tempfile
from pathlib import Path

import torch

from jukebox import bench
from jukebox.inference import cpu_backends, step_plan
from jukebox.inference.sampler import TokenSampler


def calibrate(model, n: int, conds: tuple, path: Path, screen_mib: float, proxy_mib: float) -> dict:
    """The calibration entry of a fresh plan of ``n`` samples, with trials over ``screen_mib`` then ``proxy_mib``."""
    os.environ["JUKEBOX_CPU_CALIBRATION"] = str(path)
    defaults = step_plan.CALIBRATION_SCREEN_MIB, step_plan.CALIBRATION_PROXY_MIB
    step_plan.CALIBRATION_SCREEN_MIB, step_plan.CALIBRATION_PROXY_MIB = screen_mib, proxy_mib
    try:
        sampler = TokenSampler(model)
        with torch.no_grad():
            sampler.sample(n, *conds, sample_tokens=2)
    finally:
        step_plan.CALIBRATION_SCREEN_MIB, step_plan.CALIBRATION_PROXY_MIB = defaults
    return cpu_backends.calibration(sampler.plan.shape(), path)


def describe(entry: dict) -> str:
    times = entry["step_ms"]
    fastest = min(times.values())
    layers = cpu_backends.trial_layer_counts(entry)
    ranking = ", ".join(f"{name} {ms / fastest:.2f}" for name, ms in sorted(times.items(), key=lambda item: item[1]))
    return f"{entry['seconds']:.2f} s, trials over {' and '.join(map(str, layers))} layers: {ranking}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hps", default=bench.CPU_DEFAULT, help=f"registry sets (default {bench.CPU_DEFAULT})")
    p.add_argument("--n_samples", default="1,4", help="comma-separated batch sizes (default 1,4)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    model = bench.build_prior(a.hps, torch.device("cpu")).prior
    cpu = cpu_backends.cpu_info()
    print(f"{a.hps} on {cpu['model']} ({cpu['isa']}; torch kernels {cpu['torch_isa']}), {a.threads} threads, "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)
    screen, proxy = step_plan.CALIBRATION_SCREEN_MIB, step_plan.CALIBRATION_PROXY_MIB
    ways = {f"short ({screen:g} MiB)": (screen, screen), f"long ({proxy:g} MiB)": (proxy, proxy),
            "default (short, then long)": (screen, proxy)}
    g = torch.Generator().manual_seed(0)
    with tempfile.TemporaryDirectory() as folder:
        files = (Path(folder) / f"{i}.json" for i in itertools.count())
        first = calibrate(model, 2, bench._conds(model, 2, torch.device("cpu"), torch.float32, g), next(files),
                          screen, proxy)
        print(f"first calibration of the process (n_samples 2): {describe(first)}", flush=True)
        for n in (int(v) for v in a.n_samples.split(",")):
            conds = bench._conds(model, n, torch.device("cpu"), torch.float32, g)
            for r in range(a.rounds):
                for way, (screen_mib, proxy_mib) in ways.items():
                    entry = calibrate(model, n, conds, next(files), screen_mib, proxy_mib)
                    print(f"n_samples {n}, round {r + 1}, {way}: {describe(entry)}", flush=True)


if __name__ == "__main__":
    main()
