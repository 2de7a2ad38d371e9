"""Conditioning labels ``y`` of the priors.

y (int64) = [total_length, offset, sample_length, artist_id, genre_ids x max_genre_words (-1 padded),
lyric tokens x n_tokens]; total_length, offset and sample_length are in audio samples.
"""
from __future__ import annotations

import os

import numpy as np
import torch

from jukebox.data.artist_genre_processor import ArtistGenreProcessor, write_id_tables
from jukebox.data.text_processor import TextProcessor

__all__ = ["EmptyLabeller", "Labeller", "get_relevant_lyric_tokens", "write_id_tables"]


def get_relevant_lyric_tokens(full_tokens: list[int], n_tokens: int, total_length: int, offset: int,
                              duration: int) -> tuple[list[int], list[int]]:
    """The n_tokens lyric tokens for the audio window [offset, offset + duration) of a song.

    Lyrics are assumed to be spread linearly over the song: the window is centred on the token at the same
    relative position as the window's midpoint, clamped to stay inside the lyrics. Short lyrics are
    left-padded with token 0. Returns (tokens, indices into full_tokens; -1 for padding).
    """
    n = len(full_tokens)
    if n < n_tokens:
        pad = n_tokens - n
        return [0] * pad + list(full_tokens), [-1] * pad + list(range(n))
    if n_tokens % 2:
        raise ValueError(f"n_tokens must be even to take a window of lyric tokens, got {n_tokens}")
    if not 0 <= offset < total_length:
        raise ValueError(f"offset {offset} must lie in [0, total_length={total_length})")
    half = n_tokens // 2
    midpoint = int(n * (offset + duration / 2.0) / total_length)
    midpoint = min(max(midpoint, half), n - half)
    indices = list(range(midpoint - half, midpoint + half))
    return [full_tokens[i] for i in indices], indices


class Labeller:
    """Builds y for (artist, genre, lyrics, total_length, offset) and describes y back in words.

    max_genre_words: genre id slots (5 for v2, 1 for v3); n_tokens: lyric tokens in y (even; 0 for none);
    sample_length: audio samples a window of the prior covers; v3: the 1b_lyrics vocabularies;
    ids_dir: where the id tables are (see ``artist_genre_processor.default_ids_dir``); hub_repo: the hub repository
    whose tables stand in for the released ones when those cannot be had (see ``ArtistGenreProcessor``).
    """

    def __init__(self, max_genre_words: int, n_tokens: int, sample_length: int, v3: bool = False,
                 ids_dir: str | os.PathLike | None = None, hub_repo: str = "") -> None:
        if n_tokens < 0 or n_tokens % 2:
            raise ValueError(
                f"n_tokens={n_tokens}: only even, non-negative numbers of lyric tokens work (the lyric window "
                "is centred, n_tokens/2 each side of the midpoint); use an even value such as "
                f"{max(n_tokens + 1, 0)}"
            )
        if max_genre_words < 1:
            raise ValueError(f"max_genre_words must be at least 1, got {max_genre_words}")
        self.ag_processor = ArtistGenreProcessor(v3, ids_dir, hub_repo)
        self.text_processor = TextProcessor(v3)
        self.max_genre_words = max_genre_words
        self.n_tokens = n_tokens
        self.sample_length = sample_length
        self.label_shape = (4 + max_genre_words + n_tokens,)

    def _pad_genres(self, genre_ids: list[int]) -> list[int]:
        if len(genre_ids) > self.max_genre_words:
            raise ValueError(
                f"{len(genre_ids)} genre ids {genre_ids} do not fit in max_genre_words={self.max_genre_words}; "
                "use fewer genre words"
            )
        return list(genre_ids) + [-1] * (self.max_genre_words - len(genre_ids))

    def get_label(self, artist: str, genre: str, lyrics: str, total_length: int, offset: int) -> dict:
        """{'y': int64 array label_shape, 'info': {artist, genre, lyrics (cleaned), full_tokens}}."""
        artist_id = self.ag_processor.get_artist_id(artist)
        genre_ids = self._pad_genres(self.ag_processor.get_genre_ids(genre))
        lyrics = self.text_processor.clean(lyrics)
        full_tokens = self.text_processor.tokenise(lyrics)
        tokens, _ = get_relevant_lyric_tokens(full_tokens, self.n_tokens, total_length, offset, self.sample_length)
        y = np.array([total_length, offset, self.sample_length, artist_id, *genre_ids, *tokens], dtype=np.int64)
        info = dict(artist=artist, genre=genre, lyrics=lyrics, full_tokens=full_tokens)
        return dict(y=y, info=info)

    def get_y_from_ids(self, artist_id: int, genre_ids: list[int], lyric_tokens: list[int], total_length: int,
                       offset: int) -> np.ndarray:
        """y from ids already looked up; lyric_tokens must hold n_tokens entries (ignored when n_tokens == 0)."""
        if self.n_tokens == 0:
            lyric_tokens = []
        elif len(lyric_tokens) != self.n_tokens:
            raise ValueError(f"expected {self.n_tokens} lyric tokens, got {len(lyric_tokens)}")
        genre_ids = self._pad_genres(list(genre_ids))
        return np.array([total_length, offset, self.sample_length, artist_id, *genre_ids, *lyric_tokens],
                        dtype=np.int64)

    def get_batch_labels(self, metas: list[dict], device: torch.device | str = "cpu") -> dict:
        """{'y': LongTensor (N, label_len) on device, 'info': list of N info dicts} for N metas."""
        labels = [self.get_label(**meta) for meta in metas]
        y = torch.from_numpy(np.stack([label["y"] for label in labels])).to(device)
        return dict(y=y, info=[label["info"] for label in labels])

    def set_y_lyric_tokens(self, ys: torch.Tensor, labels: dict) -> list[list[int]] | None:
        """Refill the lyric tokens of ys (N, label_len) in place for the offset/sample_length now in each row.

        Returns the per-item indices of those tokens in info['full_tokens'] (-1 for padding), or None when
        this labeller has no lyric tokens.
        """
        info = labels["info"]
        if ys.shape[0] != len(info):
            raise ValueError(f"ys has {ys.shape[0]} rows but labels['info'] has {len(info)} items")
        if self.n_tokens == 0:
            return None
        tokens_list, indices_list = [], []
        for row, item in zip(ys.tolist(), info):
            total_length, offset, duration = row[:3]
            tokens, indices = get_relevant_lyric_tokens(item["full_tokens"], self.n_tokens, total_length, offset,
                                                        duration)
            tokens_list.append(tokens)
            indices_list.append(indices)
        ys[:, -self.n_tokens:] = torch.tensor(tokens_list, dtype=ys.dtype, device=ys.device)
        return indices_list

    def describe_label(self, y) -> dict:
        """{'artist', 'genre', 'lyrics'} in words for one y (label_shape,) (tensor, array or list)."""
        y = np.asarray(y.cpu() if isinstance(y, torch.Tensor) else y).tolist()
        if (len(y),) != self.label_shape:
            raise ValueError(f"expected a label of shape {self.label_shape}, got ({len(y)},)")
        genre_ids = y[4:4 + self.max_genre_words]
        tokens = y[4 + self.max_genre_words:]
        return dict(artist=self.ag_processor.get_artist(y[3]), genre=self.ag_processor.get_genre(genre_ids),
                    lyrics=self.text_processor.textise(tokens))


class EmptyLabeller:
    """Labeller of unconditional priors: y is empty."""

    n_tokens = 0
    label_shape = (0,)

    def get_label(self, artist: str | None = None, genre: str | None = None, lyrics: str | None = None,
                  total_length: int | None = None, offset: int | None = None) -> dict:
        return dict(y=np.zeros(0, dtype=np.int64), info=dict(artist="n/a", genre="n/a", lyrics="", full_tokens=[]))

    def get_batch_labels(self, metas: list[dict], device: torch.device | str = "cpu") -> dict:
        """{'y': LongTensor (N, 0), 'info': list of N info dicts}."""
        labels = [self.get_label() for _ in metas]
        return dict(y=torch.zeros(len(metas), 0, dtype=torch.long, device=device), info=[l["info"] for l in labels])

    def set_y_lyric_tokens(self, ys: torch.Tensor, labels: dict) -> None:
        return None

    def describe_label(self, y) -> dict:
        return dict(artist="n/a", genre="n/a", lyrics="")
