"""The exponential moving average of the weights during training (``hps.ema``), built from hps; the
averaging itself is ``jukebox.utils.ema.EMA``."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch.nn as nn

from jukebox.utils.dist_utils import get_world_size
from jukebox.utils.ema import EMA, default_mu

__all__ = ["make_ema"]


def make_ema(model: nn.Module, hps: Mapping[str, Any]) -> EMA | None:
    """The EMA of ``model``'s trainable weights when training with ``hps.ema`` (None otherwise): decay
    ``hps.mu`` (default from the global batch size); with ``hps.cpu_ema`` kept in CPU memory and updated
    every ``hps.cpu_ema_freq`` steps."""
    if not (hps["ema"] and hps["train"]):
        return None
    mu = hps["mu"] or default_mu(hps["bs"], get_world_size())
    if hps["cpu_ema"]:
        return EMA(model.named_parameters(), mu, freq=hps["cpu_ema_freq"], device="cpu")
    return EMA(model.named_parameters(), mu)
