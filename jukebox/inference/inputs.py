"""The inputs of a sampling run, read and checked: labels (metas), codes of an earlier run, audio prompts, and the
original's per-level sampling settings.

Every check here raises an exception whose message says what to pass instead; the messages name the options of
``jukebox/sample.py``, the command line most of these inputs come from.
"""
from __future__ import annotations

import json
import os
from collections.abc import Sequence
from importlib import resources
from typing import Any

import torch

from jukebox.utils.checkpoint import load_checkpoint
from jukebox.utils.dist_utils import print_once
from jukebox.utils.io import audio_info, load_audio

__all__ = ["EXAMPLE_METAS", "load_example_metas", "as_text", "default_sampling_kwargs", "make_metas", "load_codes",
           "load_prompts"]

META_FIELDS = ("artist", "genre", "lyrics")


def load_example_metas() -> list[dict]:
    """The built-in example labels, ``jukebox/data/example_metas.json``: four ``{artist, genre, lyrics}`` entries
    whose lyrics are public-domain poems (Shelley 1818, Dickinson 1891, Blake 1794, Wordsworth 1807). The file has
    the format of ``--metas``, so it doubles as a template for one."""
    text = resources.files("jukebox.data").joinpath("example_metas.json").read_text(encoding="utf-8")
    return json.loads(text)


EXAMPLE_METAS = load_example_metas()


def as_text(value: Any) -> str:
    """A label value as text: a list or tuple joined by commas, None as "" (fire turns ``a,b`` into a tuple and
    ``1999`` into an int; JSON files may hold numbers)."""
    if isinstance(value, (tuple, list)):
        return ",".join(str(v) for v in value)
    return "" if value is None else str(value)


def default_sampling_kwargs(model: str, levels: int) -> list[dict]:
    """The original's settings: upsamplers temp 0.99, chunks of 32, 16 samples per pass; the top level chunks of
    16 and 3 samples per pass (1b_lyrics: 32 and 16); fp16 everywhere."""
    top_chunk, top_batch = (32, 16) if model == "1b_lyrics" else (16, 3)
    lower = [dict(temp=0.99, fp16=True, chunk_size=32, max_batch_size=16) for _ in range(levels - 1)]
    return lower + [dict(temp=0.99, fp16=True, chunk_size=top_chunk, max_batch_size=top_batch)]


def _read_metas_file(metas: str) -> list[dict]:
    with open(metas, encoding="utf-8") as f:
        base = json.load(f)
    if isinstance(base, dict):
        base = [base]
    if not isinstance(base, list) or not base or not all(isinstance(m, dict) for m in base):
        raise ValueError(f"{metas} must hold a non-empty JSON list of "
                         '{"artist", "genre", "lyrics"} objects')
    for i, m in enumerate(base):
        unknown = set(m) - set(META_FIELDS)
        if unknown:
            raise ValueError(f"{metas}: entry {i} has unknown fields {sorted(unknown)}; use artist, genre, lyrics")
    return base


def make_metas(n_samples: int, total_length: int, artist: Any = None, genre: Any = None, lyrics: Any = None,
               lyrics_file: str | None = None, metas: str | None = None) -> list[dict]:
    """n_samples label dicts {artist, genre, lyrics, total_length, offset} from the command-line options.

    The labels come from one of: ``metas`` (a JSON file of ``{artist, genre, lyrics}`` objects), the given
    ``artist``/``genre``/``lyrics`` (or ``lyrics_file``), or ``EXAMPLE_METAS``; they are tiled to n_samples.
    ``total_length`` is the song's length in audio samples.
    """
    if lyrics is not None and lyrics_file is not None:
        raise ValueError("pass either --lyrics or --lyrics_file, not both")
    if lyrics_file is not None:
        with open(lyrics_file, encoding="utf-8") as f:
            lyrics = f.read()
    given = artist is not None or genre is not None or lyrics is not None
    if metas is not None:
        if given:
            raise ValueError("pass either --metas=file.json or --artist/--genre/--lyrics, not both")
        base = _read_metas_file(metas)
    elif given:
        base = [dict(artist=artist, genre=genre, lyrics=lyrics)]
    else:
        base = EXAMPLE_METAS
    tiled = [base[i % len(base)] for i in range(n_samples)]
    return [dict(artist=as_text(m.get("artist")) or "unknown", genre=as_text(m.get("genre")) or "unknown",
                 lyrics=as_text(m.get("lyrics")), total_length=int(total_length), offset=0) for m in tiled]


def load_codes(codes_file: str, n_samples: int, levels: int, cut_length: int | None, priors: Sequence[Any],
               device: torch.device) -> list[torch.Tensor]:
    """The zs (N, T_l) of an earlier run's data.pth.tar, cut to ``cut_length`` audio samples if given.

    The codes must have ``levels`` levels, ``n_samples`` items and lie in each prior's codebook (``l_bins``).
    """
    if not os.path.isfile(codes_file):
        raise FileNotFoundError(f"--codes_file {codes_file!r} does not exist; pass the level_k/data.pth.tar of an "
                                "earlier run")
    data = load_checkpoint(codes_file)  # tensors and plain containers only: never runs code from the file
    zs = data.get("zs") if isinstance(data, dict) else None
    if not isinstance(zs, (list, tuple)) or len(zs) != levels:
        raise ValueError(f"{codes_file} has no codes of {levels} levels (expected the data.pth.tar of a sampling run)")
    if zs[-1].shape[0] != n_samples:
        raise ValueError(f"{codes_file} holds {zs[-1].shape[0]} samples but --n_samples={n_samples}; pass "
                         f"--n_samples={zs[-1].shape[0]}")
    for level, (z, prior) in enumerate(zip(zs, priors)):
        if not isinstance(z, torch.Tensor) or z.dim() != 2 or z.shape[0] != n_samples or z.is_floating_point():
            shape = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
            raise ValueError(f"{codes_file}: the level-{level} codes must be integers of shape ({n_samples}, T), got "
                             f"{shape}")
        if z.numel() and not 0 <= int(z.min()) <= int(z.max()) < prior.l_bins:
            raise ValueError(f"{codes_file}: the level-{level} codes lie outside [0, {prior.l_bins}), the codebook "
                             "of this model; were they sampled with another model?")
    if cut_length is not None:
        top_tokens = cut_length // priors[-1].raw_to_tokens
        if top_tokens > zs[-1].shape[1]:
            raise ValueError(f"--prompt_length_in_seconds asks for {top_tokens} top-level tokens but {codes_file} "
                             f"has only {zs[-1].shape[1]}")
        zs = [z[:, :cut_length // prior.raw_to_tokens] for z, prior in zip(zs, priors)]
    return [z.long().to(device) for z in zs]


def load_prompts(audio_files: Sequence[str], duration: int, n_samples: int, sr: int, top_hop: int) -> torch.Tensor:
    """Mono prompts ``(n_samples, T, 1)``: the first ``duration`` samples of each file (any readable format),
    tiled to n_samples; T is cut to the shortest file and to a multiple of ``top_hop``."""
    infos = [audio_info(f) for f in audio_files]
    lengths = [int(info.frames * sr / info.sr) for info in infos]
    shortest = audio_files[lengths.index(min(lengths))]
    length = min(duration, min(lengths)) // top_hop * top_hop
    if length <= 0:
        raise ValueError(f"prompt file {shortest!r} is shorter than one top-level token ({top_hop} samples at "
                         f"{sr} Hz)")
    if length < duration:
        print_once(f"Prompts shortened to {length / sr:.2f} s, the length of the shortest file ({shortest}), "
                   f"instead of the {duration / sr:.2f} s asked for")
    xs = [torch.from_numpy(load_audio(f, sr=sr, offset=0, duration=length, channels=1)).T for f in audio_files]
    silent = [f for f, x in zip(audio_files, xs) if not bool(x.abs().max() > 0)]
    if silent:
        raise ValueError(f"the first {length / sr:.2f} s of prompt file(s) {', '.join(map(repr, silent))} are "
                         "silent; prime with audio that has sound in it (or use --mode=ancestral)")
    return torch.stack([xs[i % len(xs)] for i in range(n_samples)])
