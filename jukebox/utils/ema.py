"""Exponential moving average of the trainable weights, kept in float32.

After every optimiser step ``ema.step()`` does ``avg = mu * avg + (1 - mu) * w``. With ``freq > 1``
(``cpu_ema``) the average lives in CPU memory and is only updated every ``freq`` steps with
``mu ** freq``, as the original CPU EMA did, which saves accelerator memory and time.

``swap()`` exchanges the averaged and the live weights, so evaluation and checkpoints use the
averaged ones and a second ``swap()`` brings training back.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

__all__ = ["EMA", "default_mu"]


def default_mu(bs: int, world_size: int) -> float:
    """The original's decay when ``hps.mu`` is unset: ``1 - (bs * world_size / 8) / 1000``."""
    return 1.0 - (bs * world_size / 8.0) / 1000.0


class EMA:
    """EMA of the named parameters that require grad.

    ``named_params``: ``model.named_parameters()``. ``device``: where the average lives
    (default: with each parameter). ``freq``: update every ``freq`` steps with ``mu ** freq``.
    """

    def __init__(self, named_params: Iterable[tuple[str, torch.Tensor]], mu: float, freq: int = 1,
                 device: torch.device | str | None = None):
        if not 0.0 <= mu <= 1.0:
            raise ValueError(f"EMA decay mu must be in [0, 1], got {mu}; set --mu or leave it unset for the default")
        if freq < 1:
            raise ValueError(f"EMA update frequency must be >= 1, got {freq} (hps.cpu_ema_freq)")
        pairs = [(n, p) for n, p in named_params if p.requires_grad]
        self.names = [n for n, _ in pairs]
        self.params = [p for _, p in pairs]
        self.mu, self.freq, self.steps = float(mu), int(freq), 0
        with torch.no_grad():
            self.state = [self._float_copy(p, device) for p in self.params]

    @staticmethod
    def _float_copy(p: torch.Tensor, device: torch.device | str | None) -> torch.Tensor:
        return p.detach().to(device=device or p.device, dtype=torch.float32, copy=True)

    @torch.no_grad()
    def step(self) -> None:
        """Fold the current weights into the average (every ``freq``-th call)."""
        self.steps += 1
        if self.steps % self.freq:
            return
        mu = self.mu ** self.freq
        current = [p.detach().to(s.device, torch.float32) for p, s in zip(self.params, self.state)]
        torch._foreach_mul_(self.state, mu)
        torch._foreach_add_(self.state, current, alpha=1.0 - mu)

    @torch.no_grad()
    def swap(self) -> None:
        """Exchange the averaged and the live weights."""
        for p, s in zip(self.params, self.state):
            live = p.detach().to(s.device, torch.float32, copy=True)
            p.copy_(s.to(p.device, p.dtype))
            s.copy_(live)

    def state_dict(self) -> dict[str, Any]:
        """Plain, ``weights_only``-loadable state: ``mu``, ``freq``, ``steps`` and the float32 tensors by name."""
        return {"mu": self.mu, "freq": self.freq, "steps": self.steps,
                "params": {n: s.detach().to("cpu", copy=True) for n, s in zip(self.names, self.state)}}

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the averaged tensors and step count (``mu``/``freq`` stay as configured now)."""
        saved = state["params"]
        missing = [n for n in self.names if n not in saved]
        if missing:
            raise KeyError(f"EMA state lacks {len(missing)} parameters, e.g. {missing[:3]}; "
                           "was the checkpoint made from a different model? Use --ema=False to skip it")
        for n, s in zip(self.names, self.state):
            if saved[n].shape != s.shape:
                raise ValueError(f"EMA tensor {n!r} has shape {tuple(saved[n].shape)}, model has {tuple(s.shape)}")
            s.copy_(saved[n].to(s.device, torch.float32))
        self.steps = int(state.get("steps", 0))
