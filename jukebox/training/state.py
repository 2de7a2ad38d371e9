"""The training state of a run: the model(s) built from hps, the optimiser and EMA, the step and epoch
reached; restored from one read of the resume checkpoint and written back as checkpoints.

A checkpoint is ``{'hps', 'model', 'opt', 'shd', 'scaler', 'step', 'epoch', 'ema'}``: ``model`` holds the
EMA-averaged weights (the ones to sample with, as in the original) and ``ema`` the live training weights
they were swapped with, so that resuming continues exactly where the run stopped.
"""
from __future__ import annotations

import os
import shutil
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from jukebox.hparams import Hyperparams
from jukebox.make_models import make_prior, make_vqvae, read_checkpoint
from jukebox.training.ema import make_ema
from jukebox.training.optim import make_optimizer
from jukebox.transformer.ops import float16_weight_names
from jukebox.utils.atomic import atomic_write
from jukebox.utils.checkpoint import save_checkpoint
from jukebox.utils.dist_utils import get_rank, print_once
from jukebox.utils.torch_utils import count_parameters

__all__ = ["TrainingState", "plain_hps", "write_checkpoint"]

_DROP = object()  # marks hparam values that are not plain data


def _plain(v: Any) -> Any:
    if isinstance(v, np.generic):  # before float: np.float64 is a float subclass
        return v.item()
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, (list, tuple)):
        items = [_plain(x) for x in v]
        return _DROP if any(x is _DROP for x in items) else (tuple(items) if isinstance(v, tuple) else items)
    if isinstance(v, Mapping):
        items = {str(k): _plain(x) for k, x in v.items()}
        return _DROP if any(x is _DROP for x in items.values()) else items
    return _DROP


def plain_hps(hps: Mapping[str, Any]) -> dict[str, Any]:
    """``hps`` as a dict of plain values (numbers, strings, None, lists/tuples/dicts of them) that
    ``torch.load(weights_only=True)`` accepts; entries holding other objects are left out."""
    out = {k: _plain(v) for k, v in hps.items()}
    return {k: v for k, v in out.items() if v is not _DROP}


def write_checkpoint(logdir: str, checkpoint: Mapping[str, Any], step: int | None = None) -> None:
    """Write ``checkpoint_latest.pth.tar`` in ``logdir`` atomically; with ``step``, first
    ``checkpoint_step_{step}.pth.tar``, then a copy of it over ``checkpoint_latest``. Either write may fail
    and leave the file it replaces intact."""
    latest = os.path.join(logdir, "checkpoint_latest.pth.tar")
    if step is None:
        save_checkpoint(latest, checkpoint)
        return
    stepped = os.path.join(logdir, f"checkpoint_step_{step}.pth.tar")
    save_checkpoint(stepped, checkpoint)
    with open(stepped, "rb") as src, atomic_write(latest, fsync=True) as dst:
        shutil.copyfileobj(src, dst)


class TrainingState:
    """The model being trained and everything its checkpoint holds.

    ``model`` is the VQ-VAE, or with ``hps.prior`` the prior of ``hps.level`` on the frozen ``vqvae``.
    When training (``hps.train``) there are an ``optimiser`` (``jukebox.training.optim``) and, with
    ``hps.ema``, an ``ema``; both None otherwise. ``step`` counts the updates made, ``epoch`` is the
    current epoch. The resume checkpoint (``hps.restore_prior`` in prior mode, else ``hps.restore_vqvae``)
    is read once: the model is built with its weights, then its live weights, step, epoch, optimiser,
    schedule and scaler continue (``hps.reset_step``, ``reset_opt`` and ``reset_shd`` skip parts).
    Training keeps all weights in float32; with ``hps.fp16_params`` checkpoints hold the transformers'
    linear weights in float16.
    """

    def __init__(self, hps: Hyperparams, device: torch.device, amp: bool = False) -> None:
        self.hps = hps
        path = hps.restore_prior if hps.prior else hps.restore_vqvae
        checkpoint = read_checkpoint(path) if path else None
        torch.manual_seed(hps.seed)  # identical initial weights and buffers on every rank
        self.vqvae = make_vqvae(hps, device, checkpoint=None if hps.prior else checkpoint)
        print_once(f"Parameters VQVAE: {count_parameters(self.vqvae)}")
        self.model = self.vqvae
        if hps.prior:
            self.model = make_prior(hps, self.vqvae, device, checkpoint=checkpoint)
            print_once(f"Parameters Prior: {count_parameters(self.model)}")
        self.float16_names = float16_weight_names(self.model) if hps.fp16_params and hps.train else set()
        if self.float16_names and get_rank() == 0:
            warnings.warn(f"training {len(self.float16_names)} float16 parameters (fp16_params) as float32 "
                          "master weights; checkpoints store them as float16", stacklevel=2)

        self.step, self.epoch = 0, max(hps.curr_epoch, 0)
        self.optimiser = make_optimizer(self.model, hps, amp) if hps.train else None
        self.ema = make_ema(self.model, hps)
        # A transformers-format checkpoint holds weights only; they are in the model already.
        if checkpoint is not None and "model" in checkpoint and hps.train:
            self._resume(checkpoint)

    def _resume(self, checkpoint: Mapping[str, Any]) -> None:
        """Continue the run of ``checkpoint``, whose ``model`` weights the model was built with."""
        hps = self.hps
        if checkpoint.get("ema") is not None:
            self._load_live_weights(checkpoint["ema"])
        if not hps.reset_step:
            self.step = int(checkpoint.get("step", 0) or 0)
            if hps.curr_epoch < 0:
                self.epoch = int(checkpoint.get("epoch", 0) or 0)
        self.optimiser.resume(checkpoint, hps, self.step)
        print_once(f"Resuming at step {self.step}, epoch {self.epoch}, lr {self.optimiser.lr:.3g}")

    @torch.no_grad()
    def _load_live_weights(self, live: Mapping[str, Any]) -> None:
        """Train on the checkpoint's live weights; its averaged ones (now in the model) go into the EMA."""
        if self.ema is not None:
            self.ema.load_state_dict(live)
            self.ema.swap()
            return
        for name, p in self.model.named_parameters():
            if name in live["params"]:
                p.copy_(live["params"][name])

    def checkpoint(self) -> dict[str, Any]:
        """The checkpoint dict of the current state (see the module docstring)."""
        if self.ema is not None:
            self.ema.swap()
        try:
            model_state = {k: v.detach().half() if k in self.float16_names else v.detach().clone()
                           for k, v in self.model.state_dict().items()}
            ema_state = self.ema.state_dict() if self.ema is not None else None
        finally:
            if self.ema is not None:
                self.ema.swap()
        optimiser = (self.optimiser.state_dict() if self.optimiser is not None else
                     {"opt": None, "shd": None, "scaler": None})
        return {"hps": plain_hps(self.hps), "model": model_state, **optimiser,
                "step": self.step, "epoch": self.epoch, "ema": ema_state}
