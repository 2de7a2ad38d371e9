"""``Embedder``: audio -> the top-level prior's activations after chosen layers (JukeMIR representations).

The representation of layer L is what the prior's autoregressive transformer gives when it only encodes the codes:
its output after block L, plus the conditioning ``x_cond`` where the model adds it after the transformer
(``add_cond_after_transformer``: the tied-decoder models; the 5b models' merged decoder does not), ``(n_ctx, width)``
per window. Every requested layer comes from one forward through the deepest one (forward hooks on the blocks).
"""
from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from jukebox.embed.model import EmbeddingModel, load_embedding_model
from jukebox.embed.recipe import (
    JUKEMIR,
    WINDOWS,
    Recipe,
    Window,
    prepare_audio,
    read_clip,
    recipe_labels,
    split_windows,
)

__all__ = ["Embedder", "Embedding", "POOLS", "parse_layers", "pool_frames", "resample_frames"]

POOLS = ("mean", "max", "none")


@dataclass
class Embedding:
    """One clip's features: ``(n_layers, width)`` pooled, or ``(n_layers, frames, width)`` with ``pool='none'``;
    ``valid_frames``: the frames of each window that cover the clip (the rest is padding, never pooled)."""

    features: np.ndarray
    valid_frames: list[int]

    @property
    def windows(self) -> int:
        return len(self.valid_frames)


def parse_layers(layers: int | str | Sequence[int]) -> list[int]:
    """``36``, ``"12,24,36"`` or ``(12, 24, 36)`` -> ``[12, 24, 36]`` (order kept, duplicates refused)."""
    if isinstance(layers, str):
        layers = [v for v in layers.split(",") if v.strip()]
    elif isinstance(layers, int):
        layers = [layers]
    try:
        out = [int(v) for v in layers]
    except (TypeError, ValueError):
        raise ValueError(f"--layers takes block numbers such as 36 or 12,24,36, got {layers!r}") from None
    if not out or len(set(out)) != len(out):
        raise ValueError(f"--layers takes distinct block numbers such as 36 or 12,24,36, got {layers!r}")
    return out


def pool_frames(frames: torch.Tensor, valid: int, pool: str) -> torch.Tensor:
    """Frames ``(T, W)`` -> the mean or max over the first ``valid`` ``(W,)``, or those frames ``(valid, W)``."""
    frames = frames[:valid]
    if pool == "mean":
        return frames.mean(dim=0)
    if pool == "max":
        return frames.amax(dim=0)
    return frames


def resample_frames(frames: torch.Tensor, rate: float, target_rate: float) -> torch.Tensor:
    """Frames ``(T, W)`` at ``rate`` Hz -> ``(round(T * target_rate / rate), W)`` (at least one): each output
    frame is the mean of the input frames over its span (frames are repeated when ``target_rate`` is higher)."""
    n_out = max(1, round(frames.shape[0] * target_rate / rate))
    return F.adaptive_avg_pool1d(frames.T.unsqueeze(0), n_out)[0].T


class Embedder:
    """``Embedder(model, layers)(audio)``: the representation of a clip (see the module docstring).

    model: a ``MODELS`` name, ``hf://...`` or port folder (its top-level prior is built with only its first
    ``max(layers)`` blocks) or an ``EmbeddingModel`` already built.
    layers: blocks (1-based) whose output is wanted, one forward for all.
    pool: 'mean', 'max' or 'none' (frame-wise; ``frame_rate`` resamples the frames to that rate in Hz).
    windows: 'first' (JukeMIR) or 'all' (non-overlapping windows; pooled vectors are averaged weighted by their
    valid frames, frame-wise outputs are concatenated). batch_size: windows per forward. device: where a model given
    by name is built (default CUDA when available); an ``EmbeddingModel`` stays where it is. Precision: float16 on
    CUDA, float32 on CPU; ``bf16=True`` computes the matrix products in bfloat16 instead (autocast). ids_dir: the
    artist/genre tables of a labelled model given by name; weights_source: ``openai`` or ``hf`` forces where its weights
    come from (``make_model``). recipe: the audio and conditioning choices.
    """

    def __init__(self, model: str | EmbeddingModel = "5b", layers: int | str | Sequence[int] = 36, *,
                 pool: str = "mean", windows: str = "first", frame_rate: float | None = None, batch_size: int = 1,
                 device: str | torch.device | None = None, bf16: bool = False, ids_dir: str | None = None,
                 weights_source: str | None = None, recipe: Recipe = JUKEMIR) -> None:
        self.layers = parse_layers(layers)
        if pool not in POOLS:
            raise ValueError(f"--pool must be one of {', '.join(POOLS)}, got {pool!r}")
        if windows not in WINDOWS:
            raise ValueError(f"--windows must be one of {', '.join(WINDOWS)}, got {windows!r}")
        if frame_rate is not None and (pool != "none" or float(frame_rate) <= 0):
            raise ValueError("--frame_rate takes a positive rate in Hz, and only with --pool=none")
        if int(batch_size) < 1:
            raise ValueError(f"--batch_size must be at least 1, got {batch_size}")
        self.pool, self.windows, self.batch_size, self.recipe = pool, windows, int(batch_size), recipe
        self.frame_rate = None if frame_rate is None else float(frame_rate)
        if isinstance(model, EmbeddingModel):
            self.model = model
        else:
            device = torch.device(device if device is not None else "cuda" if torch.cuda.is_available() else "cpu")
            self.model = load_embedding_model(model, max(self.layers), device, ids_dir, weights_source)
        if max(self.layers) > self.model.depth or min(self.layers) < 1:
            raise ValueError(f"layers must lie in 1..{self.model.depth}, got {self.layers}")
        prior = self.model.prior
        self.device = prior.prior.x_emb.weight.device
        self.fp16 = self.device.type == "cuda" and not bf16
        self.bf16 = bool(bf16)
        self.precision = "bfloat16" if bf16 else "float16" if self.fp16 else "float32"
        self.n_ctx, self.hop = prior.n_ctx, prior.raw_to_tokens
        self.token_rate = self.model.sr / self.hop
        # Audio encoded per window: the window and the recipe's lookahead after it.
        self.chunk_samples = self.n_ctx * self.hop + round(recipe.lookahead_seconds * self.model.sr)
        with torch.no_grad():
            self.y = recipe_labels(prior, recipe, self.model.sr, self.device)

    @property
    def width(self) -> int:
        return self.model.prior.prior.width

    def settings(self) -> dict[str, Any]:
        """What decides the numbers (the manifest's header)."""
        return dict(model=self.model.name, layers=self.layers, pool=self.pool, windows=self.windows,
                    frame_rate=self.frame_rate, recipe=self.recipe.as_dict(), sr=self.model.sr, n_ctx=self.n_ctx,
                    width=self.width, token_rate=self.token_rate)

    # -------------------------------------------------------------------------------------------------- forward
    def codes(self, audio: torch.Tensor) -> torch.Tensor:
        """Audio chunks ``(N, chunk_samples)`` -> the first ``n_ctx`` top-level codes ``(N, n_ctx)``."""
        top = self.model.vqvae.levels - 1
        with torch.no_grad():
            z = self.model.vqvae.encode(audio.unsqueeze(-1), start_level=top, end_level=top + 1)[0]
        if z.shape[1] < self.n_ctx:
            raise ValueError(f"{audio.shape[1]} samples give {z.shape[1]} codes, fewer than n_ctx={self.n_ctx}")
        return z[:, :self.n_ctx]

    def layer_frames(self, z: torch.Tensor) -> dict[int, torch.Tensor]:
        """Top-level codes ``(N, n_ctx)`` -> ``{layer: (N, n_ctx, width)}`` float32, one forward through the
        prior up to the deepest layer."""
        prior = self.model.prior
        ar = prior.prior
        y = None if self.y is None else self.y.expand(z.shape[0], -1)
        outputs: dict[int, torch.Tensor] = {}
        blocks = ar.transformer._attn_mods
        hooks = [blocks[layer - 1].register_forward_hook(
            lambda _module, _args, out, layer=layer: outputs.__setitem__(layer, out)) for layer in self.layers]
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16) if self.bf16 else contextlib.nullcontext()
        try:
            with torch.no_grad(), autocast:
                tokens, x_cond, y_cond, encoder_kv, _ = prior.transformer_inputs(z, None, y, fp16=self.fp16)
                ar.activations(tokens, x_cond, y_cond, encoder_kv, fp16=self.fp16)
        finally:
            for hook in hooks:
                hook.remove()
        skip = prior.n_tokens if prior.single_enc_dec else 0  # lyric tokens (empty: padding) before the music
        return {layer: ar.add_output_cond(outputs[layer].float(), x_cond)[:, skip:] for layer in self.layers}

    # ------------------------------------------------------------------------------------------------- clips
    def split(self, audio: np.ndarray) -> list[Window]:
        """Prepared audio ``(T,)`` -> its windows under this embedder's ``windows`` setting."""
        return self.splitter()(audio)

    def splitter(self) -> Callable[[np.ndarray], list[Window]]:
        """``split`` as a function that holds only the window settings, not the models (data-loader workers
        get a pickled copy of it)."""
        return functools.partial(split_windows, n_ctx=self.n_ctx, hop=self.hop, chunk_samples=self.chunk_samples,
                                 windows=self.windows)

    def embed_windows(self, clips: Iterable[tuple[Any, list[Window]]]) -> Iterator[tuple[Any, Embedding]]:
        """``(key, windows)`` pairs -> ``(key, Embedding)`` in the same order, ``batch_size`` windows per forward
        (windows of several clips share a batch)."""
        done: dict[Any, list] = {}
        batch: list[tuple[Any, int, Window]] = []
        order: list[Any] = []
        for key, windows in clips:
            if not windows:
                raise ValueError(f"clip {key!r} has no windows")
            order.append(key)
            done[key] = [None] * len(windows)
            for i, window in enumerate(windows):
                batch.append((key, i, window))
                if len(batch) == self.batch_size:
                    self._run(batch, done)
                    batch = []
                    yield from self._finished(order, done)
        if batch:
            self._run(batch, done)
        yield from self._finished(order, done)

    def _run(self, batch: list[tuple[Any, int, Window]], done: dict[Any, list]) -> None:
        audio = torch.from_numpy(np.stack([w.audio for _, _, w in batch])).to(self.device)
        frames = self.layer_frames(self.codes(audio))
        for j, (key, i, window) in enumerate(batch):
            pooled = [pool_frames(frames[layer][j], window.valid_frames, self.pool).cpu() for layer in self.layers]
            done[key][i] = (pooled, window.valid_frames)

    def _finished(self, order: list[Any], done: dict[Any, list]) -> Iterator[tuple[Any, Embedding]]:
        while order and all(r is not None for r in done[order[0]]):
            key = order.pop(0)
            yield key, self._combine(done.pop(key))

    def _combine(self, results: list[tuple[list[torch.Tensor], int]]) -> Embedding:
        valid = [v for _, v in results]
        per_layer = []
        for k in range(len(self.layers)):
            parts = [r[k] for r, _ in results]
            if self.pool == "none":
                feats = torch.cat(parts, dim=0)
                if self.frame_rate is not None:
                    feats = resample_frames(feats, self.token_rate, self.frame_rate)
            else:
                weights = torch.tensor(valid, dtype=torch.float64) / sum(valid)
                feats = sum(w * p.double() for w, p in zip(weights.tolist(), parts)).float()
            per_layer.append(feats)
        return Embedding(torch.stack(per_layer).numpy(), valid)

    def embed(self, audio: str | os.PathLike | np.ndarray) -> Embedding:
        """One clip: a file (any format the data pipeline reads) or an array ``(T,)``/``(C, T)`` at the model's
        rate."""
        clip = read_clip(audio, self.model.sr) if isinstance(audio, (str, os.PathLike)) else prepare_audio(audio)
        return next(self.embed_windows([(0, self.split(clip))]))[1]

    def __call__(self, audio: str | os.PathLike | np.ndarray) -> np.ndarray:
        """The features of one clip (what ``python -m jukebox.embed`` writes to its ``.npy``)."""
        return self.embed(audio).features
