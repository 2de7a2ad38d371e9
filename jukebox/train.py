"""Train a VQ-VAE, or a prior/upsampler on the codes of a frozen VQ-VAE, data-parallel over ranks.

    mpiexec -n {ngpus} python jukebox/train.py --hps=small_vqvae --name=small_vqvae \\
        --sample_length=262144 --bs=4 --audio_files_dir={audio_files_dir} --labels=False \\
        --train --aug_shift --aug_blend

Every ``--key=value`` overrides a hyperparameter (``jukebox/hparams.py``); an unknown key is an
error. Prior mode: ``--prior --levels=L --level=l --restore_vqvae=...``. Runs as plain
``python``, under ``mpiexec -n N`` and under ``torchrun``.

Outputs go to ``{local_logdir}/{name}`` (default ``logs/{name}``): TensorBoard events,
``metrics.jsonl``, ``argv.txt`` and checkpoints. ``checkpoint_latest.pth.tar`` is written every
``save_iters`` steps (together with ``checkpoint_step_{N}.pth.tar``) and when training ends,
fails, or is stopped by SIGTERM/SIGINT. A checkpoint is ``{'hps', 'model', 'opt', 'shd', 'scaler',
'step', 'epoch', 'ema'}``: ``model`` holds the EMA-averaged weights (the ones to sample with, as
in the original) and ``ema`` the live training weights they were swapped with, so resuming with
``--restore_vqvae`` (VQ-VAE) or ``--restore_prior`` (prior) continues exactly where it stopped.
``--reset_step``, ``--reset_opt`` and ``--reset_shd`` skip parts of that; the learning-rate
schedule hparams given now always apply (so ``--lr_use_linear_decay`` can anneal a resumed run).

Stopping: ``epochs`` (epochs ``curr_epoch``.. ``epochs - 1``; ``curr_epoch=-1`` resumes at the
checkpoint's epoch), ``exit_train`` (end the run once the global step reaches it; the step
carries over a resume), ``break_train`` / ``break_test`` (at most that many batches per epoch /
per evaluation).
"""
from __future__ import annotations

import os
import sys

if __package__ in (None, ""):  # run as a script: `python jukebox/train.py`
    _HERE = os.path.dirname(os.path.abspath(__file__))
    if sys.path and os.path.abspath(sys.path[0] or ".") == _HERE:
        sys.path.pop(0)  # jukebox/data, jukebox/utils, ... must not shadow top-level modules
    try:
        import jukebox  # noqa: F401
    except ImportError:
        sys.path.insert(0, os.path.dirname(_HERE))

import inspect
import math
import shutil
import signal
import time
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel

from jukebox.data.data_processor import DataProcessor
from jukebox.hparams import Hyperparams, setup_hparams
from jukebox.make_models import make_prior, make_vqvae, resolve_checkpoint_path
from jukebox.utils.atomic import atomic_write
from jukebox.utils.audio_utils import audio_postprocess, audio_preprocess
from jukebox.utils.checkpoint import load_checkpoint, save_checkpoint
from jukebox.utils.cli import fire_command
from jukebox.utils.dist_utils import allgather, allreduce, barrier, get_world_size, print_once, setup_dist_from_mpi
from jukebox.utils.ema import EMA, default_mu
from jukebox.utils.logger import init_logging, make_logdir
from jukebox.utils.torch_utils import (
    count_parameters,
    float16_params_to_float32,
    grad_norm,
    params_checksum,
    scale_grads,
    zero_grad,
)

__all__ = ["lr_multiplier", "make_optimizer", "make_ema", "make_ddp", "plain_hps", "Trainer", "main", "run"]


# ---------------------------------------------------------------------------------------------
# Optimisation
# ---------------------------------------------------------------------------------------------
def lr_multiplier(step: int, hps: Mapping[str, Any]) -> float:
    """Factor on ``hps.lr`` for the update made at global ``step`` (0-based), as the original:

    ``lr_scale * min(1, step / lr_warmup) * decay`` with ``decay`` one of
    * linear (``lr_use_linear_decay``): ``1 - (step - lr_start_linear_decay) / lr_decay``, in [0, 1];
    * cosine (``lr_use_cosine_decay``): ``(1 + cos(pi * p)) / 2`` with ``p`` that same progress in [0, 1];
    * step decay (default): ``lr_gamma ** (step // lr_decay)``.
    """
    warmup = min(1.0, step / hps["lr_warmup"]) if hps["lr_warmup"] > 0 else 1.0
    progress = max(0.0, step - hps["lr_start_linear_decay"]) / hps["lr_decay"]
    if hps["lr_use_linear_decay"]:
        decay = max(0.0, 1.0 - progress)
    elif hps["lr_use_cosine_decay"]:
        decay = 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    else:
        decay = hps["lr_gamma"] ** (step // hps["lr_decay"])
    return hps["lr_scale"] * warmup * decay


def make_optimizer(model: nn.Module, hps: Mapping[str, Any], amp: bool
                   ) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR, torch.amp.GradScaler]:
    """AdamW over the trainable parameters, the warm-up/decay schedule and a (maybe disabled) loss scaler."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters; is the VQ-VAE frozen (train mode needs --train)?")
    device = params[0].device
    opt = torch.optim.AdamW(params, lr=hps["lr"], betas=(hps["beta1"], hps["beta2"]), eps=hps["eps"],
                            weight_decay=hps["weight_decay"], fused=True if device.type == "cuda" else None)
    shd = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: lr_multiplier(step, hps))
    scaler = torch.amp.GradScaler(device.type, init_scale=hps["fp16_loss_scale"] or 2.0 ** 16,
                                  growth_interval=max(1, int(hps["fp16_scale_window"])), enabled=amp)
    return opt, shd, scaler


def make_ema(model: nn.Module, hps: Mapping[str, Any]) -> EMA | None:
    """EMA of the weights when training with ``hps.ema`` (on CPU, every ``cpu_ema_freq`` steps, with ``cpu_ema``)."""
    if not (hps["ema"] and hps["train"]):
        return None
    mu = hps["mu"] or default_mu(hps["bs"], get_world_size())
    if hps["cpu_ema"]:
        return EMA(model.named_parameters(), mu, freq=hps["cpu_ema_freq"], device="cpu")
    return EMA(model.named_parameters(), mu)


def make_ddp(model: nn.Module, hps: Mapping[str, Any]) -> DistributedDataParallel:
    """Data-parallel wrapper. Buffers are not re-broadcast every forward (the VQ-VAE synchronises its
    codebooks itself); priors may leave parameters unused (e.g. the lyric encoder on some steps)."""
    kwargs = dict(bucket_cap_mb=hps["bucket"], find_unused_parameters=bool(hps["prior"]),
                  gradient_as_bucket_view=True)
    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel.__init__).parameters:
        kwargs["forward_sync_buffers"] = False  # newer torch: broadcast_buffers is deprecated
    else:
        kwargs["broadcast_buffers"] = False
    # Convolution weights with a size-1 axis get gradients with other (equally valid) strides than
    # the bucket views; DDP's one-time performance note about that is noise here.
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    return DistributedDataParallel(model, **kwargs)


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


# ---------------------------------------------------------------------------------------------
# The trainer
# ---------------------------------------------------------------------------------------------
class Trainer:
    """Holds the model, its DDP wrapper, optimiser, EMA, data and logs for one run; ``fit()`` runs it."""

    def __init__(self, hps: Hyperparams, device: torch.device, rank: int, local_rank: int):
        self.hps, self.device, self.rank, self.local_rank = hps, device, rank, local_rank
        self.amp = bool(hps.fp16) and device.type == "cuda"
        if hps.fp16 and not self.amp and rank == 0:
            warnings.warn("fp16/all_fp16 needs a CUDA device; training in float32 on "
                          f"{device.type} instead", stacklevel=2)
        if hps.iters_before_update != 1:
            raise ValueError(f"iters_before_update={hps.iters_before_update} (gradient accumulation) is not "
                             "supported; raise --bs or the number of ranks instead")

        self.data = DataProcessor(hps)
        torch.manual_seed(hps.seed)  # identical initial weights and buffers on every rank
        vqvae = make_vqvae(hps, device)
        print_once(f"Parameters VQVAE: {count_parameters(vqvae)}")
        if hps.prior:
            self.model = make_prior(hps, vqvae, device)
            print_once(f"Parameters Prior: {count_parameters(self.model)}")
        else:
            self.model = vqvae

        # float16 weights (fp16_params) are trained as float32 and stored as float16 again.
        self.fp16_param_names = float16_params_to_float32(self.model) if hps.train else []
        if self.fp16_param_names and rank == 0:
            warnings.warn(f"training {len(self.fp16_param_names)} float16 parameters (fp16_params) as float32 "
                          "master weights; checkpoints store them as float16 again", stacklevel=2)

        self.step, self.epoch = 0, max(hps.curr_epoch, 0)
        self.opt = self.shd = self.scaler = self.ema = None
        self.ddp: nn.Module = self.model
        checkpoint = self._load_resume_checkpoint()
        if hps.train:
            self.opt, self.shd, self.scaler = make_optimizer(self.model, hps, self.amp)
            if get_world_size() > 1:
                self.ddp = make_ddp(self.model, hps)
            self.ema = make_ema(self.model, hps)
        if checkpoint is not None:
            self._restore(checkpoint)

        self.logger, self.metrics = init_logging(hps, rank)
        self.logger.iters = self.step
        self._signal: int | None = None  # set by a signal handler on this rank
        self._stopping = False  # agreed by all ranks: stop after the current step
        self._last_saved_step = self.step
        self.exit_code = 0

    # -- checkpoints --------------------------------------------------------------------------
    @property
    def logdir(self) -> str:
        return self.logger.logdir

    def _load_resume_checkpoint(self) -> dict[str, Any] | None:
        path = self.hps.restore_prior if self.hps.prior else self.hps.restore_vqvae
        if not path:
            return None
        path = resolve_checkpoint_path(path)
        if os.path.isdir(path) or path.endswith(".safetensors"):
            return None  # transformers-format weights: make_* loaded them; there is no training state
        return load_checkpoint(path)

    def _restore(self, ckpt: Mapping[str, Any]) -> None:
        """Resume from a checkpoint whose ``model`` weights ``make_vqvae``/``make_prior`` already loaded."""
        hps = self.hps
        live = ckpt.get("ema")
        if live is not None and hps.train:
            if self.ema is not None:
                self.ema.load_state_dict(live)
                self.ema.swap()  # the model now trains on the live weights, the EMA holds the average
            else:
                with torch.no_grad():
                    for name, p in self.model.named_parameters():
                        if name in live["params"]:
                            p.copy_(live["params"][name])
        if not hps.train:
            return
        if not hps.reset_step:
            self.step = int(ckpt.get("step", 0) or 0)
            if hps.curr_epoch < 0:
                self.epoch = int(ckpt.get("epoch", 0) or 0)
        if not hps.reset_opt and ckpt.get("opt") is not None:
            try:
                self.opt.load_state_dict(ckpt["opt"])
            except (ValueError, KeyError) as e:
                raise ValueError(f"the optimiser state in the checkpoint does not fit this model ({e}); "
                                 "pass --reset_opt=True to start the optimiser afresh") from None
            for group in self.opt.param_groups:  # the optimiser hparams given now apply
                group.update(betas=(hps.beta1, hps.beta2), eps=hps.eps, weight_decay=hps.weight_decay)
            if ckpt.get("scaler") and self.scaler.is_enabled():
                self.scaler.load_state_dict(ckpt["scaler"])
        # The schedule continues where it stopped (from 0 with reset_shd), with the schedule hparams given now.
        position = 0 if hps.reset_shd else int((ckpt.get("shd") or {}).get("last_epoch", self.step))
        self.shd.base_lrs = [hps.lr for _ in self.shd.base_lrs]
        for group in self.opt.param_groups:
            group["initial_lr"] = hps.lr
        self.shd.last_epoch = position - 1
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)`")
            self.shd.step()
        print_once(f"Resuming at step {self.step}, epoch {self.epoch}, lr {self.shd.get_last_lr()[0]:.3g}")

    def checkpoint_state(self) -> dict[str, Any]:
        """The checkpoint dict of the current state (EMA weights as ``model``; see the module docstring)."""
        if self.ema is not None:
            self.ema.swap()
        try:
            model_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
            ema_state = self.ema.state_dict() if self.ema is not None else None
        finally:
            if self.ema is not None:
                self.ema.swap()
        for name in self.fp16_param_names:
            model_state[name] = model_state[name].half()
        return {
            "hps": plain_hps(self.hps), "model": model_state,
            "opt": self.opt.state_dict() if self.opt is not None else None,
            "shd": self.shd.state_dict() if self.shd is not None else None,
            "scaler": self.scaler.state_dict() if self.scaler is not None and self.scaler.is_enabled() else None,
            "step": self.step, "epoch": self.epoch, "ema": ema_state,
        }

    def save(self, with_step: bool) -> None:
        """Write ``checkpoint_latest`` (and ``checkpoint_step_{step}``) atomically; one writer per node.
        Collective-free, so it is safe to call on the way out of an error."""
        self._last_saved_step = self.step
        if self.local_rank != 0 or not self.hps.save or not self.hps.train:
            return
        latest = os.path.join(self.logdir, "checkpoint_latest.pth.tar")
        if with_step:
            stepped = os.path.join(self.logdir, f"checkpoint_step_{self.step}.pth.tar")
            save_checkpoint(stepped, self.checkpoint_state())
            with open(stepped, "rb") as src, atomic_write(latest, fsync=True) as dst:
                shutil.copyfileobj(src, dst)
        else:
            save_checkpoint(latest, self.checkpoint_state())

    # -- one step, one epoch, evaluation ------------------------------------------------------
    def _inputs(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        x, y = batch if isinstance(batch, (tuple, list)) else (batch, None)
        x = audio_preprocess(x.to(self.device, non_blocking=True), self.hps)
        if y is not None:
            y = y.to(self.device, non_blocking=True)
        return x, y

    def _forward(self, module: nn.Module, x: torch.Tensor, y: torch.Tensor | None, decode: bool = False
                 ) -> tuple[torch.Tensor | None, torch.Tensor, dict[str, torch.Tensor]]:
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.amp):
            if self.hps.prior:
                return module(x, y=y, fp16=self.amp, decode=decode)
            return module(x, hps=self.hps, loss_fn=self.hps.loss_fn)

    def train_step(self, x: torch.Tensor, y: torch.Tensor | None, log_io: bool
                   ) -> tuple[dict[str, float] | None, torch.Tensor | None]:
        """Forward, backward, clip and update. Returns this rank's metrics (None when the update was
        skipped for a non-finite or too large gradient norm) and the model output."""
        hps, params = self.hps, self.opt.param_groups[0]["params"]
        x_out, loss, metrics = self._forward(self.ddp, x, y, decode=log_io)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.opt)
        gn = grad_norm(params)
        # One collective decides for every rank: skip this update? stop after it?
        finite = math.isfinite(gn)
        flags = allreduce(torch.tensor([0.0 if finite else 1.0, gn if finite else 0.0,
                                        float(self._signal is not None)], dtype=torch.float64), "max")
        bad, gn, self._stopping = bool(flags[0]), float(flags[1]), bool(flags[2])
        if bad or gn > hps.ignore_grad_norm > 0:
            zero_grad(self.model)
            if self.scaler.is_enabled():
                self.scaler.update()
            print_once(f"\nSkipping update at step {self.step}: grad norm {'inf/nan' if bad else f'{gn:.4g}'}")
            return None, x_out
        if gn > hps.clip:
            scale_grads(params, hps.clip / gn)
        lr = self.shd.get_last_lr()[0]
        self.scaler.step(self.opt)
        self.scaler.update()
        zero_grad(self.model)
        self.shd.step()
        if self.ema is not None:
            self.ema.step()
        self.step += 1
        self.logger.step()
        values = {k: float(v) for k, v in metrics.items() if torch.as_tensor(v).numel() == 1}
        values.update(loss=float(loss.detach()), gn=gn, lr=lr)
        if self.scaler.is_enabled():
            values["lg_loss_scale"] = math.log2(self.scaler.get_scale())
        return values, x_out

    def train_epoch(self) -> dict[str, float]:
        hps = self.hps
        self.ddp.train()
        short = (dict(l="loss", bpd="bpd", gn="gn") if hps.prior else
                 dict(l="loss", rl="recons_loss", sl="spectral_loss", e="entropy", u="usage", gn="gn"))
        for i, batch in self.logger.get_range(self.data.train_loader, desc=f"train {self.epoch}"):
            if i >= hps.break_train or self.step >= hps.exit_train or self._stopping:
                break
            # Augmentation draws depend on (seed, rank, step) only, so a resumed run repeats them.
            torch.manual_seed(hash((hps.seed, self.rank, self.step)) % 2 ** 31)
            x, y = self._inputs(batch)
            log_io = self.step % hps.save_iters == 0
            values, x_out = self.train_step(x, y, log_io)
            if values is None:
                continue
            values = self.metrics.update(values, x.shape[0])
            if self.step % hps.log_steps == 0:
                self.logger.add_scalars(values)
            if log_io:
                self.log_audio("train", x, x_out)
            if hps.save and self.step % hps.save_iters == 0:
                self.save(with_step=True)
            self.logger.set_postfix(**{k: values[v] for k, v in short.items() if v in values})
        self.logger.close_range()
        return self.metrics.averages()

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Average test-split metrics (with the EMA weights when training), logged as ``test_*``."""
        hps = self.hps
        if self.ema is not None:
            self.ema.swap()
        self.model.eval()
        try:
            for i, batch in self.logger.get_range(self.data.test_loader, desc=f"test {self.epoch}"):
                if i >= hps.break_test:
                    break
                x, y = self._inputs(batch)
                x_out, loss, metrics = self._forward(self.model, x, y, decode=(i == 0))
                values = {k: float(v) for k, v in metrics.items() if torch.as_tensor(v).numel() == 1}
                values["loss"] = float(loss.detach())
                values = self.metrics.update(values, x.shape[0], prefix="test_")
                if i == 0:
                    self.log_audio("test", x, x_out)
                self.logger.set_postfix(**{k: values[k] for k in ("loss", "bpd") if k in values})
        finally:
            self.logger.close_range()
            self.model.train(hps.train)
            if self.ema is not None:
                self.ema.swap()
        averages = self.metrics.averages("test_")
        self.logger.add_scalars(averages, prefix="test_", split="test")
        return averages

    @torch.no_grad()
    def log_audio(self, tag: str, x_in: torch.Tensor, x_out: torch.Tensor | None) -> None:
        """Rank 0 logs its inputs, outputs and (VQ-VAE) the reconstruction from each level."""
        if self.rank != 0:
            return
        hps = self.hps
        clips = {f"{tag}_x_in": x_in}
        if x_out is not None:
            clips[f"{tag}_x_out"] = x_out
        if not hps.prior:
            x_in = x_in[: hps.max_log]
            zs = self.model.encode(x_in, start_level=0)
            for level in range(len(zs)):
                clips[f"{tag}_x_ds_start_{level}"] = self.model.decode(zs[level:], start_level=level)
        for name, audio in clips.items():
            self.logger.add_audios(name, audio_postprocess(audio.float(), hps), hps.sr, max_len=hps.max_len,
                                   max_log=hps.max_log)
        self.logger.flush()

    # -- the run ------------------------------------------------------------------------------
    def _on_signal(self, signum: int, frame: Any) -> None:
        if self._signal is not None:
            raise KeyboardInterrupt
        self._signal = signum
        print_once(f"\nReceived signal {signum}: stopping after this step and saving checkpoint_latest")

    def _log_replica_checksums(self) -> None:
        sums = allgather(params_checksum(self.model).to(self.device))
        table = torch.stack([s.cpu() for s in sums])
        self.logger.add_record({"split": "replicas", "checksums": table.tolist()})
        if not torch.equal(table, table[:1].expand_as(table)):
            print_once("WARNING: the model replicas of the ranks differ (checksums "
                       f"{table.tolist()}); data-parallel training went out of sync")

    def fit(self) -> int:
        """Train/evaluate for the configured epochs. Returns the exit status (128 + signal if stopped)."""
        hps = self.hps
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            for epoch in range(self.epoch, hps.epochs):
                self.epoch = epoch
                self.metrics.reset()
                self.data.set_epoch(epoch)
                if hps.train:
                    start = time.time()
                    averages = self.train_epoch()
                    print_once(f"Train epoch {epoch} ({time.time() - start:.0f} s): "
                               + " ".join(f"{k}: {v:0.4f}" for k, v in averages.items()))
                if hps.test:
                    averages = self.evaluate()
                    print_once(f"Test epoch {epoch} ({'EMA' if self.ema else 'model'}): "
                               + " ".join(f"{k}: {v:0.4f}" for k, v in averages.items()))
                if self.step >= hps.exit_train or self._stopping:
                    break
                self.epoch = epoch + 1
                barrier()
        except BaseException:
            if hps.train and self.step > self._last_saved_step:
                print_once("Training failed; saving checkpoint_latest before exiting")
                self.save(with_step=False)
            self.logger.close()
            raise
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
        if hps.train:
            if self.step > self._last_saved_step:
                self.save(with_step=False)
            self._log_replica_checksums()
        self.logger.close()
        if self._stopping:
            return 128 + int(self._signal or signal.SIGTERM)  # another rank was signalled
        return 0


def main(hps: str | tuple[str, ...] = "teeny", port: int = 29500, **overrides: Any) -> Trainer:
    """Parse hparams, set up the process group, build everything and train. Returns the trainer."""
    hps = setup_hparams(hps, overrides)  # before any rendezvous: a typo fails fast on every rank
    make_logdir(hps)  # an unwritable log folder, too, fails before the data and models are prepared
    rank, local_rank, device = setup_dist_from_mpi(port=port)
    hps.ngpus = get_world_size()
    hps.argv = " ".join(sys.argv)
    if "bs_sample" not in overrides:
        hps.bs_sample = hps.bs
    if "nworkers" not in overrides:
        hps.nworkers = hps.bs
    trainer = Trainer(hps, device, rank, local_rank)
    trainer.exit_code = trainer.fit()
    return trainer


def run(hps: str = "teeny", port: int = 29500, **overrides: Any) -> None:
    """Command-line entry point (``fire``): ``python jukebox/train.py --hps=... --key=value ...``."""
    code = main(hps, port, **overrides).exit_code
    if code:
        sys.exit(code)


if __name__ == "__main__":
    fire_command(run, prog="python jukebox/train.py")
