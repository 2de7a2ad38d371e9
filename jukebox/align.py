"""Lyric-to-music alignment read from the attention of a lyrics-conditioned top-level prior.

One layer/head of such a prior (``alignment_layer``/``alignment_head`` in its hps) attends from each music token
to the lyric characters being sung. ``get_alignment`` slides the prior's context over the top-level codes,
records that head's attention (music queries x lyric keys) in every window and pastes the windows into one
(tokens, characters) matrix per item, placing each window's lyric keys at their positions in the full lyrics.

Command line, to (re)compute the alignment of a finished sampling run::

    python jukebox/align.py --model=5b_lyrics --logdir=sample_5b --levels=3 --hop_fraction=0.5,0.5,0.125
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from jukebox.inference.schedule import get_starts

__all__ = ["get_alignment", "can_align"]


def can_align(prior: Any) -> bool:
    """Whether ``prior`` has lyrics and a designated alignment layer/head."""
    from jukebox.data.labels import EmptyLabeller

    return (getattr(prior, "n_tokens", 0) > 0 and not isinstance(getattr(prior, "labeller", None), EmptyLabeller)
            and getattr(prior, "alignment_layer", None) is not None
            and getattr(prior, "alignment_head", None) is not None)


def _window_attention(prior: Any, z: torch.Tensor, y: torch.Tensor, fp16: bool) -> torch.Tensor:
    """Attention (n_ctx, n_tokens) of the alignment head for one item's window z (1, n_ctx) and label y (1, L)."""
    weights = prior.attention_weights(z, [], y, {prior.alignment_layer}, fp16=fp16)
    if len(weights) != 1:
        raise RuntimeError(f"expected the attention of one layer, got {len(weights)}")
    return weights[0][0, prior.alignment_head]


@torch.no_grad()
def get_alignment(x: torch.Tensor | None, zs: Sequence[torch.Tensor], labels: dict, prior: Any, level: int,
                  fp16: bool, hps: Any) -> list[np.ndarray]:
    """Alignment of every item: float64 arrays (T_top, len(full_tokens)), T_top = zs[level].shape[1].

    zs[level]: top-level codes (N, T_top); labels: the top prior's {'y': (N, L), 'info': [...]} with the full
    lyric tokens of each item in info[i]['full_tokens']; hps.hop_fraction[level] sets the window hop. A song
    shorter than the context is zero-padded to one window and the padding is cut off again. Earlier windows take
    precedence where windows overlap. ``x`` (the audio) is not needed and only kept for the original's
    signature.
    """
    n_ctx, n_tokens = prior.n_ctx, prior.n_tokens
    z = zs[level]
    bs, length = z.shape
    padding = max(0, n_ctx - length)
    if padding:
        z = torch.cat([z, torch.zeros(bs, padding, dtype=z.dtype, device=z.device)], dim=1)
    total_length = z.shape[1]
    hop_length = int(hps.hop_fraction[level] * n_ctx)
    starts = get_starts(total_length, n_ctx, hop_length)

    hops: dict[int, tuple[np.ndarray, list[list[int]]]] = {}
    for start in starts:
        y, indices = prior.get_y_and_indices(labels, start)
        if len(indices) != bs or any(len(ix) != n_tokens for ix in indices):
            raise RuntimeError(f"expected {bs} lyric windows of {n_tokens} indices from get_y")
        attn = [_window_attention(prior, z[i:i + 1, start:start + n_ctx], y[i:i + 1], fp16) for i in range(bs)]
        w = torch.stack(attn).float().cpu().numpy()
        if w.shape != (bs, n_ctx, n_tokens):
            raise RuntimeError(f"alignment attention has shape {w.shape}, expected {(bs, n_ctx, n_tokens)}")
        hops[start] = (w, indices)

    alignments = []
    for item in range(bs):
        # one extra column receives the padding index -1 and is dropped at the end
        alignment = np.zeros((total_length, len(labels["info"][item]["full_tokens"]) + 1))
        for start in reversed(starts):
            w, indices = hops[start]
            alignment[start:start + n_ctx, indices[item]] = w[item]
        alignments.append(alignment[:total_length - padding, :-1])
    return alignments


def run(model: str, logdir: str, levels: int = 3, hop_fraction: Sequence[float] = (0.5, 0.5, 0.125),
        fp16: bool = False, port: int = 29500, **kwargs: Any) -> None:
    """Recompute the alignment of ``{logdir}/level_0`` and rewrite its html (and ``data_align.pth.tar``)."""
    from jukebox.hparams import Hyperparams
    from jukebox.make_models import make_model
    from jukebox.save_html import save_html
    from jukebox.utils.checkpoint import load_checkpoint, save_checkpoint
    from jukebox.utils.dist_utils import setup_dist_from_mpi

    _, _, device = setup_dist_from_mpi(port=port)
    hps = Hyperparams(levels=levels, hop_fraction=hop_fraction, **kwargs)
    level_dir = os.path.join(logdir, "level_0")
    data = load_checkpoint(os.path.join(level_dir, "data.pth.tar"))
    hps.sample_length = int(data["x"].shape[1])
    _, priors = make_model(model, device, hps, levels=[levels - 1])
    top = priors[-1]
    with torch.no_grad():
        module = top.load(device)
        module.labeller = top.labeller  # made from the id tables on first use
        if not can_align(module):
            raise ValueError(f"model {model!r} has no lyrics or no alignment_layer/alignment_head in its hps")
        alignments = get_alignment(data["x"], data["zs"], data["labels"][-1], module, levels - 1, fp16, hps)
    data["alignments"] = [torch.from_numpy(a) for a in alignments]
    save_checkpoint(os.path.join(level_dir, "data_align.pth.tar"), data)
    save_html(level_dir, data["x"], data["zs"], data["labels"][-1], alignments, hps)


if __name__ == "__main__":
    from jukebox.utils.cli import fire_command

    fire_command(run, prog="python jukebox/align.py")
