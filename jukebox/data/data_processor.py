"""Train/test loaders over a ``FilesAudioDataset`` and the dataset's loss normalisers.

The dataset's chunks are split in order: the first ``train_test_split`` fraction trains, the
rest tests (deterministic, no shuffling before the split). Each rank reads its own share of
each split through a ``DistributedSampler`` (one replica when not distributed), reshuffled
every epoch by ``set_epoch``.
"""
from __future__ import annotations

import signal
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler

from jukebox.data.files_dataset import FilesAudioDataset, dataset_cache_file, read_json, write_json_atomic
from jukebox.utils.audio_utils import audio_preprocess, calculate_bandwidth
from jukebox.utils.dist_utils import get_rank, get_world_size, is_distributed, print_once

__all__ = ["DataProcessor", "OffsetDataset", "collate", "get_bandwidth", "audio_preprocess"]


def _ignore_stop_signals(worker_id: int) -> None:
    """Loader workers leave Ctrl-C/SIGTERM to the training process: a terminal or job scheduler signals
    the whole process group, and a worker killed by it would abort the checkpoint the trainer saves on
    that signal. Workers still end with their loader (or when the trainer dies)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


class OffsetDataset(Dataset):
    """Items ``[start, end)`` of ``dataset`` renumbered from 0; ``test`` is passed on to get_item."""

    def __init__(self, dataset: FilesAudioDataset, start: int, end: int, test: bool = False) -> None:
        super().__init__()
        if not 0 <= start <= end <= len(dataset):
            raise ValueError(f"[{start}, {end}) is not a range of items of a dataset of {len(dataset)}")
        self.dataset, self.start, self.end, self.test = dataset, start, end, test

    def __len__(self) -> int:
        return self.end - self.start

    def __getitem__(self, item: int) -> Any:
        if not 0 <= item < len(self):
            raise IndexError(f"item {item} out of range for a split of {len(self)} chunks")
        return self.dataset.get_item(self.start + item, test=self.test)


def collate(batch: list) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """Stack items: ``(N, T, C)`` audio, or ``((N, T, C) audio, (N, label_len) y)`` for labelled items."""
    if isinstance(batch[0], tuple):
        return tuple(torch.from_numpy(np.stack(parts)) for parts in zip(*batch))
    return torch.from_numpy(np.stack(batch))


def get_bandwidth(dataset: FilesAudioDataset, hps: Mapping[str, Any]) -> dict[str, float]:
    """``calculate_bandwidth`` of the dataset, cached in JSON beside the duration cache.

    The key holds sr, sample_length, channels, the measured duration and a fingerprint of the
    files. Rank 0 reads the cache and tells the others; on a miss every rank takes part in the
    computation (it all-reduces) and rank 0 writes the result.
    """
    duration = 1 if hps.get("prior") else 600  # a prior never uses it, so the original only sampled 1 s
    key = (f"sr={dataset.sr},sample_length={dataset.sample_length},channels={dataset.channels},"
           f"duration={duration},files={dataset.fingerprint()}")
    path = dataset_cache_file(dataset.root, "bandwidth")
    cached = [read_json(path).get(key) if get_rank() == 0 else None]
    if is_distributed():
        dist.broadcast_object_list(cached, src=0)
    if cached[0] is not None:
        print_once(f"bandwidth (cached in {path}): {cached[0]}")
        return dict(cached[0])
    bandwidth = calculate_bandwidth(dataset, hps, duration=duration)
    if get_rank() == 0:
        try:
            write_json_atomic(path, {**read_json(path), key: bandwidth})
        except OSError as e:
            print_once(f"could not cache the bandwidth in {path}: {e}")
    return bandwidth


class DataProcessor:
    """Builds ``dataset``, ``train_dataset``/``test_dataset``, their samplers and loaders from hps,
    and sets ``hps.bandwidth``. Batches are ``(N, T, C)`` float32 tensors, or ``(x, y)``
    with labels."""

    def __init__(self, hps: Any) -> None:
        self.dataset = FilesAudioDataset(hps)
        hps.bandwidth = self.bandwidth = get_bandwidth(self.dataset, hps)
        self.create_datasets(hps)
        self.create_samplers(hps)
        self.create_data_loaders(hps)
        print_once(f"train: {len(self.train_dataset)} chunks, {len(self.train_loader)} batches of {hps.bs} a rank; "
                   f"test: {len(self.test_dataset)} chunks, {len(self.test_loader)} batches a rank")

    def create_datasets(self, hps: Any) -> None:
        split, n = hps.train_test_split, len(self.dataset)
        if not 0.0 < split <= 1.0:
            raise ValueError(f"train_test_split must be in (0, 1], got {split}")
        for name in ("train_shrink_factor", "test_shrink_factor"):
            if not 0.0 < hps[name] <= 1.0:
                raise ValueError(f"{name} must be in (0, 1], got {hps[name]}")
        train_len = int(n * split)
        n_train = int(train_len * hps.train_shrink_factor)
        n_test = int((n - train_len) * hps.test_shrink_factor)
        if n_train < hps.bs * get_world_size():
            raise ValueError(f"{n_train} training chunks cannot fill one batch of bs={hps.bs} on each of "
                             f"{get_world_size()} ranks; add audio, shorten sample_length or lower bs")
        self.train_dataset = OffsetDataset(self.dataset, 0, n_train, test=False)
        self.test_dataset = OffsetDataset(self.dataset, train_len, train_len + n_test, test=True)

    def create_samplers(self, hps: Any) -> None:
        rank, world = get_rank(), get_world_size()
        self.train_sampler = DistributedSampler(self.train_dataset, num_replicas=world, rank=rank, shuffle=True,
                                                seed=hps.seed)
        self.test_sampler = DistributedSampler(self.test_dataset, num_replicas=world, rank=rank, shuffle=False)

    def create_data_loaders(self, hps: Any) -> None:
        common = dict(batch_size=hps.bs, num_workers=hps.nworkers, collate_fn=collate,
                      pin_memory=torch.cuda.is_available(), persistent_workers=hps.nworkers > 0,
                      worker_init_fn=_ignore_stop_signals)
        self.train_loader = DataLoader(self.train_dataset, sampler=self.train_sampler, drop_last=True, **common)
        self.test_loader = DataLoader(self.test_dataset, sampler=self.test_sampler, drop_last=False, **common)

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle the training order for ``epoch`` (the same order on every run with the same seed)."""
        self.train_sampler.set_epoch(epoch)
        self.test_sampler.set_epoch(epoch)
