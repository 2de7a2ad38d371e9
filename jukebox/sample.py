"""Sample music from a Jukebox model (command line).

    python jukebox/sample.py --model=5b_lyrics --name=sample_5b --levels=3 --sample_length_in_seconds=20 \\
        --total_sample_length_in_seconds=180 --sr=44100 --n_samples=6 --hop_fraction=0.5,0.5,0.125

Modes: ``ancestral`` (default); ``continue`` and ``upsample`` from the ``data.pth.tar`` of an earlier run
(``--codes_file``); ``primed`` from audio files (``--audio_file=a.wav,b.flac --prompt_length_in_seconds=12``).
Conditioning: ``--artist``, ``--genre``, ``--lyrics`` or ``--lyrics_file``, or ``--metas=file.json`` (a list of
``{"artist", "genre", "lyrics"}``), tiled to ``n_samples``; without them a built-in set of examples is used.
``--sr`` defaults to the model's sample rate; another rate is refused.
``--model`` is a model name, a hub repository (``hf://openai/jukebox-1b-lyrics[@revision]``) or a local folder in
the transformers port's layout; ``--weights_source=openai|hf`` keeps one source of a released model's weights.
Sampling settings per level (bottom level first) can be overridden with ``--temp``, ``--fp16``,
``--max_batch_size``, ``--chunk_size``, ``--top_k``, ``--top_p``, each a scalar or a comma list.
``--cpu_backend=NAME`` runs CPU sampling steps and priming products through one backend of
``jukebox.inference.cpu_backends`` (``numba``, ``numba_blocks``, ``numba_blocks_256``, ``mkl``, ``onednn``,
``plain``; the opt-ins ``onednn_bf16`` and ``fbgemm_fp16`` round) instead of the one calibrated for the machine.

Outputs go to ``{name}/level_{k}/``: ``item_{i}.wav``, ``data.pth.tar`` (zs, labels, sampling_kwargs, x;
tensors and plain types only) and ``index.html`` with one page per item (lyric alignment for lyric models).
Under ``mpiexec -n R`` every rank samples its own ``n_samples`` into ``{name}_rank_{r}/`` with seed
``seed + r``; a ``{rank}`` in ``--codes_file`` is replaced by the rank.

Sampling is resumable: after every window the codes so far and the random state are saved to
``{name}/progress.pth.tar``; rerunning the same command after a crash or Ctrl-C continues from the last finished
window and gives the same codes as an uninterrupted run. The file is removed when sampling completes.

This module only turns the command line into arguments: the sampling run itself, for use from programs too, is
``jukebox.inference.session.SamplingSession``; the inputs are read and checked in ``jukebox.inference.inputs``.
"""
from __future__ import annotations

import errno
import os
import sys
from collections.abc import Sequence
from typing import Any

import fire
import torch

from jukebox.hparams import Hyperparams
from jukebox.inference.cpu_backends import check_backend_name
from jukebox.inference.inputs import (
    EXAMPLE_METAS,
    as_text,
    default_sampling_kwargs,
    load_codes,
    load_prompts,
    make_metas,
)
from jukebox.inference.session import SamplingOptions, SamplingSession, check_hop_fraction, check_mode
from jukebox.make_models import make_model, model_name, model_sample_rate
from jukebox.utils.cli import check_options, run_cli
from jukebox.utils.dist_utils import get_world_size, print_once, setup_dist_from_mpi
from jukebox.utils.sources import check_source

__all__ = ["run", "main", "EXAMPLE_METAS", "default_sampling_kwargs", "load_codes", "load_prompts", "make_metas"]


def _per_level(value: Any, levels: int, name: str, cast: type) -> list | None:
    """A command-line scalar or comma list as one value per level (bottom level first)."""
    if value is None:
        return None
    if isinstance(value, str):
        value = [v for v in value.split(",") if v.strip()]
    if not isinstance(value, (tuple, list)):
        value = [value] * levels
    if len(value) != levels:
        raise ValueError(f"--{name} needs one value or {levels} comma-separated values (one per level, bottom "
                         f"first), got {list(value)}")
    if cast is bool:
        return [v if isinstance(v, bool) else str(v).strip().lower() in ("1", "true", "yes") for v in value]
    return [cast(v) for v in value]


def _sampling_kwargs(model: str, levels: int, overrides: dict) -> list[dict]:
    """The original's per-level settings with the ``--temp``, ``--fp16``, ... given on the command line."""
    kwargs = default_sampling_kwargs(model, levels)
    casts = dict(temp=float, fp16=bool, max_batch_size=int, chunk_size=int, top_k=int, top_p=float)
    for key, value in overrides.items():
        values = _per_level(value, levels, key, casts[key])
        if values is not None:
            for level, v in enumerate(values):
                kwargs[level][key] = v
    return kwargs


def _check_sample_rate(model: str, sr: int | None) -> int:
    """The model's sample rate; a different ``--sr`` is refused (the wavs would play at the wrong speed and pitch)."""
    model_sr = model_sample_rate(model)
    if sr is not None and int(sr) != model_sr:
        raise ValueError(f"--sr={sr} but model {model!r} works at {model_sr} Hz; pass --sr={model_sr} or leave --sr "
                         "out (the model's rate is the default)")
    return model_sr


def _check_writable(logdir: str) -> None:
    """Fail before any work if the outputs (and the resume file) cannot be written to ``logdir``."""
    try:
        os.makedirs(logdir, exist_ok=True)
    except OSError as e:
        raise OSError(e.errno, f"cannot create the output folder {logdir!r}: {e.strerror}; pass another --name") from e
    if not os.access(logdir, os.W_OK | os.X_OK):
        raise PermissionError(errno.EACCES, f"the output folder {logdir!r} is not writable; pass another --name")


def run(model: str, name: str, levels: int = 3, sample_length_in_seconds: float = 24,
        total_sample_length_in_seconds: float = 240, sr: int | None = None, n_samples: int = 1,
        hop_fraction: Any = (0.5, 0.5, 0.125), mode: str = "ancestral", codes_file: str | None = None,
        audio_file: Any = None, prompt_length_in_seconds: float | None = None, port: int = 29500,
        seed: int | None = None, temp: Any = None, fp16: Any = None, max_batch_size: Any = None,
        chunk_size: Any = None, top_k: Any = None, top_p: Any = None, artist: Any = None, genre: Any = None,
        lyrics: Any = None, lyrics_file: str | None = None, metas: str | None = None,
        ids_dir: str | None = None, sample_length: int = 0, weights_source: str | None = None,
        cpu_backend: str | None = None) -> None:
    """Sample ``n_samples`` songs with ``model`` into ``name`` (see the module docstring for the options)."""
    check_mode(mode, codes_file, audio_file, prompt_length_in_seconds)
    check_source(weights_source)
    check_backend_name(cpu_backend)
    model_id, model = model, model_name(model)
    hop_fraction = _per_level(hop_fraction, levels, "hop_fraction", float)
    check_hop_fraction(hop_fraction)
    sr = _check_sample_rate(model, sr)
    rank, _, device = setup_dist_from_mpi(port=port)
    logdir = f"{name}_rank_{rank}" if get_world_size() > 1 else str(name)
    _check_writable(logdir)
    sampling_kwargs = _sampling_kwargs(model, levels, dict(temp=temp, fp16=fp16, max_batch_size=max_batch_size,
                                                           chunk_size=chunk_size, top_k=top_k, top_p=top_p))
    song_metas = make_metas(n_samples, int(total_sample_length_in_seconds * sr), artist, genre, lyrics, lyrics_file,
                            metas)
    hps = Hyperparams(name=logdir, levels=levels, sample_length_in_seconds=sample_length_in_seconds,
                      total_sample_length_in_seconds=total_sample_length_in_seconds, sr=sr, n_samples=n_samples,
                      hop_fraction=hop_fraction, sample_length=sample_length)
    with torch.no_grad():
        vqvae, priors = make_model(model_id, device, hps, weights_source=weights_source)
    if ids_dir is not None:
        for prior in priors:
            prior.ids_dir = ids_dir
    prompt_length = None
    if prompt_length_in_seconds is not None:
        top_hop = priors[-1].raw_to_tokens
        prompt_length = int(prompt_length_in_seconds * sr) // top_hop * top_hop
    options = SamplingOptions(
        model=model, n_samples=n_samples, sample_length=hps.sample_length, sr=sr, hop_fraction=hop_fraction,
        metas=song_metas, sampling_kwargs=sampling_kwargs, mode=mode, prompt_length=prompt_length,
        codes_file=None if codes_file is None else codes_file.replace("{rank}", str(rank)),
        audio_files=as_text(audio_file).split(",") if audio_file else None, cpu_backend=cpu_backend)
    session = SamplingSession(vqvae, priors, options, logdir, device, rank=rank)
    try:
        session.run(seed)
    except KeyboardInterrupt:
        print_once(f"\nInterrupted. Rerun the same command to continue from the last finished window "
                   f"(saved in {session.progress.path}).")
        raise
    print_once(f"Done: samples are in {logdir}/level_*/ (to view index.html, serve them with "
               "`python -m http.server --bind 127.0.0.1`)")


def main(argv: Sequence[str] | None = None) -> None:
    """The command line: ``run`` through fire; unknown ``--options`` are refused before any work starts."""
    argv = sys.argv[1:] if argv is None else list(argv)
    check_options(run, argv, "python jukebox/sample.py")
    fire.Fire(run, command=argv)


if __name__ == "__main__":
    run_cli(main)
