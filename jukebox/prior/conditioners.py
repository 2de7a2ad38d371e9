"""Conditioning inputs of the priors.

* :class:`Conditioner`: the codes of the level above, embedded and upsampled to this level's
  token rate by a decoder conv stack; added to every position of an upsampler's input.
* :class:`LabelConditioner`: artist and bag-of-genre embeddings (the start token of the
  transformer) and, for top-level priors, embeddings of where the window lies in the song.

Forward passes check shapes only; the ``check`` methods check values (each costs a device-to-host
sync on a GPU) and are called where inputs enter: sampling and data loading.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from jukebox.transformer.ops import LayerNorm
from jukebox.vqvae.encdec import DecoderConvBock

__all__ = ["Conditioner", "SimpleEmbedding", "RangeEmbedding", "LabelConditioner"]


def _check_long(name: str, x: torch.Tensor) -> None:
    if x.dtype != torch.long:
        raise TypeError(f"{name} must be an int64 (long) tensor, got {x.dtype}; convert it with .long()")


class Conditioner(nn.Module):
    """Codes of the level above ``(N, T_up)`` -> conditioning ``(N, T_up * stride_t**down_t, out_width)``.

    Embedding, an optional conditioning from further up added on, a ``DecoderConvBock`` that
    upsamples by ``stride_t**down_t``, and a LayerNorm.
    """

    def __init__(self, input_shape: tuple[int, ...], bins: int, down_t: int, stride_t: int, out_width: int,
                 init_scale: float, zero_out: bool, res_scale: bool, width: int, depth: int, m_conv: float,
                 dilation_growth_rate: int = 1, dilation_cycle: int | None = None,
                 checkpoint_res: bool | int = False) -> None:
        super().__init__()
        self.x_shape = tuple(input_shape)
        self.width = out_width
        self.x_emb = nn.Embedding(bins, out_width)
        nn.init.normal_(self.x_emb.weight, std=0.02 * init_scale)
        self.cond = DecoderConvBock(out_width, out_width, down_t, stride_t, width, depth, m_conv,
                                    dilation_growth_rate=dilation_growth_rate, dilation_cycle=dilation_cycle,
                                    zero_out=zero_out, res_scale=res_scale, checkpoint_res=checkpoint_res)
        self.ln = LayerNorm(out_width)

    def forward(self, x: torch.Tensor, x_cond: torch.Tensor | None = None) -> torch.Tensor:
        """x: codes ``(N, *input_shape)``; x_cond: ``(N, *input_shape, out_width)`` or None."""
        N = x.shape[0]
        if tuple(x.shape[1:]) != self.x_shape:
            raise ValueError(f"conditioning codes must have shape (N, {', '.join(map(str, self.x_shape))}), "
                             f"got {tuple(x.shape)}: pass the codes of the level above for this window")
        x = self.x_emb(x.long())
        if x_cond is not None:
            if x_cond.shape != (N, *self.x_shape, self.width):
                raise ValueError(f"x_cond must have shape {(N, *self.x_shape, self.width)}, got {tuple(x_cond.shape)}")
            x = x + x_cond
        x = self.cond(x.permute(0, 2, 1)).permute(0, 2, 1)  # the conv stack runs on (N, C, T)
        return self.ln(x)


class SimpleEmbedding(nn.Module):
    """Embedding of ids ``(N, L)`` in ``[0, bins)`` -> ``(N, L, out_width)``."""

    def __init__(self, bins: int, out_width: int, init_scale: float) -> None:
        super().__init__()
        self.bins = bins
        self.emb = nn.Embedding(bins, out_width)
        nn.init.normal_(self.emb.weight, std=0.01 * init_scale)

    def check(self, y: torch.Tensor) -> None:
        """Raise unless the ids ``y`` lie in ``[0, bins)``."""
        if not ((0 <= y).all() and (y < self.bins).all()):
            raise ValueError(f"label ids must lie in [0, {self.bins}), got {y.tolist()}: "
                             "are y_bins the ones of this model?")

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        if y.dim() != 2:
            raise ValueError(f"expected ids of shape (N, L), got {tuple(y.shape)}")
        _check_long("label ids", y)
        return self.emb(y)


class RangeEmbedding(nn.Module):
    """Embedding of positions in ``[range[0], range[1])``, cut into ``bins`` equal bins.

    With ``n_time > 1`` the span ``[pos_start, pos_end]`` is interpolated at ``n_time`` points
    ``start + (end - start) * i / n_time``; with ``n_time == 1`` only ``pos_start`` is used.
    ``clamp`` clips ``pos_end`` to the range first.
    """

    def __init__(self, n_time: int, bins: int, range: tuple[float, float], out_width: int, init_scale: float,
                 clamp: bool = False) -> None:
        super().__init__()
        self.n_time = n_time
        self.bins = bins
        self.emb = nn.Embedding(bins, out_width)
        nn.init.normal_(self.emb.weight, std=0.01 * init_scale)
        self.pos_min, self.pos_max = range
        self.clamp = clamp

    def check(self, pos_start: torch.Tensor, pos_end: torch.Tensor | None = None) -> None:
        """Raise unless the positions ``(N, 1)`` lie in the range (``pos_end`` after clamping, if asked)."""
        if not ((self.pos_min <= pos_start).all() and (pos_start < self.pos_max).all()):
            raise ValueError(f"positions must lie in [{self.pos_min}, {self.pos_max}), got {pos_start.tolist()}: "
                             "check offset/total_length against min_duration/max_duration")
        if self.n_time > 1 and pos_end is not None:
            if self.clamp:
                pos_end = pos_end.clamp(self.pos_min, self.pos_max)
            if not ((self.pos_min <= pos_end).all() and (pos_end <= self.pos_max).all()):
                raise ValueError(f"end positions must lie in [{self.pos_min}, {self.pos_max}], got {pos_end.tolist()}")

    def get_bins(self, pos_start: torch.Tensor, pos_end: torch.Tensor | None = None) -> torch.Tensor:
        """pos_start, pos_end: ``(N, 1)`` -> bin indices ``(N, n_time)`` int64."""
        if pos_start.dim() != 2:
            raise ValueError(f"pos_start must have shape (N, 1), got {tuple(pos_start.shape)}")
        pos_start = pos_start.float()
        if self.n_time == 1:
            position = pos_start
        else:
            if pos_end is None or pos_end.dim() != 2:
                raise ValueError(f"pos_end of shape (N, 1) is needed to interpolate {self.n_time} positions")
            if self.clamp:
                pos_end = pos_end.clamp(self.pos_min, self.pos_max)
            pos_end = pos_end.float()
            steps = torch.arange(0, self.n_time, dtype=torch.float, device=pos_start.device).view(1, self.n_time)
            position = pos_start + (pos_end - pos_start) * (steps / self.n_time)
        normalised = (position - self.pos_min) / (self.pos_max - self.pos_min)  # in [0, 1)
        return (self.bins * normalised).floor().long()

    def forward(self, pos_start: torch.Tensor, pos_end: torch.Tensor | None = None) -> torch.Tensor:
        """``(N, 1)`` positions -> ``(N, n_time, out_width)``."""
        return self.emb(self.get_bins(pos_start, pos_end))


class LabelConditioner(nn.Module):
    """Labels ``y (N, 4 + max_bow_genre_size)`` -> (start embedding ``(N, 1, W)``, timing ``(N, n_time, W)`` or None).

    y holds ``[total_length, offset, sample_length, artist, genre ids (-1 = empty slot)]``, lengths in samples.
    """

    def __init__(self, y_bins: tuple[int, int], t_bins: int, sr: int, min_duration: float | None,
                 max_duration: float | None, n_time: int, out_width: int, init_scale: float,
                 max_bow_genre_size: int, include_time_signal: bool) -> None:
        super().__init__()
        if not isinstance(y_bins, (tuple, list)) or len(y_bins) != 2:
            raise ValueError(f"y_bins must be (genre bins, artist bins), got {y_bins}")
        self.n_time = n_time
        self.out_width = out_width
        bow_genre_bins, artist_bins = y_bins
        self.max_bow_genre_size = max_bow_genre_size
        self.bow_genre_emb = SimpleEmbedding(bow_genre_bins, out_width, init_scale)
        self.artist_emb = SimpleEmbedding(artist_bins, out_width, init_scale)
        self.include_time_signal = include_time_signal
        if include_time_signal:
            if min_duration is None or max_duration is None:
                raise ValueError("a labelled top-level prior needs min_duration and max_duration (seconds) "
                                 "for its timing embeddings; set them in the hparams")
            self.total_length_emb = RangeEmbedding(1, t_bins, (min_duration * sr, max_duration * sr), out_width,
                                                   init_scale)
            self.absolute_pos_emb = RangeEmbedding(n_time, t_bins, (0.0, max_duration * sr), out_width, init_scale)
            self.relative_pos_emb = RangeEmbedding(n_time, t_bins, (0.0, 1.0), out_width, init_scale, clamp=True)

    def _split(self, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if y.dim() != 2 or y.shape[-1] != 4 + self.max_bow_genre_size:
            raise ValueError(f"labels must have shape (N, {4 + self.max_bow_genre_size}) "
                             f"(4 + max_bow_genre_size), got {tuple(y.shape)}")
        _check_long("labels y", y)
        return y[:, 0:1], y[:, 1:2], y[:, 2:3], y[:, 3:4], y[:, 4:]

    def _timing_args(self, y: torch.Tensor) -> dict[str, tuple[torch.Tensor, ...]]:
        total_length, offset, length, _, _ = self._split(y)
        total_length, start, end = total_length.float(), offset.float(), (offset + length).float()
        return dict(total_length_emb=(total_length,), absolute_pos_emb=(start, end),
                    relative_pos_emb=(start / total_length, end / total_length))

    def get_timing_bins(self, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """Bin indices fed to the three timing tables: total_length ``(N, 1)``, the others ``(N, n_time)``."""
        if not self.include_time_signal:
            raise RuntimeError("this label conditioner has no time signal (it belongs to an upsampler)")
        return {name: getattr(self, name).get_bins(*args) for name, args in self._timing_args(y).items()}

    def check(self, y: torch.Tensor) -> None:
        """Raise unless the ids and timing of labels y lie in this conditioner's ranges."""
        _, _, _, artist, genre = self._split(y)
        self.artist_emb.check(artist)
        self.bow_genre_emb.check(genre.clamp(0))
        if self.include_time_signal:
            for name, args in self._timing_args(y).items():
                getattr(self, name).check(*args)

    def forward(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        _, _, _, artist, genre = self._split(y)
        artist_emb = self.artist_emb(artist)
        mask = (genre >= 0).float().unsqueeze(2)
        genre_emb = (self.bow_genre_emb(genre.clamp(0)) * mask).sum(dim=1, keepdim=True)
        start_emb = genre_emb + artist_emb
        if not self.include_time_signal:
            return start_emb, None
        args = self._timing_args(y)
        pos_emb = (self.total_length_emb(*args["total_length_emb"]) + self.absolute_pos_emb(*args["absolute_pos_emb"])
                   + self.relative_pos_emb(*args["relative_pos_emb"]))
        return start_emb, pos_emb
