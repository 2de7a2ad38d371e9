"""Sampling speed benchmark: ``python -m jukebox.bench`` (``--help`` lists the options).

Builds a prior with random weights from registry sets, then measures, after a warm-up run and as
medians over repeats:

* ancestral sampling: seconds per token step and tokens/s for each ``--n_samples``;
* priming ``--prime_tokens`` known tokens in chunks of ``--chunk_size`` (on CPU at least
  ``sampler.CPU_CHUNK_ROWS`` rows; the chunk run is printed), then ``--new_tokens`` new ones (on a CPU with
  bfloat16, also through the ``onednn_bf16`` opt-in);
* the step time deep in the context (after priming ``--deep`` tokens) against near the start;
* the key/value cache per sample;
* on CPU, how much of the process sits in 2 MiB pages after the last ancestral run (the numba kernels'
  weights, ``jukebox.utils.huge_pages``) and the OS's transparent huge page setting;
* on CPU, every backend of ``jukebox.inference.cpu_backends`` that runs here, forced in turn
  (alternating rounds), beside the one calibration chose;

and prints them, with the CPU model, its ISA and the threads (on CUDA the GPU, the torch and CUDA versions and
the host CPU), beside the floor computed on the spot:
the bytes of weights one step reads divided by the memory bandwidth of a large tensor copy on the
same machine and threads (measured at the start and again around every timed ancestral run, since
it drifts on shared machines: each run is compared with the floor of the measurements on either side
of it). A step can not be faster than reading every weight once, whatever the batch. Float16-stored
weights (``--hps=...,all_fp16``) count two bytes each: their own floor.

Step times are the intervals between consecutive draws (embedding, all layers, output layer and the
draw), so allocation and the first position are not counted in per-step figures; end-to-end rates
are printed too.
"""
from __future__ import annotations

import functools
import os
import statistics
import time
from dataclasses import dataclass, field
from typing import NamedTuple

import torch

from jukebox.hparams import setup_hparams
from jukebox.inference import cpu_backends
from jukebox.inference.sampler import TokenSampler
from jukebox.inference.schedule import plan_level
from jukebox.make_models import make_prior, make_vqvae
from jukebox.utils import huge_pages
from jukebox.utils.cli import ArgumentParser, run_cli
from jukebox.utils.dist_utils import print_once
from jukebox.utils.torch_utils import measure_bandwidth, synchronize
from jukebox.vqvae.vqvae import calculate_hop_lengths

__all__ = ["weight_bytes_per_step", "build_prior", "StepTimer", "run", "alternating", "project_song"]

CPU_DEFAULT = "small_vqvae,small_prior"
# The original's CUDA settings (sample.py default_sampling_kwargs): samples per pass, priming chunk.
TOP_1B, UPSAMPLER = "vqvae,prior_1b_lyrics,all_fp16", "vqvae,upsampler_level_0,all_fp16"
CUDA_DEFAULTS = {TOP_1B: (16, 32), UPSAMPLER: (16, 32)}


def weight_bytes_per_step(model: torch.nn.Module, fp16_linear_weights: bool = False) -> int:
    """Bytes of weights a one-token step reads: the transformer's parameters and the output layer
    (embedding rows are one row per step and are left out). With ``fp16_linear_weights`` the linear
    weights count two bytes each, as the ``fbgemm_fp16`` backend reads them."""
    total = 0
    for name, p in model.transformer.named_parameters():
        size = 2 if fp16_linear_weights and name.endswith(".w") else p.element_size()
        total += p.numel() * size
    if not model.only_encode:
        total += model.x_out.weight.numel() * model.x_out.weight.element_size()
    return total


def build_prior(hps_names: str, device: torch.device, seed: int = 0) -> torch.nn.Module:
    """The SimplePrior of registry sets ``hps_names`` with random weights (nothing is downloaded)."""
    torch.manual_seed(seed)
    overrides = dict(restore_vqvae="", restore_prior="", train=False)
    hps = setup_hparams(hps_names, overrides)
    if "small_prior" in hps_names:
        # The README's small prior: top level of a two-level small VQ-VAE, no labels.
        hps.update(levels=2, level=1, labels=False)
    if not hps.sample_length:
        # Any multiple of the top level's hop will do: the prior's window is n_ctx tokens regardless.
        hps.sample_length = hps.n_ctx * calculate_hop_lengths(hps.strides_t, hps.downs_t)[-1]
    vqvae = make_vqvae(hps, "meta")
    return make_prior(hps, vqvae, device)


@dataclass
class StepTimer:
    """Times a sampling run: the start of every transformer call (a forward pre-hook records
    ``(time, positions fed)``: priming chunks and plain-path steps), the end of priming, and every
    draw of new tokens (one per step, also when the step runs a step plan or a CUDA graph, which call
    no module)."""

    device: torch.device
    calls: list = field(default_factory=list)
    draws: list = field(default_factory=list)
    primed: float | None = None
    cache_bytes: int = 0
    sampler: TokenSampler | None = None

    def __call__(self, module, args, kwargs):
        synchronize(self.device)
        self.calls.append((time.perf_counter(), args[0].shape[1]))

    def on_primed(self) -> None:
        synchronize(self.device)
        self.primed = time.perf_counter()

    def on_draw(self) -> None:
        synchronize(self.device)
        self.draws.append(time.perf_counter())
        if not self.cache_bytes:
            self.cache_bytes = self.sampler.cache.nbytes

    def step_times(self, skip: int = 1) -> list[float]:
        """Seconds between consecutive draws (one step and its draw each), after the first ``skip``
        (which hold the cache allocation and the CUDA graph capture)."""
        return [b - a for a, b in zip(self.draws[skip:], self.draws[skip + 1:])]

    def prime_time(self) -> float:
        """Seconds from the start of the first priming chunk to the end of the last."""
        return self.primed - self.calls[0][0]


def _conds(model: torch.nn.Module, n: int, device: torch.device, dtype: torch.dtype, g: torch.Generator):
    """Random x_cond, y_cond, encoder_kv of the shapes the inner model expects (conditioning is
    computed once per window by SimplePrior; its values do not change the speed)."""
    def rand(*shape):
        return (0.02 * torch.randn(*shape, generator=g)).to(device, dtype)
    x_cond = rand(n, model.input_dims, model.width) if model.x_cond else None
    y_cond = rand(n, 1, model.width) if model.y_cond else None
    encoder_kv = rand(n, model.encoder_dims, model.width) if model.encoder_dims else None
    return x_cond, y_cond, encoder_kv


def _timed(model, device, fn, **options) -> tuple[StepTimer, float]:
    """Time ``fn(sampler)`` with a ``TokenSampler`` of ``model`` (``options``: its settings) that reports
    to a ``StepTimer``."""
    timer = StepTimer(device)
    timer.sampler = TokenSampler(model, on_primed=timer.on_primed, on_draw=timer.on_draw, **options)
    handle = model.transformer.register_forward_pre_hook(timer, with_kwargs=True)
    try:
        synchronize(device)
        t = time.perf_counter()
        fn(timer.sampler)
        synchronize(device)
        return timer, time.perf_counter() - t
    finally:
        handle.remove()
        # The sampler's hooks point back at the timer. Unhooked, the run's sampler (its packed weights and cache)
        # goes as soon as the caller drops the timer, not at some later garbage collection.
        timer.sampler.on_primed = timer.sampler.on_draw = None


def run(hps: str = CPU_DEFAULT, device: str = "cpu", threads: int = 2, n_samples: tuple[int, ...] = (1, 4),
        tokens: int = 48, repeats: int = 3, prime_tokens: int = 1024, chunk_size: int = 32, new_tokens: int = 64,
        prime_samples: int = 1, deep: int = 6000, deep_chunk: int = 1000, fp16: bool = False,
        cpu_backend: str | None = None, cuda_graph: bool = False, plain_step: bool = False,
        backends: bool = True, log=print_once) -> dict:
    """Run the benchmark and ``log`` a table; returns the measurements as a dict. ``cpu_backend``: force one
    (None: calibrated); ``backends``: also time every CPU backend that runs here."""
    dev = torch.device(device)
    if dev.type == "cpu":
        torch.set_num_threads(threads)
    prior = build_prior(hps, dev)
    model = prior.prior
    options = dict(cpu_backend=cpu_backend, plain_step=plain_step, cuda_graph=cuda_graph)
    g = torch.Generator().manual_seed(0)
    params = sum(p.numel() for p in model.parameters())
    weight_bytes = weight_bytes_per_step(model, cpu_backend == "fbgemm_fp16" and dev.type == "cpu")
    bandwidth = measure_bandwidth(dev)
    floor = weight_bytes / bandwidth
    # A merged lyrics sequence (single_enc_dec) sits before the n_ctx music tokens of every window.
    out = dict(hps=hps, device=str(dev), n_ctx=prior.n_ctx, prefix_tokens=model.input_dims - prior.n_ctx,
               threads=threads if dev.type == "cpu" else None, params=params, weight_bytes=weight_bytes,
               bandwidth=bandwidth, floor_s=floor, fp16=fp16,
               cpu_backend=cpu_backend, cuda_graph=cuda_graph, plain_step=plain_step)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    out["load_average"] = load
    if dev.type == "cpu":
        out["cpu"] = cpu = cpu_backends.cpu_info()
        log(f"{hps} on {cpu['model']} ({cpu['isa']}; torch kernels {cpu['torch_isa']}), {threads} threads of "
            f"{os.cpu_count()} cores, load average {load:.1f}, "
            f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}")
    elif dev.type == "cuda":
        out["gpu"] = gpu = torch.cuda.get_device_name(dev)
        out["cpu"] = cpu_backends.cpu_info()
        log(f"{hps} on {gpu} (torch {torch.__version__}, CUDA {torch.version.cuda}; host CPU {out['cpu']['model']}, "
            f"load average {load:.1f})")
    else:
        log(f"{hps} on {dev}")
    log(f"  {params / 1e6:.1f} M parameters; a step reads {weight_bytes / 1e6:.0f} MB of weights; "
        f"copy bandwidth {bandwidth / 1e9:.1f} GB/s -> floor {floor * 1e3:.1f} ms/step")

    def sample(n, prefix=None, sample_tokens=None, chunk=None, **forced):
        x_cond, y_cond, encoder_kv = _conds(model, n, dev, torch.float32, g)

        def run_sampler(sampler: TokenSampler):
            with torch.no_grad():
                if prefix is None:
                    return sampler.sample(n, x_cond, y_cond, encoder_kv, fp16=fp16, sample_tokens=sample_tokens)
                return sampler.primed_sample(n, prefix, x_cond, y_cond, encoder_kv, fp16=fp16, chunk_size=chunk,
                                             sample_tokens=sample_tokens)
        return _timed(model, dev, run_sampler, **{**options, **forced})

    # Ancestral sampling: the first run is the warm-up. Memory bandwidth drifts on shared machines, from one
    # second to the next on some virtual ones, so it is measured before and after every timed run: each run is
    # set against the floor of its own two measurements, and the batch's ratio is the median of those.
    for n in n_samples:
        runs, bandwidths = [], []
        for r in range(repeats + 1):
            timer, total = sample(n, sample_tokens=tokens + 2)
            bandwidths.append(measure_bandwidth(dev, repeats=3))
            if r:
                runs.append((timer.step_times(), n * (tokens + 2) / total))
        run_floors = [weight_bytes * 2 / (before + after) for before, after in zip(bandwidths, bandwidths[1:])]
        ratios = [statistics.median(times) / floor for (times, _), floor in zip(runs, run_floors)]
        steps = [t for times, _ in runs for t in times]
        rates = [rate for _, rate in runs]
        step, floor_n, ratio = statistics.median(steps), statistics.median(run_floors), statistics.median(ratios)
        plan = timer.sampler.plan
        out[f"ancestral_n{n}"] = res = dict(step_s=step, tokens_per_s=n / step, floor_s=floor_n, floor_ratio=ratio,
                                            floor_ratios=ratios, end_to_end_tokens_per_s=statistics.median(rates),
                                            kv_cache_bytes_per_sample=timer.cache_bytes / n,
                                            backend=plan.backend if plan is not None else "plain_step")
        log(f"  ancestral n_samples={n}: {step * 1e3:.1f} ms/step = {n / step:.1f} tokens/s ({ratio:.2f}x the "
            f"floor measured around each run, {floor_n * 1e3:.1f} ms; runs {min(ratios):.2f}-{max(ratios):.2f}x; "
            f"end to end {statistics.median(rates):.1f} tokens/s)")
        if plan is not None and plan.backend is not None:
            calibrated = None if cpu_backend else cpu_backends.calibration(plan.shape())
            res["calibration_ms"] = calibrated and calibrated["step_ms"]
            how = "forced" if cpu_backend else f"calibrated: {_ms_list(res['calibration_ms'] or {})}"
            if calibrated is not None:
                res["calibration_seconds"] = calibrated.get("seconds")
                layers = plan.shape()["layers"]
                counts = cpu_backends.trial_layer_counts(calibrated, layers)
                how += f"; per whole step, from trials over {' and '.join(map(str, counts))} of {layers} layers, " \
                       f"{calibrated.get('seconds')} s"
            log(f"    backend {plan.backend} ({how})")
            if backends and not cpu_backend:
                weights = model.transformer._attn_mods[0].attn.c_attn.w.dtype
                res["backends"] = _time_backends(sample, n, tokens, repeats, floor_n, weights, log)
    kv = out[f"ancestral_n{n_samples[0]}"]["kv_cache_bytes_per_sample"]
    out["kv_cache_bytes_per_sample"] = kv
    log(f"  key/value cache: {kv / 2 ** 20:.0f} MiB per sample (preallocated, its peak)")
    if dev.type == "cpu":
        out["huge_page_bytes"] = held = huge_pages.process_huge_bytes()
        out["transparent_hugepage"] = thp = huge_pages.setting()
        log(f"  2 MiB pages: {held / 1e6:.0f} MB of the process after the last run (the numba kernels' weights; "
            f"transparent_hugepage {thp})")

    # Priming, then new tokens.
    if prime_tokens:
        bf16 = cpu_backends.BACKENDS["onednn_bf16"]
        opt_in = bf16.name if dev.type == "cpu" and cpu_backend is None and bf16.missing() is None else None
        _time_priming(out, sample, model, dev, g, prime_samples, prime_tokens, chunk_size, new_tokens, repeats, log,
                      opt_in)

    # Deep in the context against near the start: each repeat primes `deep` tokens and steps `tokens`
    # times, then steps as many from the start right after, so both see the same machine load.
    if deep:
        deep = min(deep, model.input_dims - tokens - 2)
        prefix = torch.randint(model.bins, (1, deep), generator=g).to(dev)
        runs = dict(deep=functools.partial(_measured, sample, 1, prefix, deep + tokens + 2, deep_chunk),
                    start=functools.partial(_measured, sample, 1, sample_tokens=tokens + 2))
        timed = alternating(runs, max(repeats, 1), warm_up=False)
        deep_step, start_step = (statistics.median(_step_times(timed[name])) for name in runs)
        out["deep"] = dict(position=deep, step_s=deep_step, start_step_s=start_step, ratio=deep_step / start_step)
        log(f"  step after {deep} primed tokens (n_samples=1): {deep_step * 1e3:.1f} ms = "
            f"{deep_step / start_step:.2f}x the step near the start ({start_step * 1e3:.1f} ms, timed alternately)")
    return out


def alternating(runs: dict, repeats: int, warm_up: bool = True) -> dict:
    """``{name: [runs[name]() of each round]}`` over ``repeats`` rounds, each calling every run in turn (so that
    a drift of a shared machine falls on all of them alike), after an untimed round with ``warm_up``."""
    results: dict = {name: [] for name in runs}
    for r in range(repeats + warm_up):
        for name, run in runs.items():
            value = run()
            if r or not warm_up:
                results[name].append(value)
    return results


class Measured(NamedTuple):
    """What a timed ``sample`` run leaves: its step times, priming seconds (None: not primed), total seconds and
    the positions of its first priming chunk, which on CPU can exceed the chunk size asked (``CPU_CHUNK_ROWS``)
    (not its timer, which holds the sampler, its packed weights and its cache)."""

    steps: list[float]
    prime: float | None
    total: float
    chunk: int


def _measured(sample, *args, **kwargs) -> Measured:
    timer, total = sample(*args, **kwargs)
    return Measured(timer.step_times(), None if timer.primed is None else timer.prime_time(), total,
                    timer.calls[0][1])


def _step_times(runs: list[Measured]) -> list[float]:
    """The step times of ``runs``, together."""
    return [t for run in runs for t in run.steps]


def _ms_list(times: dict) -> str:
    return ", ".join(f"{name} {t:.1f} ms" for name, t in sorted(times.items(), key=lambda item: item[1]))


def _time_backends(sample, n: int, tokens: int, repeats: int, floor: float, weights: torch.dtype, log) -> dict:
    """Steps of every CPU backend that runs here, forced in turn: alternating rounds after a warm-up round,
    medians. Returns ``{name: seconds per step}``."""
    names = [name for name, b in cpu_backends.BACKENDS.items() if b.missing() is None]
    runs = {name: functools.partial(_measured, sample, n, sample_tokens=tokens + 2, cpu_backend=name)
            for name in names}
    medians = {name: statistics.median(_step_times(timed)) for name, timed in alternating(runs, repeats).items()}
    exact = {name: cpu_backends.BACKENDS[name].exact(weights) for name in names}
    log("    every backend: " + ", ".join(
        f"{name} {t * 1e3:.1f} ms ({t / floor:.2f}x{'' if exact[name] else ', not exact'})"
        for name, t in sorted(medians.items(), key=lambda item: item[1])))
    return medians


def _time_priming(out: dict, sample, model, dev: torch.device, g: torch.Generator, n: int, prime_tokens: int,
                  chunk_size: int, new_tokens: int, repeats: int, log, opt_in: str | None = None) -> None:
    """Priming ``prime_tokens`` known tokens in chunks, then ``new_tokens`` new ones (medians over repeats); with
    ``opt_in``, the name of an inexact CPU backend, priming through it too (alternating with the default)."""
    prefix = torch.randint(model.bins, (n, prime_tokens), generator=g).to(dev)
    names = [None] + ([opt_in] if opt_in else [])
    runs = {name: functools.partial(_measured, sample, n, prefix, prime_tokens + new_tokens, chunk_size,
                                    **({"cpu_backend": name} if name else {})) for name in names}
    for name, timed in alternating(runs, repeats).items():
        primes = [run.prime for run in timed]
        news = [run.total - run.prime for run in timed]
        prime_s, new_s = statistics.median(primes), statistics.median(news)
        chunk = timed[0].chunk
        res = dict(n_samples=n, tokens=prime_tokens, chunk_size=chunk_size, chunk_run=chunk, seconds=prime_s,
                   tokens_per_s=n * prime_tokens / prime_s, new_tokens=new_tokens,
                   new_tokens_per_s=n * new_tokens / new_s)
        out["priming" if name is None else f"priming_{name}"] = res
        asked = f" ({chunk_size} asked)" if chunk != chunk_size else ""
        what = f"  priming {prime_tokens} tokens x {n} in chunks of {chunk}{asked}" if name is None else \
            f"    the same with --cpu_backend={name} (an opt-in, not exact)"
        log(f"{what}: {prime_s:.2f} s = {n * prime_tokens / prime_s:.0f} tokens/s; then {new_tokens} new: "
            f"{n * new_tokens / new_s:.1f} tokens/s")


def project_song(seconds: float, levels: list[dict], n_ctx: list[int], hops: list[int],
                 hop_fraction: tuple[float, ...] = (0.5, 0.5, 0.125), sr: int = 44100) -> dict:
    """Seconds to sample ``seconds`` of music, level by level from the top, from measured rates.

    ``levels[k]``: the ``run`` results of level k's prior at the batch of one pass (its ancestral
    ``step_s`` and its priming rate); windows are those ``sample.py`` draws (``plan_level`` with
    ``hop_fraction``): a window primes the tokens it shares with earlier ones, then steps through the
    new ones (a merged lyrics prefix, ``prefix_tokens``, is primed in every window). Conditioning,
    the lyrics encoder and VQ-VAE decoding (once per window or level) are left out.
    """
    sample_length = int(seconds * sr) // hops[-1] * hops[-1]
    out = {}
    for k in reversed(range(len(levels))):
        res = levels[k]
        (step_key,) = [key for key in res if key.startswith("ancestral_n")]
        step_s, batch = res[step_key]["step_s"], int(step_key[len("ancestral_n"):])
        prime_s_per_token = res["priming"]["n_samples"] / res["priming"]["tokens_per_s"]
        total = sample_length // hops[k]
        windows = plan_level(total, n_ctx[k], int(hop_fraction[k] * n_ctx[k]), 0)
        have, primed, new = 0, 0, 0
        for start, sample_tokens in windows:
            prefix = max(0, min(have - start, sample_tokens))
            primed += prefix + res.get("prefix_tokens", 0)
            new += sample_tokens - prefix
            have = max(have, start + sample_tokens)
        out[k] = dict(tokens=total, windows=len(windows), primed=primed, new=new, batch=batch,
                      seconds=primed * prime_s_per_token + new * step_s)
    out["total_seconds"] = sum(v["seconds"] for v in out.values())
    return out


def main(argv: list[str] | None = None) -> dict:
    p = ArgumentParser(prog="python -m jukebox.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--hps", default=None, help=f"registry sets (default: {CPU_DEFAULT} on CPU; on CUDA both "
                   f"of {list(CUDA_DEFAULTS)} at the original's batch sizes)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=2, help="CPU threads (default 2)")
    p.add_argument("--n_samples", default=None, help="comma-separated batch sizes (CPU default 1,4)")
    p.add_argument("--tokens", type=int, default=48, help="timed steps per ancestral run")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--prime_tokens", type=int, default=1024)
    p.add_argument("--chunk_size", type=int, default=None, help="priming chunk (default 32)")
    p.add_argument("--new_tokens", type=int, default=64)
    p.add_argument("--prime_samples", type=int, default=None, help="batch of the priming runs (CPU default 1)")
    p.add_argument("--deep", type=int, default=6000, help="primed tokens before the deep step timing (0: skip)")
    p.add_argument("--deep_chunk", type=int, default=1000, help="chunk size of that priming")
    p.add_argument("--fp16", action="store_true", help="half-precision compute on CUDA (default there)")
    p.add_argument("--cpu_backend", default=None,
                   help=f"run CPU steps through one of {', '.join(cpu_backends.BACKENDS)} (default: calibrated; "
                   "fbgemm_fp16 reads float32 weights as float16: faster, not exact)")
    p.add_argument("--no_backends", action="store_true", help="skip timing every CPU backend in turn")
    p.add_argument("--no_cuda_graph", action="store_true",
                   help="on CUDA, launch every kernel of a step instead of replaying it as one CUDA graph")
    p.add_argument("--plain_step", action="store_true",
                   help="step through the plain module path instead of the StepPlan (for comparison)")
    p.add_argument("--song_seconds", type=float, default=20.0,
                   help="with the CUDA default sets: project the time to sample this much music with 1b_lyrics")
    a = p.parse_args(argv)
    cpu_backends.check_backend_name(a.cpu_backend)
    cuda = a.device.startswith("cuda")
    sets = [a.hps] if a.hps else (list(CUDA_DEFAULTS) if cuda else [CPU_DEFAULT])
    results = {}
    for hps in sets:
        batch, chunk = CUDA_DEFAULTS.get(hps, (None, 32))
        n_samples = tuple(int(v) for v in a.n_samples.split(",")) if a.n_samples else ((batch,) if batch else (1, 4))
        results[hps] = run(hps=hps, device=a.device, threads=a.threads, n_samples=n_samples, tokens=a.tokens,
                           repeats=a.repeats, prime_tokens=a.prime_tokens, chunk_size=a.chunk_size or chunk,
                           new_tokens=a.new_tokens, prime_samples=a.prime_samples or n_samples[0], deep=a.deep,
                           deep_chunk=a.deep_chunk, fp16=a.fp16 or cuda, cpu_backend=a.cpu_backend,
                           cuda_graph=cuda and not a.no_cuda_graph, plain_step=a.plain_step,
                           backends=not a.no_backends)
    if TOP_1B in results and UPSAMPLER in results and a.song_seconds and a.prime_tokens:
        # upsampler_level_1 has upsampler_level_0's architecture, so its steps cost the same.
        hps = setup_hparams(TOP_1B, {})
        hops = calculate_hop_lengths(hps.strides_t, hps.downs_t)
        n_ctx = [results[UPSAMPLER]["n_ctx"]] * 2 + [results[TOP_1B]["n_ctx"]]
        song = project_song(a.song_seconds, [results[UPSAMPLER]] * 2 + [results[TOP_1B]], n_ctx, hops, sr=hps.sr)
        results["song"] = song
        print_once(f"1b_lyrics, {a.song_seconds:g} s of music, {song[2]['batch']} samples per pass, the README's "
                   f"hop_fraction 0.5,0.5,0.125, projected from the step and priming rates above:")
        for k in (2, 1, 0):
            v = song[k]
            print_once(f"  level {k}: {v['tokens']} tokens in {v['windows']} windows ({v['primed']} primed, "
                       f"{v['new']} drawn): {v['seconds']:.0f} s")
        print_once(f"  total {song['total_seconds']:.0f} s = {song['total_seconds'] / 60:.1f} min "
                   f"(the original: about 3 hours on a V100)")
    return results


if __name__ == "__main__":
    run_cli(main)
