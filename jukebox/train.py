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
fails, or is stopped by SIGTERM/SIGINT. Resuming with ``--restore_vqvae`` (VQ-VAE) or
``--restore_prior`` (prior) continues exactly where it stopped; ``--reset_step``, ``--reset_opt`` and
``--reset_shd`` skip parts of that; the learning-rate schedule hparams given now always apply (so
``--lr_use_linear_decay`` can anneal a resumed run). What a checkpoint holds, and how a run is built and
restored from it: ``jukebox/training/state.py``; the optimiser, EMA and DDP parts beside it.

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

import math
import signal
import time
import warnings
from typing import Any

import torch
import torch.nn as nn

from jukebox.data.data_processor import DataProcessor
from jukebox.hparams import Hyperparams, setup_hparams
from jukebox.training.ddp import make_ddp
from jukebox.training.ema import make_ema
from jukebox.training.optim import lr_multiplier, make_optimizer
from jukebox.training.state import TrainingState, plain_hps, write_checkpoint
from jukebox.utils.audio_utils import audio_preprocess
from jukebox.utils.cli import fire_command
from jukebox.utils.dist_utils import (
    allgather,
    allreduce,
    barrier,
    finish_dist,
    get_world_size,
    print_once,
    setup_dist_from_mpi,
)
from jukebox.utils.logger import init_logging, make_logdir
from jukebox.utils.torch_utils import grad_norm, params_checksum, scale_grads, zero_grad
from jukebox.vqvae.losses import make_vqvae_loss

# The training parts live in jukebox/training; these names are importable from here too.
__all__ = ["lr_multiplier", "make_optimizer", "make_ema", "make_ddp", "plain_hps", "Trainer", "main", "run"]


# ---------------------------------------------------------------------------------------------
# The trainer
# ---------------------------------------------------------------------------------------------
class Trainer:
    """The training loop of one run over its training state (``jukebox.training.state``), data and logs;
    ``fit()`` runs it."""

    def __init__(self, hps: Hyperparams, device: torch.device, rank: int, local_rank: int):
        self.hps, self.device, self.rank, self.local_rank = hps, device, rank, local_rank
        self.amp = bool(hps.fp16) and device.type == "cuda"
        if hps.fp16 and not self.amp and rank == 0:
            warnings.warn("fp16/all_fp16 needs a CUDA device; training in float32 on "
                          f"{device.type} instead", stacklevel=2)
        if hps.iters_before_update != 1:
            raise ValueError(f"iters_before_update={hps.iters_before_update} (gradient accumulation) is not "
                             "supported; raise --bs or the number of ranks instead")

        self.data = DataProcessor(hps)  # sets hps.bandwidth, which the VQ-VAE loss needs
        self.state = TrainingState(hps, device, self.amp)
        self.model = self.state.model
        self.ddp: nn.Module = make_ddp(self.model, hps) if hps.train and get_world_size() > 1 else self.model
        self.loss = None if hps.prior else make_vqvae_loss(hps)

        self.logger, self.metrics = init_logging(hps, rank)
        self.logger.iters = self.step
        self._signal: int | None = None  # set by a signal handler on this rank
        self._stopping = False  # agreed by all ranks: stop after the current step
        self._last_saved_step = self.step
        self.exit_code = 0

    @property
    def step(self) -> int:
        """Updates made so far in this run, counting those before a resume."""
        return self.state.step

    @property
    def logdir(self) -> str:
        return self.logger.logdir

    def save(self, with_step: bool) -> None:
        """Write ``checkpoint_latest`` (and ``checkpoint_step_{step}``) atomically; one writer per node.
        Collective-free, so it is safe to call on the way out of an error."""
        self._last_saved_step = self.step
        if self.local_rank != 0 or not self.hps.save or not self.hps.train:
            return
        write_checkpoint(self.logdir, self.state.checkpoint(), self.step if with_step else None)

    # -- one step, one epoch, evaluation ------------------------------------------------------
    def _inputs(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        x, y = batch if isinstance(batch, (tuple, list)) else (batch, None)
        x = audio_preprocess(x.to(self.device, non_blocking=True), self.hps)
        if y is not None:
            if self.hps.prior:
                self.model.check_inputs(y=y)  # where labels enter, on the host: no device sync
            y = y.to(self.device, non_blocking=True)
        return x, y

    def _forward(self, module: nn.Module, x: torch.Tensor, y: torch.Tensor | None, decode: bool = False
                 ) -> tuple[torch.Tensor | None, torch.Tensor, dict[str, torch.Tensor]]:
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.amp):
            if self.hps.prior:
                return module(x, y=y, fp16=self.amp, decode=decode)
            return module(x, loss=self.loss)

    def train_step(self, x: torch.Tensor, y: torch.Tensor | None, log_io: bool
                   ) -> tuple[dict[str, float] | None, torch.Tensor | None]:
        """Forward, backward, clip and update. Returns this rank's metrics (None when the update was
        skipped for a non-finite or too large gradient norm) and the model output."""
        hps, (opt, shd, scaler), ema = self.hps, self.state.optimiser, self.state.ema
        params = opt.param_groups[0]["params"]
        x_out, loss, metrics = self._forward(self.ddp, x, y, decode=log_io)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        gn = grad_norm(params)
        # One collective decides for every rank: skip this update? stop after it?
        finite = math.isfinite(gn)
        flags = allreduce(torch.tensor([0.0 if finite else 1.0, gn if finite else 0.0,
                                        float(self._signal is not None)], dtype=torch.float64), "max")
        bad, gn, self._stopping = bool(flags[0]), float(flags[1]), bool(flags[2])
        if bad or gn > hps.ignore_grad_norm > 0:
            zero_grad(self.model)
            if scaler.is_enabled():
                scaler.update()
            print_once(f"\nSkipping update at step {self.step}: grad norm {'inf/nan' if bad else f'{gn:.4g}'}")
            return None, x_out
        if gn > hps.clip:
            scale_grads(params, hps.clip / gn)
        lr = self.state.optimiser.lr
        scaler.step(opt)
        scaler.update()
        zero_grad(self.model)
        shd.step()
        if ema is not None:
            ema.step()
        self.state.step += 1
        self.logger.step()
        values = {k: float(v) for k, v in metrics.items() if torch.as_tensor(v).numel() == 1}
        values.update(loss=float(loss.detach()), gn=gn, lr=lr)
        if scaler.is_enabled():
            values["lg_loss_scale"] = math.log2(scaler.get_scale())
        return values, x_out

    def train_epoch(self) -> dict[str, float]:
        hps = self.hps
        self.ddp.train()
        short = (dict(l="loss", bpd="bpd", gn="gn") if hps.prior else
                 dict(l="loss", rl="recons_loss", sl="spectral_loss", e="entropy", u="usage", gn="gn"))
        for i, batch in self.logger.get_range(self.data.train_loader, desc=f"train {self.state.epoch}"):
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
        hps, ema = self.hps, self.state.ema
        if ema is not None:
            ema.swap()
        self.model.eval()
        try:
            for i, batch in self.logger.get_range(self.data.test_loader, desc=f"test {self.state.epoch}"):
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
            if ema is not None:
                ema.swap()
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
            self.logger.add_audios(name, audio.float(), hps.sr, max_len=hps.max_len, max_log=hps.max_log)
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
            for epoch in range(self.state.epoch, hps.epochs):
                self.state.epoch = epoch
                self.metrics.reset()
                self.data.set_epoch(epoch)
                if hps.train:
                    start = time.time()
                    averages = self.train_epoch()
                    print_once(f"Train epoch {epoch} ({time.time() - start:.0f} s): "
                               + " ".join(f"{k}: {v:0.4f}" for k, v in averages.items()))
                if hps.test:
                    averages = self.evaluate()
                    print_once(f"Test epoch {epoch} ({'EMA' if self.state.ema else 'model'}): "
                               + " ".join(f"{k}: {v:0.4f}" for k, v in averages.items()))
                if self.step >= hps.exit_train or self._stopping:
                    break
                self.state.epoch = epoch + 1
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
    if trainer.exit_code == 0:
        finish_dist()
    return trainer


def run(hps: str = "teeny", port: int = 29500, **overrides: Any) -> None:
    """Command-line entry point (``fire``): ``python jukebox/train.py --hps=... --key=value ...``."""
    code = main(hps, port, **overrides).exit_code
    if code:
        sys.exit(code)


if __name__ == "__main__":
    fire_command(run, prog="python jukebox/train.py")
