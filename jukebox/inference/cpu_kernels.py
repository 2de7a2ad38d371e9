"""Numba kernels for float32 sampling steps on CPU: products of a few rows with a large weight
at memory bandwidth, and one-query attention over the key/value cache.

A sampling step multiplies ``n_samples`` rows (one to a few) by every weight matrix once, so its
floor is the time to read the weights. The CPU BLAS does not get there for so few rows: it
repacks the weight on every call and reads it at half the bandwidth or less (about 6 GB/s for 4
rows on the 2-core development machine, against 25 GB/s for a plain copy).

Here the weight is stored for the run as contiguous column tiles ``(n_out / T, n_in, T)`` and a
small numba kernel streams each tile once, keeping the ``M x T`` partial sums of its tile in
cache. Every output is the float32 dot product over ``n_in`` accumulated in order (fused
multiply-adds allowed), so it differs from ``addmm`` by float32 rounding only.

A step's other work is a few hundred tiny tensor operations, each costing more in dispatch than in
arithmetic; the kernels also take the layer norm before a product, the activation and residual
add after it, and the cache write with the whole attention of one new position (``CacheAttention``).

The kernels need numba (installed with librosa) with a parallel threading layer (OpenMP or TBB);
numba's fallback ``workqueue`` layer is slower than the BLAS, so then ``available()`` is False
and steps use another backend (``jukebox.inference.cpu_backends``) and torch's attention.
"""
from __future__ import annotations

import functools
import warnings

import numpy as np
import torch

__all__ = ["TILE", "available", "backend", "match_threads", "TiledLinear", "CacheAttention", "attention"]

TILE = 64  # columns per tile: M x 64 float32 sums stay in the L1 cache for any batch of samples
_NONE_1D, _NONE_2D = np.empty(0, np.float32), np.empty((0, 0), np.float32)  # "no norm", "no residual"


def _build_kernels():
    import numba

    from jukebox.inference import numba_kernels  # compiles on first call, or loads the cached compilation

    return numba, numba_kernels.tiled_linear, numba_kernels.cached_attention


@functools.cache
def _kernels():
    """``(numba, tiled_linear, cached_attention)`` compiled and checked on tiny inputs, or None (with a
    warning) when numba is missing, can not compile here or has no parallel threading layer."""
    try:
        numba, kernel, attention_kernel = _build_kernels()
        out = np.empty((1, 2), dtype=np.float32)
        kernel(np.ones((1, 2), np.float32), _NONE_1D, _NONE_1D, 0.0, np.ones((1, 2, 2), np.float32),
               np.zeros(2, np.float32), False, _NONE_2D, out)  # compiles, starts the threads
        cache = np.ones((1, 2, 2), np.float32)
        attended = np.empty((1, 2), np.float32)
        attention_kernel(np.ones((1, 6), np.float32), cache, cache.copy(), 1, 0, 2, 1, 1, 1.0, attended)
    except Exception as error:  # noqa: BLE001 (no numba, or it can not compile or run here: fall back)
        _note(f"numba kernels unavailable ({error}); CPU steps use the other backends")
        return None
    if numba.threading_layer() == "workqueue" or not (out == 2.0).all() or not (attended == 1.0).all():
        _note("numba has no OpenMP or TBB threading layer; CPU steps use the other backends")
        return None
    return numba, kernel, attention_kernel


def _note(message: str) -> None:
    warnings.warn(message + " (see the README's Sampling speed)", stacklevel=4)


def available() -> bool:
    """Whether the kernels run in this process (compiled or loaded from the cache on the first call)."""
    return _kernels() is not None


def backend() -> str:
    """What the kernels run on here, e.g. ``"numba (omp threading layer)"``, or ``"unavailable"``."""
    kernel = _kernels()
    return "unavailable" if kernel is None else f"numba ({kernel[0].threading_layer()} threading layer)"


def match_threads() -> None:
    """Run the kernels on as many threads as torch uses (call once per step, not per product)."""
    kernel = _kernels()
    if kernel is not None:
        numba = kernel[0]
        threads = min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)
        if numba.get_num_threads() != threads:
            numba.set_num_threads(threads)


class TiledLinear:
    """``x -> act(norm(x) @ w + b)``: a float32 CPU weight ``(n_in, n_out)`` and bias ``(n_out,)``,
    copied into contiguous column tiles ``(ceil(n_out / TILE), n_in, TILE)`` (the last one
    zero-padded), with an optional layer norm ``norm = (weight, bias, eps)`` of the input and, with
    ``gelu``, quick_gelu ``y sigmoid(1.702 y)`` of the output.

    Calling it maps x ``(M, n_in)`` to ``(M, n_out)``, plus ``residual`` ``(M, n_out)`` if given; the
    kernel does the norm, product, bias, activation and residual in one pass. Needs ``available()``.
    """

    __slots__ = ("tiles", "bias", "norm", "gelu", "n_out", "_kernel", "_args")

    def __init__(self, w: torch.Tensor, b: torch.Tensor, norm: tuple | None = None, gelu: bool = False):
        n_in, self.n_out = w.shape
        n_tiles = -(-self.n_out // TILE)
        padded = torch.zeros(n_in, n_tiles * TILE)
        padded[:, :self.n_out] = w.detach()
        self.tiles = padded.view(n_in, n_tiles, TILE).permute(1, 0, 2).contiguous()
        self.bias = b.detach().float().contiguous()
        self.norm = None if norm is None else (norm[0].detach().float().contiguous(),
                                               norm[1].detach().float().contiguous(), float(norm[2]))
        self._kernel = _kernels()[1]
        norm_args = (_NONE_1D, _NONE_1D, 0.0) if norm is None else \
            (self.norm[0].numpy(), self.norm[1].numpy(), self.norm[2])
        self.gelu = gelu
        self._args = (*norm_args, self.tiles.numpy(), self.bias.numpy(), gelu)

    def __call__(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        out = np.empty((x.shape[0], self.n_out), dtype=np.float32)
        self._kernel(x.contiguous().numpy(), *self._args,
                     _NONE_2D if residual is None else residual.contiguous().numpy(), out)
        return torch.from_numpy(out)


class CacheAttention:
    """One-query attention over a layer's float32 key/value caches ``(N, K, n_state)`` with
    ``n_head`` heads and score scale ``scale``; needs ``available()``. The caches' numpy views are
    made once here, not at every step.

    Calling it with proj ``(N, 3 n_state)``, the new position's query, key and value (or
    ``(N, n_state)``, the query alone, for encoder-decoder attention), first writes the key and
    value to cache row ``slot`` (if ``slot >= 0``), in place, then attends over the rows
    ``start:stop:step``. Returns ``(N, n_state)``: softmax of the scaled scores of each head, in float32.
    """

    __slots__ = ("n_state", "_kernel", "_key", "_value", "_head")

    def __init__(self, key: torch.Tensor, value: torch.Tensor, n_head: int, scale: float):
        self.n_state = key.shape[2]
        self._kernel = _kernels()[2]
        self._key, self._value, self._head = key.numpy(), value.numpy(), (n_head, scale)

    def __call__(self, proj: torch.Tensor, slot: int, start: int, stop: int, step: int = 1) -> torch.Tensor:
        out = np.empty((proj.shape[0], self.n_state), dtype=np.float32)
        self._kernel(proj.contiguous().numpy(), self._key, self._value, slot, start, stop, step, *self._head, out)
        return torch.from_numpy(out)


def attention(proj: torch.Tensor, key: torch.Tensor, value: torch.Tensor, n_head: int, scale: float,
              slot: int, start: int, stop: int, step: int = 1) -> torch.Tensor:
    """``CacheAttention(key, value, n_head, scale)(proj, slot, start, stop, step)``, for one call."""
    return CacheAttention(key, value, n_head, scale)(proj, slot, start, stop, step)
