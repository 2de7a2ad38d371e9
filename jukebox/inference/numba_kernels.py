"""The numba kernels of ``jukebox.inference.cpu_kernels``, compiled on first use and cached on disk.

They live at module level in a module of their own: numba finds a cached compilation by the function's
module and name, which a function defined inside another one (a closure) does not have stably, so each
process would compile again and add another cache entry. Importing this module needs numba; the
kernels' documentation and their checked entry points are ``cpu_kernels``'.
"""
from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

__all__ = ["tiled_linear", "blocked_linear", "cached_attention", "blocked_layer"]

# Reassociation lets LLVM vectorise sums over a row (several partial sums, added at the end).
REASSOC = {"reassoc", "contract"}


@numba.njit(fastmath=REASSOC, nogil=True, boundscheck=False, cache=True)
def layer_norm(x, weight, bias, eps):  # pragma: no cover (compiled; tested through BlockedLinear)
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


@intrinsic
def as_float32(typingctx, value):
    """A weight element as float32: float32 as it is; uint16 read as the bits of a float16 (an exact widening,
    one vector instruction where the CPU has F16C). numba has no float16 type on the CPU, so the
    conversion is written in LLVM IR."""
    if value == types.float32:
        return types.float32(value), lambda context, builder, sig, args: args[0]
    if value == types.uint16:
        def widen(context, builder, sig, args):
            return builder.fpext(builder.bitcast(args[0], ir.HalfType()), ir.FloatType())
        return types.float32(value), widen
    return None


@intrinsic
def prefetch(typingctx, array, index):
    """Ask the CPU to bring the cache line of element ``index`` of a contiguous ``array`` (flat index) into the
    caches; never faults. numba has no prefetch, so it is LLVM's intrinsic (``prefetcht0`` on x86)."""
    if not isinstance(array, types.Array) or not isinstance(index, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        data = context.make_array(sig.args[0])(context, builder, args[0]).data
        byte = ir.IntType(8).as_pointer()
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(
            ir.VoidType(), [byte, ir.IntType(32), ir.IntType(32), ir.IntType(32)]), "llvm.prefetch.p0i8")
        read, keep_in_all_levels, data_cache = (ir.IntType(32)(v) for v in (0, 3, 1))
        builder.call(fn, [builder.bitcast(builder.gep(data, [args[1]]), byte), read, keep_in_all_levels, data_cache])
        return context.get_dummy_value()

    return types.void(array, index), codegen


@numba.njit(nogil=True, boundscheck=False, cache=True, inline="always")
def prefetch_rows(wt, first, count):  # pragma: no cover (rows first..first+count-1 of a C-contiguous wt)
    n_in = wt.shape[1]
    line = 64 // wt.itemsize
    for j in range(first * n_in, min(first + count, wt.shape[0]) * n_in, line):
        prefetch(wt, j)


@numba.njit(fastmath={"contract"}, nogil=True, boundscheck=False, cache=True, inline="always")
def finish(acc, m, o, bias, gelu, residual, out):  # pragma: no cover
    if o < out.shape[1]:
        y = acc + bias[o]
        if gelu:  # quick_gelu: y sigmoid(1.702 y)
            y = y / (np.float32(1.0) + np.exp(np.float32(-1.702) * y))
        if residual.shape[0]:
            y += residual[m, o]
        out[m, o] = y


@numba.njit(fastmath={"contract"}, nogil=True, boundscheck=False, cache=True, inline="always")
def finish4(sums, m, o, bias, gelu, residual, out):  # pragma: no cover (outputs o..o+3 of row m)
    for q in range(4):
        finish(sums[q], m, o + q, bias, gelu, residual, out)


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
                    acc[m, j] += xv * as_float32(tiles[tile, k, j])
        for m in range(rows):
            for j in range(width):  # the last tile's zero padding is not written
                finish(acc[m, j], m, tile * width + j, bias, gelu, residual, out)


# Four outputs at a time, for four rows (sixteen sums) or one: the sums are named locals, so LLVM keeps them
# in vector registers across the loop over n_in (an accumulator array would round-trip through memory every
# iteration), and each weight element loaded serves every row of the group. Outputs past the end repeat the
# last one and are not written. Each block asks for the next block's rows before it starts: a weight row is
# a page or less, so the hardware prefetcher, which stops at page ends, would start over on every row, and
# the arithmetic between loads (four rows, or float16 widening) leaves too few of them in flight.
@numba.njit(parallel=True, fastmath=REASSOC, nogil=True, boundscheck=False, cache=True)
def blocked_linear(x, norm_weight, norm_bias, eps, wt, bias, gelu, residual, out):  # pragma: no cover
    rows, n_in = x.shape
    n_out = wt.shape[0]
    if norm_weight.shape[0]:
        x = layer_norm(x, norm_weight, norm_bias, eps)
    for block in numba.prange((n_out + 3) // 4):
        o0 = 4 * block
        prefetch_rows(wt, o0 + 4, 4)
        o1, o2, o3 = min(o0 + 1, n_out - 1), min(o0 + 2, n_out - 1), min(o0 + 3, n_out - 1)
        for m0 in range(0, rows - 3, 4):
            a0 = a1 = a2 = a3 = b0 = b1 = b2 = b3 = np.float32(0.0)
            c0 = c1 = c2 = c3 = d0 = d1 = d2 = d3 = np.float32(0.0)
            for k in range(n_in):
                wa, wb = as_float32(wt[o0, k]), as_float32(wt[o1, k])
                wc, wd = as_float32(wt[o2, k]), as_float32(wt[o3, k])
                x0, x1, x2, x3 = x[m0, k], x[m0 + 1, k], x[m0 + 2, k], x[m0 + 3, k]
                a0 += x0 * wa
                a1 += x1 * wa
                a2 += x2 * wa
                a3 += x3 * wa
                b0 += x0 * wb
                b1 += x1 * wb
                b2 += x2 * wb
                b3 += x3 * wb
                c0 += x0 * wc
                c1 += x1 * wc
                c2 += x2 * wc
                c3 += x3 * wc
                d0 += x0 * wd
                d1 += x1 * wd
                d2 += x2 * wd
                d3 += x3 * wd
            finish4((a0, b0, c0, d0), m0, o0, bias, gelu, residual, out)
            finish4((a1, b1, c1, d1), m0 + 1, o0, bias, gelu, residual, out)
            finish4((a2, b2, c2, d2), m0 + 2, o0, bias, gelu, residual, out)
            finish4((a3, b3, c3, d3), m0 + 3, o0, bias, gelu, residual, out)
        for m in range(rows - rows % 4, rows):
            sa = sb = sc = sd = np.float32(0.0)
            for k in range(n_in):
                xv = x[m, k]
                sa += xv * as_float32(wt[o0, k])
                sb += xv * as_float32(wt[o1, k])
                sc += xv * as_float32(wt[o2, k])
                sd += xv * as_float32(wt[o3, k])
            finish4((sa, sb, sc, sd), m, o0, bias, gelu, residual, out)


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


# The positions of a sample run in order: each writes its key and value before it attends, so a later one
# sees the earlier ones, and a ring layout's overwrite of an old row happens when the step path's would.
@numba.njit(parallel=True, fastmath=REASSOC, nogil=True, boundscheck=False, cache=True)
def cached_attention(proj, key, value, windows, n_head, scale, out):  # pragma: no cover
    n, positions, width = out.shape
    d_head = width // n_head
    scale = np.float32(scale)
    for i in numba.prange(n):
        for p in range(positions):
            slot, start, stop, step = windows[p, 0], windows[p, 1], windows[p, 2], windows[p, 3]
            if proj.shape[2] > width and slot >= 0:  # q, k, v: store this position's key and value
                key[i, slot] = proj[i, p, width:2 * width]
                value[i, slot] = proj[i, p, 2 * width:]
            count = (stop - start + step - 1) // step
            probs = np.empty(count, dtype=np.float32)
            for h in range(n_head):
                lo, hi = h * d_head, (h + 1) * d_head
                top = np.float32(-np.inf)
                for j in range(count):
                    probs[j] = dot(proj[i, p, lo:hi], key[i, start + j * step, lo:hi]) * scale
                    top = max(top, probs[j])
                total = np.float32(0.0)
                for j in range(count):
                    probs[j] = np.exp(probs[j] - top)
                    total += probs[j]
                acc = np.zeros(d_head, dtype=np.float32)
                for j in range(count):
                    add_scaled(acc, probs[j] / total, value[i, start + j * step, lo:hi])
                out[i, p, lo:hi] = acc


# A whole layer in one call from Python: a step's layer is five kernels, and each call from Python costs more
# than the arithmetic of a small one. Each product's arguments are (norm weight, norm bias, eps, transposed
# weight, bias, gelu), as blocked_linear takes them.
@numba.njit(nogil=True, boundscheck=False, cache=True)
def blocked_layer(x, n, attn, key, value, windows, n_head, scale, proj, fc, mlp):  # pragma: no cover
    rows = x.shape[0]
    positions, width = rows // n, key.shape[2]
    none = np.empty((0, 0), dtype=np.float32)
    qkv = np.empty((rows, attn[4].shape[0]), dtype=np.float32)
    blocked_linear(x, attn[0], attn[1], attn[2], attn[3], attn[4], attn[5], none, qkv)
    a = np.empty((n, positions, width), dtype=np.float32)
    cached_attention(qkv.reshape((n, positions, qkv.shape[1])), key, value, windows, n_head, scale, a)
    h = np.empty((rows, proj[4].shape[0]), dtype=np.float32)
    blocked_linear(a.reshape((rows, width)), proj[0], proj[1], proj[2], proj[3], proj[4], proj[5], x, h)
    f = np.empty((rows, fc[4].shape[0]), dtype=np.float32)
    blocked_linear(h, fc[0], fc[1], fc[2], fc[3], fc[4], fc[5], none, f)
    out = np.empty((rows, mlp[4].shape[0]), dtype=np.float32)
    blocked_linear(f, mlp[0], mlp[1], mlp[2], mlp[3], mlp[4], mlp[5], h, out)
    return out
