"""Speed of ``jukebox.embed``: seconds of audio embedded per second, and on CPU the fraction of the machine's
matrix-multiply throughput the prior's forward reaches.

    python benchmarks/embed.py                                   # the bundled demo model, its deepest layer
    python benchmarks/embed.py --model=5b --layers=36 --random --windows=2   # 5b-shaped prior, random weights

``--random`` builds the top prior's architecture with random weights (no download), in the storage dtypes of its
checkpoint (``fp16_params``), and id tables holding only ``unknown``. Each run: one forward as a warm-up unless
``--no_warmup``, then ``--windows`` windows in batches of ``--batch_size``, timed as VQ-VAE encoding and prior
forward. The forward's floating-point operations are counted by ``torch.utils.flop_counter`` during the timed runs;
the machine's throughput is the median of large ``torch.mm`` products in the compute dtype on the same threads,
measured before and after the timed runs (on a shared machine it drifts; both are printed, their mean is used).
Memory: the weights' bytes from the parameters, and the process's peak resident set (CPU) or the peak allocated
device memory (CUDA).
"""
from __future__ import annotations

import argparse
import resource
import statistics
import tempfile
import time

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from jukebox.data.artist_genre_processor import write_id_tables
from jukebox.embed import Embedder, EmbeddingModel, load_embedding_model, prior_depth
from jukebox.hparams import Hyperparams, setup_hparams
from jukebox.make_models import make_labeller, make_prior, make_vqvae, model_sets
from jukebox.utils.torch_utils import synchronize
from jukebox.vqvae.vqvae import calculate_hop_lengths


def gemm_flops(device: torch.device, dtype: torch.dtype, n: int = 4096, repeats: int = 5) -> float:
    """The median FLOP/s of ``(n, n) @ (n, n)`` products in ``dtype``."""
    a, b = torch.randn(n, n, device=device).to(dtype), torch.randn(n, n, device=device).to(dtype)
    a @ b
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        a @ b
        synchronize(device)
        times.append(time.perf_counter() - start)
    return 2 * n ** 3 / statistics.median(times)


def random_model(model: str, depth: int, device: torch.device) -> EmbeddingModel:
    """``MODELS[model]``'s VQ-VAE and top prior (first ``depth`` blocks) with random weights, stored as its
    checkpoint stores them, made without a float32 copy of the whole prior."""
    vqvae_name, *prior_names = model_sets(model)
    prior_hps = setup_hparams(prior_names[-1], dict(prior_depth=depth, restore_prior=""))
    vq_hps = setup_hparams(vqvae_name, dict(restore_vqvae=""))
    vq_hps.sample_length = prior_hps.n_ctx * calculate_hop_lengths(vq_hps.strides_t, vq_hps.downs_t)[-1]
    vqvae = make_vqvae(vq_hps, device)
    prior = make_prior(Hyperparams(prior_hps), vqvae, "meta", encode_only=True,
                       full_depth=prior_depth(model)).to_empty(device=device)
    g = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for name, param in prior.named_parameters():
            if name.endswith(("ln_0.weight", "ln_1.weight", "ln.weight")):
                param.fill_(1.0)
            else:
                param.normal_(0.0, 0.02, generator=g)
    if prior.y_cond:
        ids = tempfile.mkdtemp(prefix="embed_bench_ids_")
        write_id_tables([dict(artist="unknown", genre="unknown")], ids, v3=bool(prior.labels_v3))
        prior.labeller = make_labeller(prior, ids)
    return EmbeddingModel(model, vqvae, prior, int(vq_hps.sr))


def run(model: str, layers: list[int], random: bool, windows: int, batch_size: int, device: torch.device,
        bf16: bool, threads: int, warmup: bool) -> dict:
    torch.set_num_threads(threads)
    depth = max(layers)
    built = random_model(model, depth, device) if random else load_embedding_model(model, depth, device)
    embedder = Embedder(built, layers, batch_size=batch_size, bf16=bf16)
    prior = built.prior
    weights = sum(t.numel() * t.element_size() for t in prior.state_dict().values())
    params = sum(t.numel() for t in prior.parameters())
    compute = torch.bfloat16 if bf16 else torch.float16 if embedder.fp16 else torch.float32
    print(f"{model}: top prior with {depth} of {prior_depth(model)} blocks, {'random' if random else 'released'} "
          f"weights: {params / 1e9:.3f} G parameters, {weights / 2 ** 30:.2f} GiB; n_ctx {embedder.n_ctx}, width "
          f"{embedder.width}; {compute} on {device} ({threads} threads); layers {layers}; batch {batch_size}")
    before = gemm_flops(device, compute)
    rng = np.random.default_rng(0)
    audio = rng.standard_normal((batch_size, embedder.chunk_samples)).astype(np.float32) * 0.1
    audio = torch.from_numpy(audio).to(device)
    if warmup:
        embedder.layer_frames(embedder.codes(audio))
    encode_s = forward_s = 0.0
    flops = 0
    batches = max(1, windows // batch_size)
    for i in range(batches):
        synchronize(device)
        start = time.perf_counter()
        z = embedder.codes(audio)
        synchronize(device)
        middle = time.perf_counter()
        with FlopCounterMode(display=False) as counter:
            embedder.layer_frames(z)
        synchronize(device)
        encode_s += middle - start
        forward_s += time.perf_counter() - middle
        flops += counter.get_total_flops()
        print(f"  batch {i + 1}/{batches}: {time.perf_counter() - start:.1f} s", flush=True)
    after = gemm_flops(device, compute)
    peak = (before + after) / 2  # the machine may be shared: its throughput around the timed runs
    print(f"machine: {peak / 1e9:.0f} GFLOP/s ({compute} torch.mm 4096^3, medians {before / 1e9:.0f} before and "
          f"{after / 1e9:.0f} after the timed runs)")
    done = batches * batch_size
    audio_s = done * embedder.n_ctx / embedder.token_rate
    achieved = flops / forward_s
    host_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
    device_peak = torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == "cuda" else None
    print(f"{done} windows ({audio_s:.1f} s of audio): VQ-VAE encoding {encode_s:.2f} s, prior forward "
          f"{forward_s:.2f} s -> {audio_s / (encode_s + forward_s):.3f} s of audio per second")
    print(f"forward: {flops / done / 1e12:.3f} TFLOP per window, {achieved / 1e9:.0f} GFLOP/s = "
          f"{achieved / peak:.0%} of the machine's {compute} matrix-multiply throughput")
    print(f"peak memory: host {host_peak:.2f} GiB (resident)"
          + (f", device {device_peak:.2f} GiB (allocated)" if device_peak is not None else ""))
    return dict(audio_seconds_per_second=audio_s / (encode_s + forward_s), flops_per_window=flops / done,
                fraction_of_gemm=achieved / peak, host_peak_gib=host_peak, device_peak_gib=device_peak)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python benchmarks/embed.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="demo", help="a MODELS entry (default demo)")
    p.add_argument("--layers", default=None, help="comma-separated blocks (default: the prior's deepest)")
    p.add_argument("--random", action="store_true", help="random weights of the model's architecture (no download)")
    p.add_argument("--windows", type=int, default=4, help="windows timed")
    p.add_argument("--batch_size", type=int, default=1)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--bf16", action="store_true", help="bfloat16 matrix products (autocast)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads (default 2)")
    p.add_argument("--no_warmup", action="store_true", help="time the first forward too (big models on CPU)")
    a = p.parse_args(argv)
    layers = [int(v) for v in a.layers.split(",")] if a.layers else [prior_depth(a.model)]
    return run(a.model, layers, a.random, a.windows, a.batch_size, torch.device(a.device), a.bf16, a.threads,
               not a.no_warmup)


if __name__ == "__main__":
    main()
