"""The numba kernels of ``jukebox.inference.cpu_kernels``, compiled on first use and cached on disk.

They live at module level in a module of their own: numba finds a cached compilation by the function's
module and name, which a function defined inside another one (a closure) does not have stably, so each
process would compile again and add another cache entry. Importing this module needs numba; the
kernels' documentation and their checked entry points are ``cpu_kernels``'.
"""
from __future__ import annotations

import numba
import numpy as np

__all__ = ["tiled_linear", "cached_attention"]

# Reassociation lets LLVM vectorise sums over a row; the tiled products keep their order.
REASSOC = {"reassoc", "contract"}


@numba.njit(fastmath=REASSOC, nogil=True, boundscheck=False, cache=True)
def layer_norm(x, weight, bias, eps):  # pragma: no cover (compiled; tested through TiledLinear)
    rows, width = x.shape
    y = np.empty_like(x)
    inv_width, eps = np.float32(1.0 / width), np.float32(eps)
    for m in range(rows):
        mean = np.float32(0.0)
        for k in range(width):
            mean += x[m, k]
        mean *= inv_width
        var = np.float32(0.0)
        for k in range(width):
            var += (x[m, k] - mean) * (x[m, k] - mean)
        rstd = np.float32(1.0) / np.sqrt(var * inv_width + eps)
        for k in range(width):
            y[m, k] = (x[m, k] - mean) * rstd * weight[k] + bias[k]
    return y


@numba.njit(parallel=True, fastmath={"contract"}, nogil=True, boundscheck=False, cache=True)
def tiled_linear(x, norm_weight, norm_bias, eps, tiles, bias, gelu, residual, out):  # pragma: no cover
    rows, n_in = x.shape
    n_tiles, _, width = tiles.shape
    if norm_weight.shape[0]:
        x = layer_norm(x, norm_weight, norm_bias, eps)
    for tile in numba.prange(n_tiles):
        acc = np.zeros((rows, width), dtype=np.float32)
        for k in range(n_in):
            for m in range(rows):
                xv = x[m, k]
                for j in range(width):
                    acc[m, j] += xv * tiles[tile, k, j]
        col = tile * width
        for m in range(rows):
            for j in range(min(width, out.shape[1] - col)):  # the last tile may be zero-padded
                acc[m, j] += bias[col + j]
                if gelu:  # quick_gelu: x sigmoid(1.702 x)
                    acc[m, j] = acc[m, j] / (np.float32(1.0) + np.exp(np.float32(-1.702) * acc[m, j]))
                if residual.shape[0]:
                    acc[m, j] += residual[m, col + j]
                out[m, col + j] = acc[m, j]


@numba.njit(fastmath=REASSOC, nogil=True, boundscheck=False, cache=True, inline="always")
def dot(a, b):  # pragma: no cover
    total = np.float32(0.0)
    for c in range(a.shape[0]):
        total += a[c] * b[c]
    return total


@numba.njit(fastmath=REASSOC, nogil=True, boundscheck=False, cache=True, inline="always")
def add_scaled(y, p, x):  # pragma: no cover (y += p x)
    for c in range(x.shape[0]):
        y[c] += p * x[c]


@numba.njit(parallel=True, fastmath=REASSOC, nogil=True, boundscheck=False, cache=True)
def cached_attention(proj, key, value, slot, start, stop, step, n_head, scale, out):  # pragma: no cover
    n, width = out.shape
    d_head = width // n_head
    count = (stop - start + step - 1) // step
    scale = np.float32(scale)
    for i in numba.prange(n):
        if proj.shape[1] > width and slot >= 0:  # q, k, v: store this position's key and value
            key[i, slot] = proj[i, width:2 * width]
            value[i, slot] = proj[i, 2 * width:]
        probs = np.empty(count, dtype=np.float32)
        for h in range(n_head):
            lo, hi = h * d_head, (h + 1) * d_head
            top = np.float32(-np.inf)
            for j in range(count):
                probs[j] = dot(proj[i, lo:hi], key[i, start + j * step, lo:hi]) * scale
                top = max(top, probs[j])
            total = np.float32(0.0)
            for j in range(count):
                probs[j] = np.exp(probs[j] - top)
                total += probs[j]
            acc = np.zeros(d_head, dtype=np.float32)
            for j in range(count):
                add_scaled(acc, probs[j] / total, value[i, start + j * step, lo:hi])
            out[i, lo:hi] = acc
