"""A dataset of fixed-length chunks cut from every audio file under a folder.

The files are laid end to end: item ``i`` is the chunk starting at sample ``i * sample_length``
of the concatenation, moved inside the song its midpoint falls in (and, with ``aug_shift``,
shifted by a random amount of up to half a chunk either way). Chunks are read straight from
the files, resampled to ``hps.sr``, as ``(T, C)`` float32.

File lengths are measured once by decoding each file (which also finds files that cannot be
decoded or are silent) and kept in a JSON cache: ``.jukebox_durations.json`` in the audio
folder, or, when that folder is read-only, in ``$JUKEBOX_CACHE/datasets/`` (by default
``~/.cache/jukebox/datasets/``). Entries are refreshed when a file's size or mtime changes.

Labels (``hps.labels``): ``get_metadata`` reads artist, genre and lyrics from ``metadata.json``
at the top of the folder (keys: paths relative to it, or file names without extension) or from
a ``<song>.json`` / ``<song>.<ext>.json`` beside the song. Override it for other layouts.
"""
from __future__ import annotations

import hashlib
import json
import os
import stat
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from jukebox.utils.atomic import atomic_write
from jukebox.utils.dist_utils import barrier, get_rank, print_once
from jukebox.utils.io import AudioReadError, audio_info, load_audio, scan_audio
from jukebox.utils.remote import cache_dir

__all__ = ["AUDIO_EXTENSIONS", "AudioFileSkipped", "FilesAudioDataset", "dataset_cache_file"]

AUDIO_EXTENSIONS = ("wav", "flac", "ogg", "opus", "mp3", "m4a")
# Peak absolute sample value at or below which a whole file counts as silent (about -80 dBFS).
SILENCE_PEAK = 1e-4
_CACHE_VERSION = 1
DEFAULT_METADATA = {"artist": "unknown", "genre": "unknown", "lyrics": ""}


class AudioFileSkipped(UserWarning):
    """A file under audio_files_dir is left out of the dataset (the message says why)."""


def _is_read_only(folder: Path) -> bool:
    # Judge by the permission bits too: root may write anywhere, but an r-x folder is meant read-only.
    mode = folder.stat().st_mode
    return not (mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)) or not os.access(folder, os.W_OK)


def dataset_cache_file(root: str | os.PathLike, name: str) -> Path:
    """``.jukebox_{name}.json`` in ``root`` if it is writable, else under ``$JUKEBOX_CACHE/datasets/``
    in a folder named after ``root``'s absolute path."""
    root = Path(root).resolve()
    if not _is_read_only(root):
        return root / f".jukebox_{name}.json"
    digest = hashlib.sha1(str(root).encode()).hexdigest()[:12]
    return cache_dir() / "datasets" / f"{root.name}-{digest}" / f".jukebox_{name}.json"


def read_json(path: Path) -> dict:
    """The JSON object in ``path``; ``{}`` when missing or unreadable (caches are rebuilt, not trusted)."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_json_atomic(path: Path, data: Mapping[str, Any]) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder."""
    with atomic_write(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1, sort_keys=True)


def find_audio_files(root: Path) -> list[Path]:
    """Audio files under ``root`` (recursively, following links), sorted; hidden files are ignored."""
    extensions = {f".{e}" for e in AUDIO_EXTENSIONS}
    found = []
    for folder, dirs, names in os.walk(root, followlinks=True):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found += [Path(folder) / n for n in names
                  if not n.startswith(".") and os.path.splitext(n)[1].lower() in extensions]
    return sorted(found)


class FilesAudioDataset(Dataset):
    """Chunks of ``hps.sample_length`` samples at ``hps.sr`` from the files under ``hps.audio_files_dir``.

    ``dataset[i]`` is ``(T, C)`` float32 numpy with ``C = hps.channels`` (mono files duplicated to
    stereo), or ``(wav, y)`` with the int64 label ``y`` when ``hps.labels``. Attributes:
    ``files``, ``durations`` (samples at sr) and ``cumsum`` of the files kept.
    """

    def __init__(self, hps: Mapping[str, Any]) -> None:
        super().__init__()
        self.sr, self.channels, self.sample_length = int(hps["sr"]), int(hps["channels"]), int(hps["sample_length"])
        if self.sample_length <= 0:
            raise ValueError(f"sample_length must be a positive number of samples, got {hps['sample_length']}; "
                             "pass e.g. --sample_length=262144")
        if self.channels not in (1, 2):
            raise ValueError(f"channels must be 1 or 2, got {self.channels}")
        self.min_duration = hps.get("min_duration")
        self.max_duration = hps.get("max_duration")
        self.aug_shift = bool(hps.get("aug_shift", False))
        self.labels = bool(hps.get("labels", False))
        self._labeller_args = (hps.get("max_bow_genre_size"), hps.get("n_tokens", 0), bool(hps.get("labels_v3")))
        self._labeller = None
        self._metadata_table: dict | None = None
        self.root = Path(hps["audio_files_dir"]) if hps["audio_files_dir"] else None
        self.init_dataset()

    # ---------------------------------------------------------------------------------------
    # Finding and measuring files
    # ---------------------------------------------------------------------------------------
    def init_dataset(self) -> None:
        accepted = ", ".join(f".{e}" for e in AUDIO_EXTENSIONS)
        if self.root is None or not self.root.is_dir():
            shown = "" if self.root is None else str(self.root)
            raise FileNotFoundError(f"audio_files_dir {shown!r} is not a folder; pass --audio_files_dir=DIR "
                                    f"with audio files ({accepted}) in it or in its subfolders")
        files = find_audio_files(self.root)
        if not files:
            raise ValueError(f"no audio files under {str(self.root)!r}: looked for {accepted} "
                             "(any case) in it and its subfolders")
        # Rank 0 measures the files and writes the cache; the other ranks then read it.
        if get_rank() != 0:
            barrier()
        entries = self._measure(files)
        if get_rank() == 0:
            barrier()
        self._keep(files, entries)

    def _measure(self, files: list[Path]) -> dict[str, dict]:
        """Cache entry of every file: size, mtime_ns, sr, frames, channels, peak (None until the file is
        decoded) or error. Files outside the duration bounds are only measured from their header."""
        cache_file = dataset_cache_file(self.root, "durations")
        cached = read_json(cache_file)
        old = cached.get("files", {}) if cached.get("version") == _CACHE_VERSION else {}
        entries, changed = {}, False
        stats = {path: path.stat() for path in files}
        stale = {p for p, st in stats.items() if self._is_stale(old.get(p.relative_to(self.root).as_posix()), st)}
        if stale:
            print_once(f"measuring {len(stale)} new or changed audio file(s) under {self.root} "
                       f"(once; cached in {cache_file})")
        for path, st in stats.items():
            rel = path.relative_to(self.root).as_posix()
            entry = old.get(rel)
            if path in stale:
                entry, changed = self._measure_file(path, st, decode=False), True
            if entry.get("error") is None and entry.get("peak") is None and self._within_bounds(entry):
                entry, changed = self._measure_file(path, st, decode=True), True
            entries[rel] = entry
        if changed:
            try:
                write_json_atomic(cache_file, {"version": _CACHE_VERSION, "files": entries})
            except OSError as e:
                warnings.warn(f"could not write the duration cache {cache_file}: {e}; files will be measured "
                              "again next time (set $JUKEBOX_CACHE to a writable folder)", stacklevel=3)
        return entries

    @staticmethod
    def _is_stale(entry: Mapping[str, Any] | None, st: os.stat_result) -> bool:
        return entry is None or entry.get("size") != st.st_size or entry.get("mtime_ns") != st.st_mtime_ns

    @staticmethod
    def _measure_file(path: Path, st: os.stat_result, decode: bool) -> dict:
        """The cache entry of ``path``: header facts only, or with ``decode`` the exact length and peak."""
        entry: dict[str, Any] = dict(size=st.st_size, mtime_ns=st.st_mtime_ns, peak=None, error=None)
        try:
            info = scan_audio(path) if decode else audio_info(path)
        except AudioReadError as e:
            return {**entry, "error": e.reason}
        entry.update(sr=info.sr, frames=info.frames, channels=info.channels)
        if decode:
            entry["peak"] = info.peak
        return entry

    def _within_bounds(self, entry: Mapping[str, Any]) -> bool:
        seconds = entry["frames"] / entry["sr"]
        too_short = self.min_duration is not None and seconds < self.min_duration
        too_long = self.max_duration is not None and seconds >= self.max_duration
        return not (too_short or too_long)

    def _keep(self, files: list[Path], entries: Mapping[str, dict]) -> None:
        kept, durations, skipped, out_of_bounds = [], [], [], 0
        for path in files:
            entry = entries[path.relative_to(self.root).as_posix()]
            if entry.get("error") is not None:
                skipped.append(f"{path}: cannot be decoded ({entry['error']})")
            elif not self._within_bounds(entry):
                out_of_bounds += 1
            elif entry["channels"] > 2:
                skipped.append(f"{path}: has {entry['channels']} channels; only mono and stereo are supported")
            elif entry["peak"] <= SILENCE_PEAK:
                skipped.append(f"{path}: is silent (peak {entry['peak']:.2g})")
            elif entry["frames"] * self.sr // entry["sr"] < self.sample_length:
                skipped.append(f"{path}: is {entry['frames'] / entry['sr']:.2f} s long, shorter than one chunk of "
                               f"{self.sample_length} samples ({self.sample_length / self.sr:.2f} s at {self.sr} Hz)")
            else:
                kept.append(path)
                durations.append(entry["frames"] * self.sr // entry["sr"])
        if get_rank() == 0:
            for reason in skipped:
                warnings.warn(f"skipping {reason}", AudioFileSkipped, stacklevel=4)
        if not kept:
            raise ValueError(f"none of the {len(files)} audio files under {str(self.root)!r} can be used: "
                             f"{len(skipped)} unreadable, silent, too short or with too many channels, "
                             f"{out_of_bounds} outside min_duration={self.min_duration}/max_duration="
                             f"{self.max_duration} s; see the warnings above")
        self.files, self.durations = kept, durations
        self.cumsum = np.cumsum(np.asarray(durations, dtype=np.int64))
        print_once(f"{len(kept)} audio file(s) ({self.cumsum[-1] / self.sr / 60:.1f} min) under {self.root}, "
                   f"{len(self)} chunks of {self.sample_length} samples; left out {len(skipped)} unusable and "
                   f"{out_of_bounds} outside the duration bounds")

    def fingerprint(self) -> str:
        """A short hash of the files kept and their lengths, to key caches derived from the data."""
        text = "\n".join(f"{p.relative_to(self.root).as_posix()}:{d}" for p, d in zip(self.files, self.durations))
        return hashlib.sha1(text.encode()).hexdigest()[:16]

    # ---------------------------------------------------------------------------------------
    # Items
    # ---------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.cumsum[-1] // self.sample_length)

    def get_index_offset(self, item: int) -> tuple[int, int]:
        """(file index, offset in samples at sr) of the chunk for ``item``."""
        if not 0 <= item < len(self):
            raise IndexError(f"item {item} out of range for a dataset of {len(self)} chunks")
        half = self.sample_length // 2
        shift = int(torch.randint(-half, half, ())) if self.aug_shift and half > 0 else 0
        start = item * self.sample_length + shift
        midpoint = min(max(start + half, 0), int(self.cumsum[-1]) - 1)
        index = int(np.searchsorted(self.cumsum, midpoint, side="right"))
        song_start = int(self.cumsum[index - 1]) if index > 0 else 0
        song_end = int(self.cumsum[index])
        offset = min(max(start, song_start), song_end - self.sample_length)
        return index, offset - song_start

    @property
    def labeller(self) -> Any:
        if self._labeller is None:
            from jukebox.data.labels import Labeller

            max_genre_words, n_tokens, v3 = self._labeller_args
            if max_genre_words is None:
                raise ValueError("labels=True needs max_bow_genre_size (e.g. 1 with labels_v3); "
                                 "or pass --labels=False to train without labels")
            self._labeller = Labeller(max_genre_words, n_tokens, self.sample_length, v3=v3)
        return self._labeller

    def _metadata_json(self) -> dict:
        if self._metadata_table is None:
            path = self.root / "metadata.json"
            self._metadata_table = {}
            if path.exists():
                try:
                    with open(path, encoding="utf-8") as f:
                        self._metadata_table = json.load(f)
                except ValueError as e:
                    raise ValueError(f"{path} is not valid JSON: {e}") from e
                if not isinstance(self._metadata_table, dict):
                    raise ValueError(f"{path} must hold an object mapping file paths (relative to "
                                     f"{self.root}) or file stems to {{artist, genre, lyrics}}")
        return self._metadata_table

    def get_metadata(self, filename: str | os.PathLike, test: bool) -> dict:
        """{'artist', 'genre', 'lyrics'} of an audio file; override for your own metadata layout.

        Looks in ``<file>.json`` or ``<file stem>.json`` beside the file, then in ``metadata.json`` at
        the top of the dataset under the file's relative path or stem. Missing fields default to
        artist 'unknown', genre 'unknown', lyrics ''. ``test`` says whether the chunk is for evaluation.
        """
        path = Path(filename)
        meta: Any = None
        for sidecar in (path.with_name(path.name + ".json"), path.with_suffix(".json")):
            if sidecar.exists():
                try:
                    with open(sidecar, encoding="utf-8") as f:
                        meta = json.load(f)
                except ValueError as e:
                    raise ValueError(f"metadata file {sidecar} is not valid JSON: {e}") from e
                break
        if meta is None:
            table = self._metadata_json()
            try:
                key = path.relative_to(self.root).as_posix()
            except ValueError:
                key = path.name
            meta = table.get(key, table.get(path.stem))
        if meta is None:
            return dict(DEFAULT_METADATA)
        if not isinstance(meta, dict):
            raise ValueError(f"metadata of {path} must be an object with artist, genre and lyrics, got {meta!r}")
        return {k: str(meta.get(k) or v) for k, v in DEFAULT_METADATA.items()}

    def metadata_of_files(self) -> list[dict]:
        """``get_metadata`` of every file kept (e.g. for ``labels.write_id_tables``)."""
        return [self.get_metadata(path, test=False) for path in self.files]

    def get_song_chunk(self, index: int, offset: int, test: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """The ``(T, C)`` chunk at ``offset`` samples into file ``index`` (with its label y when labels)."""
        filename, total_length = self.files[index], self.durations[index]
        wav = load_audio(filename, sr=self.sr, offset=offset, duration=self.sample_length,
                         channels=self.channels).T
        if not self.labels:
            return wav
        meta = self.get_metadata(filename, test)
        if isinstance(meta, (tuple, list)):  # the original's override returned (artist, genre, lyrics)
            meta = dict(zip(("artist", "genre", "lyrics"), meta))
        label = self.labeller.get_label(meta["artist"], meta["genre"], meta["lyrics"], total_length, offset)
        return wav, label["y"]

    def get_item(self, item: int, test: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        index, offset = self.get_index_offset(item)
        return self.get_song_chunk(index, offset, test)

    def __getitem__(self, item: int) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        return self.get_item(item)
