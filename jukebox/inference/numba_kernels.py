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
from numba.core.codegen import get_host_cpu_features
from numba.core.datamodel import models
from numba.extending import intrinsic, register_model
from numba.typed import List

__all__ = ["tiled_linear", "blocked_linear", "cached_attention", "blocked_layer", "blocked_layers", "typed_list",
           "typed_append"]

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


def _vector_lanes() -> int:
    """Floats per vector for this CPU, as numba compiles for it: 16 with AVX-512, whose 32 vector registers
    hold a four-row group's sixteen sums beside its loads, else 8 (AVX2's 16 registers)."""
    features = numba.config.CPU_FEATURES or get_host_cpu_features()
    return 16 if "+avx512f" in features.split(",") else 8


LANES = _vector_lanes()


class Floats(types.Type):
    """An LLVM vector of ``lanes`` float32: numba has no SIMD type, and its auto-vectoriser keeps neither the
    sixteen sums of a block in registers nor the prefetches spread through the loop over ``n_in``."""

    def __init__(self, lanes: int):
        self.lanes = lanes
        super().__init__(name=f"float32x{lanes}")


def _llvm_floats(lanes: int) -> ir.VectorType:
    return ir.VectorType(ir.FloatType(), lanes)


@register_model(Floats)
class _FloatsModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, _llvm_floats(fe_type.lanes))


@intrinsic
def vzeros(typingctx, lanes):
    """A ``Floats`` of zeros; ``lanes`` a compile-time integer."""
    n = getattr(lanes, "literal_value", None)
    if n is None:
        return None
    return Floats(n)(lanes), lambda context, builder, sig, args: ir.Constant(_llvm_floats(n), [0.0] * n)


@intrinsic
def vload(typingctx, array, row, col, lanes):
    """``array[row, col:col + lanes]`` of a C-contiguous 2-D array as a ``Floats``: float32 as it is, uint16 read
    as the bits of float16 and widened exactly (``vcvtph2ps`` where the CPU has F16C)."""
    n = getattr(lanes, "literal_value", None)
    if n is None or not isinstance(array, types.Array) or array.ndim != 2 or array.layout != "C" \
            or array.dtype not in (types.float32, types.uint16):
        return None
    element = ir.FloatType() if array.dtype == types.float32 else ir.HalfType()

    def codegen(context, builder, sig, args):
        aryty = sig.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        at = cgutils.get_item_pointer(context, builder, aryty, ary, [args[1], args[2]])
        pointer = builder.bitcast(at, ir.VectorType(element, n).as_pointer())
        vector = builder.load(pointer, align=array.dtype.bitwidth // 8)
        return vector if element == ir.FloatType() else builder.fpext(vector, _llvm_floats(n))

    return Floats(n)(array, row, col, lanes), codegen


@intrinsic
def vfma(typingctx, a, b, c):
    """``a * b + c`` of three ``Floats``, fused."""
    if not (isinstance(a, Floats) and a == b == c):
        return None

    def codegen(context, builder, sig, args):
        vector = args[0].type
        fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vector, [vector] * 3),
                                             f"llvm.fma.v{vector.count}f32")
        return builder.call(fma, args)

    return a(a, b, c), codegen


@intrinsic
def vsum(typingctx, a):
    """The sum of a ``Floats``' lanes, in any order (a tree of vector adds)."""
    if not isinstance(a, Floats):
        return None

    def codegen(context, builder, sig, args):
        vector = args[0].type
        reduce = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.FloatType(), [ir.FloatType(), vector]),
            f"llvm.vector.reduce.fadd.v{vector.count}f32")
        return builder.call(reduce, [ir.Constant(ir.FloatType(), 0.0), args[0]], fastmath=("reassoc",))

    return types.float32(a), codegen


@intrinsic
def prefetch(typingctx, array, index, level):
    """Ask the CPU to bring the cache line of element ``index`` of a C-contiguous ``array`` (flat index) into its
    cache ``level``, a literal 1 (``prefetcht0``) or 2 (``prefetcht1``); never faults. numba has no prefetch, so
    it is LLVM's intrinsic."""
    if not isinstance(array, types.Array) or array.layout != "C" or not isinstance(index, types.Integer) \
            or getattr(level, "literal_value", None) not in (1, 2):
        return None
    locality = 4 - level.literal_value  # LLVM's scale: 3 keeps the line in every level, 2 from L2 outwards

    def codegen(context, builder, sig, args):
        data = context.make_array(sig.args[0])(context, builder, args[0]).data
        byte = ir.IntType(8).as_pointer()
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(
            ir.VoidType(), [byte, ir.IntType(32), ir.IntType(32), ir.IntType(32)]), "llvm.prefetch.p0i8")
        read, keep, data_cache = (ir.IntType(32)(v) for v in (0, locality, 1))
        builder.call(fn, [builder.bitcast(builder.gep(data, [args[1]]), byte), read, keep, data_cache])
        return context.get_dummy_value()

    return types.void(array, index, level), codegen


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


# blocked_linear streams its weight as blocks of four outputs, each block one contiguous stretch that interleaves its
# four rows a vector at a time: row q's inputs k..k+LANES-1 (k a multiple of LANES) sit at 4 k + q LANES of the
# block (``cpu_kernels.blocks`` packs it; outputs and inputs past the end are zero padding). Each block is then
# one sequential read, which the CPU's prefetcher follows across pages, where four rows a page or less long are four
# short streams that it starts over for each block. The sums of a block's four outputs for a group of four rows
# (sixteen) or a last single row (four) stay in vector registers: each weight vector loaded serves every row of the
# group. Rows past the end of a short group repeat the last row, whose outputs are written again with the same values.
# While the first group multiplies, it asks for the block PREFETCH_BLOCKS ahead into L2, as many lines of it as it
# reads of its own: asking for a whole block at once stalls the arithmetic until the lines arrive. Compiled for
# AVX-512, every group also asks for the lines it will read PREFETCH_STEPS iterations later into L1 (past a block's
# end, the next block's), so that its loads find them there: four rows' arithmetic fills the CPU's window of
# instructions in flight before it reaches loads far enough ahead to hide the wait for L2. AVX2 code, tuned on an
# AMD EPYC, keeps the L2 prefetch alone (0). A single row asks for lines only with ``single_prefetch``: over float16
# weights, its loop is short enough for some CPUs' own prefetchers to stay ahead, where asking as well slows it.
# With ``narrow``, a group of four rows takes each vector of the block as two halves (NARROW floats) and
# asks for its L1 lines half as far ahead: on CPUs whose AVX-512 units are 256 bits wide (AMD Zen 4), the four
# rows' arithmetic in full-width vectors falls behind the stream. Which suits a machine is timed, not assumed
# (``cpu_backends``: ``numba_blocks`` and ``numba_blocks_256``).
PREFETCH_BLOCKS = 2
PREFETCH_STEPS = 16 if LANES == 16 else 0
NARROW = LANES // 2
# sums_4x4 and sums_1x4 compile as functions of their own: inlined by numba they made blocked_linear far slower
# to compile and no faster. tail is inlined: called, it slowed the float16 loop. sums_4x4 and sums_4x4_narrow each
# spell out their sixteen sums as variables: carried through the loop as one tuple (a shared helper), they left
# LLVM spilling more of AVX2's sixteen registers and the four-row loop a third slower there.


@intrinsic
def line_elements(typingctx, array):
    """Elements of ``array`` per 64-byte cache line, a compile-time constant (numba reads ``itemsize`` at run time,
    which leaves a division and a loop of unknown length in a kernel's inner loop)."""
    if not isinstance(array, types.Array):
        return None
    elements = 512 // array.dtype.bitwidth
    return types.intp(array), lambda context, builder, sig, args: context.get_constant(types.intp, elements)


@numba.njit(nogil=True, boundscheck=False, cache=True, inline="always")
def prefetch_ahead(wt, block, ahead, at, steps):  # pragma: no cover (the iteration at offset `at` of `block`)
    if ahead >= 0:
        for j in range(0, 4 * LANES, line_elements(wt)):
            prefetch(wt, ahead * wt.shape[1] + at + j, 2)
    if steps:
        for j in range(0, 4 * LANES, line_elements(wt)):
            prefetch(wt, block * wt.shape[1] + at + 4 * LANES * steps + j, 1)


@numba.njit(fastmath={"contract"}, nogil=True, boundscheck=False, cache=True, inline="always")
def tail(x, m, wt, block, q, main):  # pragma: no cover (row q's sum over the inputs past the last whole vector)
    total = np.float32(0.0)
    for k in range(main, x.shape[1]):
        total += x[m, k] * as_float32(wt[block, 4 * main + q * LANES + k - main])
    return total


@numba.njit(fastmath={"contract"}, nogil=True, boundscheck=False, cache=True, inline="always")
def totals_4x4(x, m0, m1, m2, m3, wt, block, main, v):  # pragma: no cover (v: the 16 vector sums, row by row)
    return (vsum(v[0]) + tail(x, m0, wt, block, 0, main), vsum(v[1]) + tail(x, m0, wt, block, 1, main),
            vsum(v[2]) + tail(x, m0, wt, block, 2, main), vsum(v[3]) + tail(x, m0, wt, block, 3, main),
            vsum(v[4]) + tail(x, m1, wt, block, 0, main), vsum(v[5]) + tail(x, m1, wt, block, 1, main),
            vsum(v[6]) + tail(x, m1, wt, block, 2, main), vsum(v[7]) + tail(x, m1, wt, block, 3, main),
            vsum(v[8]) + tail(x, m2, wt, block, 0, main), vsum(v[9]) + tail(x, m2, wt, block, 1, main),
            vsum(v[10]) + tail(x, m2, wt, block, 2, main), vsum(v[11]) + tail(x, m2, wt, block, 3, main),
            vsum(v[12]) + tail(x, m3, wt, block, 0, main), vsum(v[13]) + tail(x, m3, wt, block, 1, main),
            vsum(v[14]) + tail(x, m3, wt, block, 2, main), vsum(v[15]) + tail(x, m3, wt, block, 3, main))


@numba.njit(fastmath={"contract"}, nogil=True, boundscheck=False, cache=True)
def sums_4x4(x, m0, m1, m2, m3, wt, block, ahead):  # pragma: no cover
    main = x.shape[1] - x.shape[1] % LANES
    a0 = a1 = a2 = a3 = b0 = b1 = b2 = b3 = c0 = c1 = c2 = c3 = d0 = d1 = d2 = d3 = vzeros(LANES)
    for k in range(0, main, LANES):
        at = 4 * k
        prefetch_ahead(wt, block, ahead, at, PREFETCH_STEPS)
        wa, wb, wc, wd = vload(wt, block, at, LANES), vload(wt, block, at + LANES, LANES), \
            vload(wt, block, at + 2 * LANES, LANES), vload(wt, block, at + 3 * LANES, LANES)
        x0, x1, x2, x3 = vload(x, m0, k, LANES), vload(x, m1, k, LANES), vload(x, m2, k, LANES), \
            vload(x, m3, k, LANES)
        a0, a1, a2, a3 = vfma(x0, wa, a0), vfma(x1, wa, a1), vfma(x2, wa, a2), vfma(x3, wa, a3)
        b0, b1, b2, b3 = vfma(x0, wb, b0), vfma(x1, wb, b1), vfma(x2, wb, b2), vfma(x3, wb, b3)
        c0, c1, c2, c3 = vfma(x0, wc, c0), vfma(x1, wc, c1), vfma(x2, wc, c2), vfma(x3, wc, c3)
        d0, d1, d2, d3 = vfma(x0, wd, d0), vfma(x1, wd, d1), vfma(x2, wd, d2), vfma(x3, wd, d3)
    return totals_4x4(x, m0, m1, m2, m3, wt, block, main,
                      (a0, b0, c0, d0, a1, b1, c1, d1, a2, b2, c2, d2, a3, b3, c3, d3))


@numba.njit(fastmath={"contract"}, nogil=True, boundscheck=False, cache=True)
def sums_4x4_narrow(x, m0, m1, m2, m3, wt, block, ahead):  # pragma: no cover (sums_4x4 in half-width vectors)
    main = x.shape[1] - x.shape[1] % LANES
    a0 = a1 = a2 = a3 = b0 = b1 = b2 = b3 = c0 = c1 = c2 = c3 = d0 = d1 = d2 = d3 = vzeros(NARROW)
    for k in range(0, main, LANES):
        at = 4 * k
        prefetch_ahead(wt, block, ahead, at, PREFETCH_STEPS // 2)
        for h in range(0, LANES, NARROW):
            wa, wb, wc, wd = vload(wt, block, at + h, NARROW), vload(wt, block, at + LANES + h, NARROW), \
                vload(wt, block, at + 2 * LANES + h, NARROW), vload(wt, block, at + 3 * LANES + h, NARROW)
            x0, x1, x2, x3 = vload(x, m0, k + h, NARROW), vload(x, m1, k + h, NARROW), vload(x, m2, k + h, NARROW), \
                vload(x, m3, k + h, NARROW)
            a0, a1, a2, a3 = vfma(x0, wa, a0), vfma(x1, wa, a1), vfma(x2, wa, a2), vfma(x3, wa, a3)
            b0, b1, b2, b3 = vfma(x0, wb, b0), vfma(x1, wb, b1), vfma(x2, wb, b2), vfma(x3, wb, b3)
            c0, c1, c2, c3 = vfma(x0, wc, c0), vfma(x1, wc, c1), vfma(x2, wc, c2), vfma(x3, wc, c3)
            d0, d1, d2, d3 = vfma(x0, wd, d0), vfma(x1, wd, d1), vfma(x2, wd, d2), vfma(x3, wd, d3)
    return totals_4x4(x, m0, m1, m2, m3, wt, block, main,
                      (a0, b0, c0, d0, a1, b1, c1, d1, a2, b2, c2, d2, a3, b3, c3, d3))


@numba.njit(fastmath={"contract"}, nogil=True, boundscheck=False, cache=True)
def sums_1x4(x, m, wt, block, ahead, asks):  # pragma: no cover
    main = x.shape[1] - x.shape[1] % LANES
    a = b = c = d = vzeros(LANES)
    for k in range(0, main, LANES):
        at = 4 * k
        if asks:
            prefetch_ahead(wt, block, ahead, at, PREFETCH_STEPS)
        xv = vload(x, m, k, LANES)
        a, b = vfma(xv, vload(wt, block, at, LANES), a), vfma(xv, vload(wt, block, at + LANES, LANES), b)
        c = vfma(xv, vload(wt, block, at + 2 * LANES, LANES), c)
        d = vfma(xv, vload(wt, block, at + 3 * LANES, LANES), d)
    return (vsum(a) + tail(x, m, wt, block, 0, main), vsum(b) + tail(x, m, wt, block, 1, main),
            vsum(c) + tail(x, m, wt, block, 2, main), vsum(d) + tail(x, m, wt, block, 3, main))


@numba.njit(parallel=True, fastmath={"contract"}, nogil=True, boundscheck=False, cache=True)
def blocked_linear(x, norm_weight, norm_bias, eps, wt, bias, gelu, narrow, single_prefetch, residual,
                   out):  # pragma: no cover
    rows, n_blocks = x.shape[0], wt.shape[0]
    if norm_weight.shape[0]:
        x = layer_norm(x, norm_weight, norm_bias, eps)
    for block in numba.prange(n_blocks):
        o = 4 * block
        ahead = block + PREFETCH_BLOCKS if block + PREFETCH_BLOCKS < n_blocks else -1
        for m0 in range(0, rows, 4):
            if m0 + 1 == rows:
                finish4(sums_1x4(x, m0, wt, block, ahead, single_prefetch), m0, o, bias, gelu, residual, out)
            else:
                m1, m2, m3 = min(m0 + 1, rows - 1), min(m0 + 2, rows - 1), min(m0 + 3, rows - 1)
                if narrow:
                    s = sums_4x4_narrow(x, m0, m1, m2, m3, wt, block, ahead)
                else:
                    s = sums_4x4(x, m0, m1, m2, m3, wt, block, ahead)
                finish4((s[0], s[1], s[2], s[3]), m0, o, bias, gelu, residual, out)
                finish4((s[4], s[5], s[6], s[7]), m1, o, bias, gelu, residual, out)  # a repeated row: the same again
                finish4((s[8], s[9], s[10], s[11]), m2, o, bias, gelu, residual, out)
                finish4((s[12], s[13], s[14], s[15]), m3, o, bias, gelu, residual, out)
            ahead = -1  # the later groups find the block in the cache


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


# A whole layer: its five kernels one after another, with nothing between them (each call from Python would cost
# more than the arithmetic of a small one). Each product's arguments are (norm weight, norm bias, eps, weight
# blocks, bias, gelu, narrow, single_prefetch), as blocked_linear takes them.
@numba.njit(nogil=True, boundscheck=False, cache=True)
def blocked_layer(x, n, attn, key, value, windows, n_head, scale, proj, fc, mlp):  # pragma: no cover
    rows = x.shape[0]
    positions, width = rows // n, key.shape[2]
    none = np.empty((0, 0), dtype=np.float32)
    qkv = np.empty((rows, attn[4].shape[0]), dtype=np.float32)
    blocked_linear(x, attn[0], attn[1], attn[2], attn[3], attn[4], attn[5], attn[6], attn[7], none, qkv)
    a = np.empty((n, positions, width), dtype=np.float32)
    cached_attention(qkv.reshape((n, positions, qkv.shape[1])), key, value, windows, n_head, scale, a)
    h = np.empty((rows, proj[4].shape[0]), dtype=np.float32)
    blocked_linear(a.reshape((rows, width)), proj[0], proj[1], proj[2], proj[3], proj[4], proj[5], proj[6], proj[7],
                   x, h)
    f = np.empty((rows, fc[4].shape[0]), dtype=np.float32)
    blocked_linear(h, fc[0], fc[1], fc[2], fc[3], fc[4], fc[5], fc[6], fc[7], none, f)
    out = np.empty((rows, mlp[4].shape[0]), dtype=np.float32)
    blocked_linear(f, mlp[0], mlp[1], mlp[2], mlp[3], mlp[4], mlp[5], mlp[6], mlp[7], h, out)
    return out


# A step's layers in one call from Python: between two calls the kernels' threads wait on Python's return and the next
# call's arguments. ``layers`` is a numba typed list of each layer's arguments (attn, key, value, n_head, scale, proj,
# fc, mlp), ``windows[layout_of[i]]`` layer i's windows.
@numba.njit(nogil=True, boundscheck=False, cache=True)
def blocked_layers(x, n, layers, windows, layout_of):  # pragma: no cover
    for i in range(len(layers)):
        attn, key, value, n_head, scale, proj, fc, mlp = layers[i]
        x = blocked_layer(x, n, attn, key, value, windows[layout_of[i]], n_head, scale, proj, fc, mlp)
    return x


# The typed list that ``blocked_layers`` takes is made here: a typed list made from Python compiles its methods for its
# item type in every process, while these are cached with the kernels.
@numba.njit(cache=True)
def typed_list(first):  # pragma: no cover
    items = List()
    items.append(first)
    return items


@numba.njit(cache=True)
def typed_append(items, item):  # pragma: no cover
    items.append(item)
