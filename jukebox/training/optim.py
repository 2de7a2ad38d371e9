"""AdamW, the warm-up/decay learning-rate schedule and the loss scaler of training, built from hps, with
their checkpoint entries ``opt``, ``shd`` and ``scaler``."""
from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from typing import Any, NamedTuple

import torch
import torch.nn as nn

__all__ = ["lr_multiplier", "Optimiser", "make_optimizer"]


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


class Optimiser(NamedTuple):
    """AdamW (``opt``), its learning-rate schedule (``shd``) and the loss scaler (``scaler``, disabled
    without mixed precision); unpacks as ``opt, shd, scaler``."""

    opt: torch.optim.AdamW
    shd: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler

    @property
    def lr(self) -> float:
        """The learning rate of the next update."""
        return self.shd.get_last_lr()[0]

    def state_dict(self) -> dict[str, Any]:
        """The checkpoint entries ``opt``, ``shd`` and ``scaler`` (None when the scaler is disabled)."""
        return {"opt": self.opt.state_dict(), "shd": self.shd.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None}

    def resume(self, checkpoint: Mapping[str, Any], hps: Mapping[str, Any], step: int) -> None:
        """Continue from the entries of ``checkpoint``: the optimiser and scaler state (unless
        ``hps.reset_opt``) and the schedule's position (its saved one, else ``step``; 0 with
        ``hps.reset_shd``). The optimiser and schedule hparams in ``hps`` apply from here on, so that
        e.g. ``--lr_use_linear_decay`` can anneal a resumed run."""
        if not hps["reset_opt"] and checkpoint.get("opt") is not None:
            try:
                self.opt.load_state_dict(checkpoint["opt"])
            except (ValueError, KeyError) as e:
                raise ValueError(f"the optimiser state in the checkpoint does not fit this model ({e}); "
                                 "pass --reset_opt=True to start the optimiser afresh") from None
            for group in self.opt.param_groups:
                group.update(betas=(hps["beta1"], hps["beta2"]), eps=hps["eps"], weight_decay=hps["weight_decay"])
            if checkpoint.get("scaler") and self.scaler.is_enabled():
                self.scaler.load_state_dict(checkpoint["scaler"])
        position = 0 if hps["reset_shd"] else int((checkpoint.get("shd") or {}).get("last_epoch", step))
        self.shd.base_lrs = [hps["lr"] for _ in self.shd.base_lrs]
        for group in self.opt.param_groups:
            group["initial_lr"] = hps["lr"]
        self.shd.last_epoch = position - 1
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)`")
            self.shd.step()


def make_optimizer(model: nn.Module, hps: Mapping[str, Any], amp: bool) -> Optimiser:
    """AdamW over the trainable parameters of ``model``, the schedule of :func:`lr_multiplier` and a loss
    scaler that is enabled with ``amp`` (mixed precision)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters; is the VQ-VAE frozen (train mode needs --train)?")
    device = params[0].device
    opt = torch.optim.AdamW(params, lr=hps["lr"], betas=(hps["beta1"], hps["beta2"]), eps=hps["eps"],
                            weight_decay=hps["weight_decay"], fused=True if device.type == "cuda" else None)
    shd = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: lr_multiplier(step, hps))
    scaler = torch.amp.GradScaler(device.type, init_scale=hps["fp16_loss_scale"] or 2.0 ** 16,
                                  growth_interval=max(1, int(hps["fp16_scale_window"])), enabled=amp)
    return Optimiser(opt, shd, scaler)
