"""Representations of a folder of audio files: one ``<out>/<relative path>.npy`` per file, a manifest, resumable,
split over ranks, with failures reported rather than fatal.

* Files are decoded in ``DataLoader`` worker processes while the model runs.
* Each file's ``.npy`` is written atomically, so one that exists is complete: a rerun skips it.
* Ranks take every ``world_size``-th file of the sorted list (``files[rank::world_size]``), decided before anything
  is skipped, so no file is done by two ranks whatever the others have finished.
* Before its ``.npy``, each file's record (windows, valid frames, shape, precision) is appended to
  ``<out>/.records/rank<r>.jsonl``; at the end rank 0 merges the records of every file whose ``.npy`` exists into
  ``<out>/manifest.json`` beside the settings (model, layers, recipe, ...) and the versions.
* A file that cannot be decoded is logged, skipped and listed in ``<out>/report.json`` and in the summary.
"""
from __future__ import annotations

import json
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from jukebox.data.files_dataset import find_audio_files, write_json_atomic
from jukebox.embed.embedder import Embedder
from jukebox.embed.recipe import read_clip
from jukebox.utils.atomic import atomic_write
from jukebox.utils.dist_utils import barrier, is_distributed, print_all

__all__ = ["RunSummary", "find_inputs", "embed_dataset", "output_path"]

MANIFEST = "manifest.json"
REPORT = "report.json"
RECORDS = ".records"


@dataclass
class RunSummary:
    """What a run did on all ranks: files embedded now, skipped (done before), failed (file, reason), the seconds
    of audio the embedded windows cover and the wall time (slowest rank)."""

    embedded: int = 0
    skipped: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    audio_seconds: float = 0.0
    seconds: float = 0.0


def find_inputs(audio: str | os.PathLike) -> list[tuple[Path, str]]:
    """(path, relative path) of the audio file ``audio`` or of every audio file under the folder ``audio``."""
    root = Path(audio)
    if root.is_file():
        return [(root, root.name)]
    if not root.is_dir():
        raise FileNotFoundError(f"--audio {os.fspath(audio)!r} does not exist; pass an audio file or a folder")
    files = [(path, path.relative_to(root).as_posix()) for path in find_audio_files(root)]
    if not files:
        raise ValueError(f"--audio {os.fspath(audio)!r} holds no audio files (wav, flac, ogg, opus, mp3, m4a)")
    return files


def output_path(out: str | os.PathLike, rel: str) -> Path:
    """Where the features of input ``rel`` go: ``<out>/<rel>.npy``."""
    return Path(out) / f"{rel}.npy"


class _Clips(Dataset):
    """Decodes and windows each file (in the loader's worker processes): ``(rel, windows, seconds, error)``."""

    def __init__(self, files: list[tuple[Path, str]], embedder: Embedder) -> None:
        self.files, self.sr, self.split = files, embedder.model.sr, embedder.splitter()

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[str, list | None, float, str | None]:
        path, rel = self.files[i]
        try:
            clip = read_clip(path, self.sr)
        except (OSError, ValueError, RuntimeError) as e:  # undecodable: reported, never fatal
            return rel, None, 0.0, " ".join(str(e).split())
        return rel, self.split(clip), len(clip) / self.sr, None


def _as_is(item: Any) -> Any:
    return item


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version
    try:
        jukebox_version = version("jukebox")
    except PackageNotFoundError:
        jukebox_version = "unknown"
    return dict(jukebox=jukebox_version, torch=torch.__version__, numpy=np.__version__,
                python=platform.python_version())


def _read_manifest(out: Path) -> dict | None:
    path = out / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ValueError(f"{path} is unreadable ({e}); remove it or pass another --out") from None


def _check_settings(out: Path, settings: dict) -> None:
    """Refuse to add features made differently to a folder that holds some already."""
    manifest = _read_manifest(out)
    if manifest is None:
        return
    old = manifest.get("settings", {})
    changed = [k for k in settings if k in old and _canonical(old[k]) != _canonical(settings[k])]
    if changed:
        what = ", ".join(f"{k} {old[k]!r} -> {settings[k]!r}" for k in changed)
        raise ValueError(f"--out {os.fspath(out)!r} holds features made with other settings ({what}); pass another "
                         "--out or the same options")


def _canonical(value: Any) -> str:
    """A setting as its JSON text with sorted keys (tuples and lists alike), for comparing with a stored one."""
    return json.dumps(value, sort_keys=True)


def _merge_records(out: Path) -> dict[str, dict]:
    """The last record of every file whose ``.npy`` exists, from every rank's records."""
    records: dict[str, dict] = {}
    for path in sorted((out / RECORDS).glob("rank*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except ValueError:  # a line cut short by a killed process
                continue
            records[record["file"]] = record
    return {rel: r for rel, r in sorted(records.items()) if output_path(out, rel).is_file()}


def _write_manifest(out: Path, settings: dict) -> None:
    files = {rel: {k: v for k, v in r.items() if k != "file"} for rel, r in _merge_records(out).items()}
    write_json_atomic(out / MANIFEST, dict(settings=settings, versions=_versions(), files=files))


def _gather(summary: RunSummary) -> RunSummary:
    """The summaries of all ranks added up (on every rank)."""
    if not is_distributed():
        return summary
    parts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, summary)
    return RunSummary(embedded=sum(p.embedded for p in parts), skipped=sum(p.skipped for p in parts),
                      failed=sorted(f for p in parts for f in p.failed),
                      audio_seconds=sum(p.audio_seconds for p in parts), seconds=max(p.seconds for p in parts))


def embed_dataset(embedder: Embedder, audio: str | os.PathLike, out: str | os.PathLike, workers: int = 2,
                  rank: int = 0, world_size: int = 1, progress: bool = True) -> RunSummary:
    """Embed every audio file of ``audio`` (a file or a folder) into ``out``; see the module docstring.
    Every rank calls it; returns the summary of all ranks."""
    out = Path(out)
    files = find_inputs(audio)
    settings = embedder.settings()
    _check_settings(out, settings)
    out.mkdir(parents=True, exist_ok=True)
    mine = files[rank::world_size]
    todo = [(path, rel) for path, rel in mine if not output_path(out, rel).is_file()]
    summary = RunSummary(skipped=len(mine) - len(todo))
    start = time.perf_counter()
    if todo:
        summary = _embed_files(embedder, todo, out, workers, rank, progress, summary)
    summary.seconds = time.perf_counter() - start
    summary = _gather(summary)
    barrier()
    if rank == 0:
        _write_manifest(out, settings)
        write_json_atomic(out / REPORT, dict(embedded=summary.embedded, skipped=summary.skipped,
                                       failed=[dict(file=f, reason=r) for f, r in summary.failed]))
    return summary


def _embed_files(embedder: Embedder, todo: list[tuple[Path, str]], out: Path, workers: int, rank: int,
                 progress: bool, summary: RunSummary) -> RunSummary:
    loader = DataLoader(_Clips(todo, embedder), batch_size=None, num_workers=workers, collate_fn=_as_is)
    seconds: dict[str, float] = {}
    bar = tqdm(total=len(todo), desc=f"embedding (rank {rank})" if rank else "embedding", unit="file",
               dynamic_ncols=True, disable=not progress, position=rank)

    def decoded():
        for rel, windows, duration, error in loader:
            if error is not None:
                print_all(f"warning: skipping {rel}: {error}", file=sys.stderr)
                summary.failed.append((rel, error))
                bar.update(1)
                continue
            seconds[rel] = duration
            yield rel, windows

    records = out / RECORDS / f"rank{rank}.jsonl"
    records.parent.mkdir(parents=True, exist_ok=True)
    with open(records, "a", encoding="utf-8") as log:
        for rel, embedding in embedder.embed_windows(decoded()):
            record = dict(file=rel, windows=embedding.windows, valid_frames=embedding.valid_frames,
                          shape=list(embedding.features.shape), precision=embedder.precision,
                          seconds=round(seconds[rel], 3))
            log.write(json.dumps(record) + "\n")
            log.flush()
            with atomic_write(output_path(out, rel)) as f:
                np.save(f, embedding.features)
            summary.embedded += 1
            summary.audio_seconds += sum(embedding.valid_frames) / embedder.token_rate
            seconds.pop(rel)
            bar.update(1)
            bar.set_postfix_str(f"{summary.audio_seconds / bar.format_dict['elapsed']:.1f} s audio/s"
                                if bar.format_dict["elapsed"] else "")
    bar.close()
    return summary
