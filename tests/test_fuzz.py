"""Property tests (hypothesis) of label building and of the sampling windows, on random inputs.

Labels: any unicode artist/genre/lyrics, lengths and offsets give a y of the right shape with ids and tokens in
range, and lyric indices that point into the cleaned lyrics. Windows: for any total length, context and hop the
windows stay inside the song, cover it, start in increasing order, and a level sampled through them (also when
resumed after any window) has its tokens at the right positions.
"""
from __future__ import annotations

import functools
import math
import warnings

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from conftest import IDS_DIR
from jukebox.data.labels import Labeller, get_relevant_lyric_tokens
from jukebox.inference.schedule import get_starts, level_lengths, plan_level, sample_level

# derandomize: CI runs the same examples every time; a new failure shows up when the strategies change.
FUZZ = settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
SAMPLE_LENGTH = 1024


@functools.cache
def labeller(v3: bool, n_tokens: int) -> Labeller:
    return Labeller(1 if v3 else 5, n_tokens, SAMPLE_LENGTH, v3=v3, ids_dir=IDS_DIR)


names = st.text(max_size=30)
lyrics_text = st.one_of(st.text(max_size=400), st.text(alphabet="abc ,.\n'\\+é😀", max_size=600))


@st.composite
def lengths(draw):
    total_length = draw(st.integers(1, 10 ** 8))
    offset = draw(st.integers(0, total_length - 1))
    return total_length, offset


def _check_indices(indices: list[int], n_full: int, n_tokens: int) -> None:
    assert len(indices) == n_tokens
    real = [i for i in indices if i != -1]
    pad = n_tokens - len(real)
    assert indices[:pad] == [-1] * pad  # padding only on the left
    if real:
        assert real == list(range(real[0], real[0] + len(real)))  # one contiguous run
        assert 0 <= real[0] and real[-1] < n_full
    if n_full >= n_tokens:
        assert pad == 0


@FUZZ
@given(v3=st.booleans(), n_tokens=st.sampled_from([0, 2, 8, 48, 384]), artist=names, genre=names,
       lyrics=lyrics_text, where=lengths())
@example(v3=False, n_tokens=0, artist="", genre="0:0:0:0:0:0", lyrics="", where=(1, 0))  # six genre words
def test_labels_of_any_text(v3, n_tokens, artist, genre, lyrics, where):
    total_length, offset = where
    lab = labeller(v3, n_tokens)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # unknown artists/genres and dropped characters are expected here
        if len(lab.ag_processor.get_genre_ids(genre)) > lab.max_genre_words:
            with pytest.raises(ValueError, match="max_genre_words"):
                lab.get_label(artist, genre, lyrics, total_length, offset)
            return
        label = lab.get_label(artist, genre, lyrics, total_length, offset)
    y, info = label["y"], label["info"]
    assert y.shape == lab.label_shape and y.dtype.name == "int64"
    assert list(y[:3]) == [total_length, offset, SAMPLE_LENGTH]
    assert y[3] in set(lab.ag_processor.artist_ids.values())
    genres = list(y[4:4 + lab.max_genre_words])
    known_genres = set(lab.ag_processor.genre_ids.values())
    assert all(g in known_genres or g == -1 for g in genres) and genres[0] != -1
    assert genres == sorted(genres, key=lambda g: g == -1)  # padding only at the end
    tokens = list(y[4 + lab.max_genre_words:])
    n_vocab = lab.text_processor.n_vocab
    assert len(tokens) == n_tokens and all(0 <= t < n_vocab for t in tokens)
    full = info["full_tokens"]
    assert all(0 < t < n_vocab for t in full) and lab.text_processor.textise(full) == info["lyrics"]
    _, indices = get_relevant_lyric_tokens(full, n_tokens, total_length, offset, SAMPLE_LENGTH)
    _check_indices(indices, len(full), n_tokens)
    assert tokens == [full[i] if i >= 0 else 0 for i in indices]
    described = lab.describe_label(y)
    assert described["lyrics"] == lab.text_processor.textise(tokens)


@FUZZ
@given(n_full=st.integers(0, 3000), n_tokens=st.sampled_from([2, 4, 64, 384, 512]), where=lengths(),
       duration=st.integers(1, 10 ** 6))
def test_lyric_window_follows_the_audio_window(n_full, n_tokens, where, duration):
    total_length, offset = where
    tokens, indices = get_relevant_lyric_tokens(list(range(1, n_full + 1)), n_tokens, total_length, offset,
                                                duration)
    _check_indices(indices, n_full, n_tokens)
    assert tokens == [i + 1 if i >= 0 else 0 for i in indices]
    if n_full >= n_tokens:  # centred on the lyric position of the window's midpoint, clamped inside the lyrics
        centre = int(n_full * (offset + duration / 2.0) / total_length)
        assert indices[0] == min(max(centre - n_tokens // 2, 0), n_full - n_tokens)


@FUZZ
@given(n_tokens=st.sampled_from([2, 8, 64]), rows=st.lists(st.tuples(lengths(), st.integers(1, 10 ** 6)),
                                                         min_size=1, max_size=4), lyrics=lyrics_text)
def test_refilled_lyric_tokens_match_each_row(n_tokens, rows, lyrics):
    lab = labeller(True, n_tokens)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        labels = lab.get_batch_labels([dict(artist="a", genre="b", lyrics=lyrics, total_length=t, offset=o)
                                       for (t, o), _ in rows])
    ys = labels["y"].clone()
    ys[:, 2] = torch.tensor([d for _, d in rows])
    indices = lab.set_y_lyric_tokens(ys, labels)
    for row, item_indices, info in zip(ys.tolist(), indices, labels["info"]):
        full = info["full_tokens"]
        _check_indices(item_indices, len(full), n_tokens)
        assert row[-n_tokens:] == [full[i] if i >= 0 else 0 for i in item_indices]


@st.composite
def windows(draw):
    n_ctx = draw(st.integers(1, 64))
    total_length = draw(st.integers(1, 400))
    hop_length = draw(st.integers(1, n_ctx))
    current_length = draw(st.integers(0, total_length))
    return total_length, n_ctx, hop_length, current_length


@FUZZ
@given(windows())
def test_windows_cover_the_song_in_order(case):
    total_length, n_ctx, hop_length, current_length = case
    plan = plan_level(total_length, n_ctx, hop_length, current_length)
    if total_length < n_ctx:
        assert plan == ([(0, total_length)] if current_length < total_length else [])
        return
    starts = [start for start, _ in plan]
    assert starts == get_starts(total_length, n_ctx, hop_length)
    assert all(tokens == n_ctx for _, tokens in plan)
    assert starts[0] == 0 and starts[-1] + n_ctx == total_length  # inside the song, ending at its end
    assert all(b > a for a, b in zip(starts, starts[1:]))  # strictly increasing
    assert all(b - a <= hop_length for a, b in zip(starts, starts[1:]))  # consecutive windows overlap or touch
    assert math.ceil((total_length - n_ctx) / hop_length) + 1 == len(plan)


class PositionPrior:
    """A one-level stand-in whose sampled token at position p is p + 1 (0 marks a token given beforehand)."""

    def __init__(self, n_ctx: int) -> None:
        self.n_ctx, self.raw_to_tokens = n_ctx, 1

    def get_y(self, labels, start):
        self.start = start
        return None

    def get_z_conds(self, zs, start, end):
        return None

    def sample(self, n_samples, z, z_conds, y, sample_tokens, **kwargs):
        new = torch.arange(self.start + z.shape[1], self.start + sample_tokens) + 1
        return torch.cat([z, new.expand(n_samples, -1)], dim=1)


@FUZZ
@given(windows(), st.data())
def test_sampled_tokens_land_at_their_positions_and_resume_anywhere(case, data):
    total_length, n_ctx, hop_length, prefix = case
    prior = PositionPrior(n_ctx)
    states: list[torch.Tensor] = []
    zs = [torch.zeros(2, prefix, dtype=torch.long)]
    full = sample_level(zs, None, dict(max_batch_size=1), 0, prior, total_length, hop_length,
                        after_window=lambda level, done, zs: states.append(zs[0].clone()))[0]
    expected = torch.cat([torch.zeros(prefix, dtype=torch.long), torch.arange(prefix, total_length) + 1])
    assert torch.equal(full, expected.expand(2, -1))
    if states:
        done = data.draw(st.integers(1, len(states)), label="windows done before the crash")
        resumed = sample_level([states[done - 1].clone()], None, dict(max_batch_size=2), 0, prior, total_length,
                               hop_length, windows_done=done)[0]
        assert torch.equal(resumed, full)


@FUZZ
@given(n_ctx=st.integers(1, 8192), fraction=st.floats(1e-6, 4.0, allow_nan=False))
def test_hop_fractions_that_would_leave_gaps_are_refused(n_ctx, fraction):
    prior = PositionPrior(n_ctx)
    hop = int(fraction * n_ctx)
    if 0 < hop <= n_ctx:
        assert level_lengths(prior, 10 * n_ctx, [fraction], 0) == (10 * n_ctx, hop)
    else:
        with pytest.raises(ValueError, match=r"hop_fraction\[0\]=.*(empty hop|more than 1)"):
            level_lengths(prior, 10 * n_ctx, [fraction], 0)
