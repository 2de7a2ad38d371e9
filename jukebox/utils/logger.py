"""Training logs: TensorBoard events, a JSON-lines metrics file and a tqdm bar, written by rank 0.

``Logger`` writes to ``{local_logdir}/{name}``: TensorBoard event files (scalars, audio, text),
``metrics.jsonl`` (one JSON object per logged step, easy to parse without TensorBoard) and
``argv.txt``. ``Metrics`` keeps running averages over the batches of all ranks.
"""
from __future__ import annotations

import errno
import json
import os
import sys
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch
from tqdm import tqdm

from jukebox.utils.atomic import atomic_write, remove_stale_temporaries
from jukebox.utils.dist_utils import allreduce, get_rank, print_once

__all__ = ["Logger", "Metrics", "make_logdir", "init_logging"]


class Logger:
    """Rank-aware writer; every method is a no-op on ranks other than 0. ``iters`` is the global step."""

    def __init__(self, logdir: str, rank: int | None = None):
        self.logdir = logdir
        self.rank = get_rank() if rank is None else rank
        self.iters = 0
        self._bar: tqdm | None = None
        self.sw = None
        self._jsonl = None
        if self.rank == 0:
            from tensorboardX import SummaryWriter
            os.makedirs(logdir, exist_ok=True)
            self.sw = SummaryWriter(logdir)
            self._jsonl = open(os.path.join(logdir, "metrics.jsonl"), "a", encoding="utf-8")

    def step(self) -> None:
        self.iters += 1

    def add_scalar(self, tag: str, value: float) -> None:
        if self.sw is not None:
            self.sw.add_scalar(tag, value, self.iters)

    def add_scalars(self, values: Mapping[str, float], prefix: str = "", split: str = "train") -> None:
        """Log each value as a TensorBoard scalar ``{prefix}{key}`` and as one ``metrics.jsonl`` line."""
        if self.rank != 0:
            return
        for key, val in values.items():
            self.sw.add_scalar(f"{prefix}{key}", val, self.iters)
        self.add_record({"split": split, **{k: float(v) for k, v in values.items()}})

    def add_record(self, record: Mapping[str, Any]) -> None:
        """Append ``{"step": iters, **record}`` as one line of ``metrics.jsonl``."""
        if self._jsonl is not None:
            self._jsonl.write(json.dumps({"step": self.iters, **record}) + "\n")
            self._jsonl.flush()

    def add_text(self, tag: str, text: str) -> None:
        if self.sw is not None:
            self.sw.add_text(tag, text, self.iters)

    def add_audios(self, tag: str, audios: torch.Tensor, sample_rate: int, max_len: float | None = None,
                   max_log: int = 8) -> None:
        """Log up to ``max_log`` clips of ``audios`` ``(N, T)`` or ``(N, T, 1)``, each cut to ``max_len`` seconds."""
        if self.sw is None:
            return
        audios = audios.detach().float().cpu()
        if audios.dim() == 3:
            audios = audios.mean(dim=-1)
        limit = int(max_len * sample_rate) if max_len else audios.shape[1]
        for i in range(min(audios.shape[0], max_log)):
            clip = audios[i, :limit].clamp(-1.0, 1.0).numpy()
            self.sw.add_audio(f"{i}/{tag}", clip, self.iters, sample_rate=sample_rate)

    def get_range(self, loader: Iterable, desc: str = "") -> Iterator:
        """``enumerate(loader)``, with a progress bar on rank 0."""
        if self.rank == 0:
            self._bar = tqdm(loader, desc=desc, leave=True, file=sys.stdout, dynamic_ncols=True,
                             bar_format="{desc} {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}{postfix}]")
            return enumerate(self._bar)
        return enumerate(loader)

    def set_postfix(self, **values: float) -> None:
        if self._bar is not None:
            self._bar.set_postfix({k: f"{v:.4g}" for k, v in values.items()}, refresh=False)

    def close_range(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def flush(self) -> None:
        if self.sw is not None:
            self.sw.flush()

    def close(self) -> None:
        self.close_range()
        if self.sw is not None:
            self.sw.close()
            self.sw = None
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None


class Metrics:
    """Running averages of per-batch metrics over all ranks, weighted by batch size."""

    def __init__(self) -> None:
        self.sum: dict[str, float] = {}
        self.n: dict[str, float] = {}

    def update(self, values: Mapping[str, float], batch: int, prefix: str = "") -> dict[str, float]:
        """Add this rank's batch means; returns the means over this step's batches of all ranks.

        One collective per call: every rank must call it with the same keys.
        """
        keys = sorted(values)
        local = torch.tensor([float(values[k]) * batch for k in keys] + [float(batch)], dtype=torch.float64)
        total = allreduce(local, "sum")
        n = float(total[-1])
        out = {}
        for k, s in zip(keys, total[:-1].tolist()):
            tag = prefix + k
            self.sum[tag] = self.sum.get(tag, 0.0) + s
            self.n[tag] = self.n.get(tag, 0.0) + n
            out[k] = s / n
        return {k: out[k] for k in values}

    def avg(self, tag: str) -> float:
        return self.sum[tag] / self.n[tag] if tag in self.sum else 0.0

    def averages(self, prefix: str = "") -> dict[str, float]:
        """Averages of all tags starting with ``prefix`` (prefix stripped)."""
        return {t[len(prefix):]: self.avg(t) for t in self.sum if t.startswith(prefix)}

    def reset(self) -> None:
        self.sum, self.n = {}, {}


def _describe(hps: Mapping[str, Any]) -> str:
    return "\n".join(f"{k}: {v!r}" for k, v in sorted(hps.items()))


def make_logdir(hps: Mapping[str, Any]) -> str:
    """Create ``{local_logdir}/{name}`` and check that it is writable; call it before any long work so a bad
    folder fails at once rather than at the first checkpoint."""
    if not hps.get("name"):
        raise ValueError("training needs a run name: pass --name=my_run (logs go to {local_logdir}/{name})")
    logdir = os.path.join(hps.get("local_logdir") or "logs", hps["name"])
    try:
        os.makedirs(logdir, exist_ok=True)
    except OSError as e:
        raise OSError(e.errno, f"cannot create the log folder {logdir!r}: {e.strerror}; pass another "
                               "--local_logdir or --name") from e
    if not os.access(logdir, os.W_OK | os.X_OK):
        raise PermissionError(errno.EACCES, f"the log folder {logdir!r} is not writable; pass another "
                                            "--local_logdir or --name")
    return logdir


def init_logging(hps: Mapping[str, Any], rank: int | None = None) -> tuple[Logger, Metrics]:
    """Create ``{local_logdir}/{name}``, record ``argv`` and the hparams, and return a logger and metrics."""
    logdir = make_logdir(hps)
    logger = Logger(logdir, rank)
    if logger.rank == 0:
        # Nothing writes checkpoints yet: temporaries in the folder are leftovers of a killed run.
        remove_stale_temporaries(logdir, "checkpoint_*")
        with atomic_write(os.path.join(logdir, "argv.txt"), "w", encoding="utf-8") as f:
            f.write(str(hps.get("argv", "")) + "\n")
        logger.add_text("hps", _describe(hps))
        print_once(f"Logging to {logdir}")
    return logger, Metrics()
