"""The key/value cache of a transformer while it samples: one buffer pair per layer and the position.

``Transformer.new_cache`` allocates it once per sampling run (zero-filled: rows never written are
the zero keys some patterns see). ``Transformer.forward(x, cache=cache)`` runs the next positions
through it and advances it; nothing else moves the position.
"""
from __future__ import annotations

import torch

from jukebox.transformer.patterns import CacheLayout

__all__ = ["LayerCache", "KVCache"]


class LayerCache:
    """Keys and values ``(N, layout.length, n_state)`` of one layer, laid out by ``layout``."""

    def __init__(self, layout: CacheLayout, n_samples: int, n_state: int, dtype: torch.dtype,
                 device: torch.device | str | None) -> None:
        self.layout = layout
        shape = (n_samples, layout.length, n_state)
        self.key = torch.zeros(shape, dtype=dtype, device=device)
        self.value = torch.zeros(shape, dtype=dtype, device=device)

    def write(self, t0: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store the keys and values ``(N, L, n_state)`` of positions ``t0 .. t0 + L - 1`` at their slots.

        A ring keeps only the last ``length`` of them (the earlier ones would be overwritten)."""
        n_new = k.shape[1]
        if n_new == 1:
            slot = self.layout.slot(t0)
            if slot >= 0:
                self.key[:, slot] = k[:, 0]
                self.value[:, slot] = v[:, 0]
            return
        first = max(t0, t0 + n_new - self.layout.length) if self.layout.ring else t0
        positions = torch.arange(first, t0 + n_new, device=k.device)
        slots = self.layout.slot(positions)
        kept = slots >= 0
        self.key[:, slots[kept]] = k[:, positions[kept] - t0]
        self.value[:, slots[kept]] = v[:, positions[kept] - t0]

    def read(self, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The cached keys and values of positions ``start .. stop - 1``, in order: ``(N, stop - start, n_state)``."""
        slots = self.layout.slot(torch.arange(start, stop, device=self.key.device))
        return self.key[:, slots], self.value[:, slots]

    def visible(self, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The keys and values the query at position t attends to."""
        start, stop = self.layout.window(t)
        step = self.layout.step
        return self.key[:, start:stop:step], self.value[:, start:stop:step]


class KVCache:
    """The caches of every layer of a transformer for ``n_samples`` samples in ``dtype``, and the number
    of positions they hold."""

    def __init__(self, layers: list[LayerCache]) -> None:
        self.layers = layers
        self._position = 0

    @property
    def position(self) -> int:
        """How many positions have been run through the cache."""
        return self._position

    @property
    def n_samples(self) -> int:
        return self.layers[0].key.shape[0]

    @property
    def dtype(self) -> torch.dtype:
        return self.layers[0].key.dtype

    @property
    def nbytes(self) -> int:
        """Memory of the buffers, in bytes."""
        return sum(2 * c.key.numel() * c.key.element_size() for c in self.layers)

    def check(self, n_samples: int, dtype: torch.dtype) -> None:
        """Raise RuntimeError unless the cache is for ``n_samples`` samples computed in ``dtype``."""
        if n_samples != self.n_samples or dtype != self.dtype:
            raise RuntimeError(f"the cache holds {self.n_samples} samples of {self.dtype} but got {n_samples} of "
                               f"{dtype}; start a new cache (Transformer.new_cache) for another batch")

    def advance(self, n: int) -> None:
        """Note that ``n`` more positions have been written."""
        self._position += n
