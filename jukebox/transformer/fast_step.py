"""The one-token sampling step of a ``Transformer``, lean enough to sit near the weight-read floor.

Sampling advances one position at a time through every layer, so a step costs at least the time
to read all weights once. The plain module path adds thousands of small Python calls, views and
allocations per step (module calls, dtype casts, pattern dispatch), which on CPU costs about as
much as the weight reads themselves. ``StepPlan`` resolves, once per sampling run, every layer's
parameters, its attention function and its cache buffers into plain attributes, then runs a step
as a short flat sequence of tensor ops with the same arithmetic as the plain path (same
``layer_norm``, ``addmm``, ``scaled_dot_product_attention`` calls in the same order), so results
match it to float rounding. Work per step is independent of the position.

Two step kinds share the layer arithmetic:

* ``step(x, t)``: positions are Python ints; keys are sliced to what the pattern sees (CPU default).
* ``static_step(x, pos)``: the position is a 0-d int64 tensor and every shape is fixed: cache
  writes are ``index_copy_`` at computed slots and each attention function sees a fixed window
  with a mask. Nothing in it depends on Python values of the position, so it can be captured
  once as a CUDA graph (see ``jukebox.prior.autoregressive``) and replayed for every token.

Weights: float32 activations use the weights as stored; float16 weights on CPU (``fp16_params``
checkpoints) run through FBGEMM's float16-weight GEMM, which reads half the bytes and computes in
float32 on the exact float16 values. ``cpu_fp16_weights=True`` packs float32 weights to float16
the same way: about twice as fast on CPU but no longer exact (an opt-in trade, off by default).
"""
from __future__ import annotations

import warnings
import weakref

import torch
import torch.nn.functional as F

from jukebox.transformer.ops import Conv1D, quick_gelu

__all__ = ["StepPlan", "fp16_gemm_available"]


def fp16_gemm_available() -> bool:
    """Whether this PyTorch build has FBGEMM's float16-weight GEMM (x86 CPU builds)."""
    return "fbgemm" in torch.backends.quantized.supported_engines and hasattr(torch.ops.quantized,
                                                                                "linear_dynamic_fp16")


class _Linear:
    """A ``Conv1D`` resolved for one run: ``(M, n_in) -> (M, n_out)`` in the compute dtype."""

    __slots__ = ("w", "b", "packed", "cast")

    def __init__(self, conv: Conv1D, dtype: torch.dtype, pack_fp16: bool):
        self.packed = None
        self.cast = False
        if pack_fp16:
            self.packed = _packed_fp16(conv)
            self.w = self.b = None
            return
        self.b = conv.b.detach().to(dtype)
        self.w = conv.w.detach()
        # Off CPU a float32 copy of float16 weights would double their memory: cast per call instead.
        self.cast = self.w.dtype != dtype

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed is not None:
            return torch.ops.quantized.linear_dynamic_fp16(x, self.packed)
        return torch.addmm(self.b, x, self.w.to(x.dtype) if self.cast else self.w)


_PACKED: "weakref.WeakKeyDictionary[Conv1D, tuple]" = weakref.WeakKeyDictionary()


def _packed_fp16(conv: Conv1D):
    """fbgemm's float16 packing of ``conv`` (float16 stored weights round-trip exactly).

    Packing a 161 M parameter prior takes seconds, so the packed copy (the memory of float16
    weights) is kept while the module lives and redone only when its weight or bias changes.
    """
    w, b = conv.w, conv.b
    key = (w.data_ptr(), w._version, w.dtype, b.data_ptr(), b._version)
    cached = _PACKED.get(conv)
    if cached is None or cached[0] != key:
        wt = w.detach().t().to(torch.float32).contiguous()
        cached = _PACKED[conv] = (key, torch.ops.quantized.linear_prepack_fp16(wt, b.detach().to(torch.float32)))
    return cached[1]


def _norm_args(ln: torch.nn.LayerNorm) -> tuple:
    return ln.normalized_shape, ln.weight.detach(), ln.bias.detach(), ln.eps


class _Layer:
    """Everything one ``ResAttnBlock`` needs for a step, as plain attributes."""

    def __init__(self, block, dtype: torch.dtype, pack_fp16: bool):
        attn = block.attn
        self.attn = attn
        self.func = attn.attn_func
        self.ln_0 = _norm_args(block.ln_0)
        self.ln_1 = _norm_args(block.ln_1)
        self.c_attn = _Linear(attn.c_attn, dtype, pack_fp16)
        self.c_proj = _Linear(attn.c_proj, dtype, pack_fp16)
        self.c_fc = _Linear(block.mlp.c_fc, dtype, pack_fp16)
        self.mlp_proj = _Linear(block.mlp.c_proj, dtype, pack_fp16)
        self.act = block.mlp.act
        self.res_scale = block.res_scale
        self.n_state, self.n_head = attn.n_state, attn.n_head
        self.d_head = attn.n_state // attn.n_head
        self.scale = attn._score_scale
        self.bc = attn.block_ctx
        self.key, self.value = attn.cache["key"], attn.cache["value"]
        self.n_keys = self.key.shape[1]
        if self.func in (4, 5):
            s = attn._spread
            slot = torch.arange(self.n_keys, device=self.key.device)
            self.key_pos = (slot // s) * self.bc - s + slot % s
            self.spread = s


class StepPlan:
    """One-token steps through ``layers`` (the ``ResAttnBlock`` s of a Transformer) whose caches
    were allocated by a first (plain) sampling pass. ``dtype``: the compute dtype."""

    def __init__(self, layers, dtype: torch.dtype, cpu_fp16_weights: bool = False):
        self.dtype = dtype
        device = layers[0].attn.cache["key"].device
        on_cpu = device.type == "cpu" and dtype == torch.float32
        if cpu_fp16_weights and on_cpu and not fp16_gemm_available():
            warnings.warn("cpu_fp16_weights needs PyTorch's FBGEMM (x86 builds); using the float32 weights",
                          stacklevel=3)
        self.layers = []
        for block in layers:
            stored_fp16 = block.attn.c_attn.w.dtype == torch.float16
            pack = on_cpu and (stored_fp16 or cpu_fp16_weights) and fp16_gemm_available()
            self.layers.append(_Layer(block, dtype, pack))
        self.half_norm = dtype in (torch.float16, torch.bfloat16)

    # ------------------------------------------------------------------ shared layer arithmetic
    def _norm(self, x: torch.Tensor, args: tuple) -> torch.Tensor:
        if self.half_norm:  # as ops.LayerNorm: normalise half inputs in float32
            return F.layer_norm(x.float(), *args).to(x.dtype)
        return F.layer_norm(x, *args)

    def _heads(self, t: torch.Tensor, L: _Layer) -> torch.Tensor:
        """``(N, K, n_state)`` -> ``(N, H, K, d_head)``."""
        return t.view(t.shape[0], t.shape[1], L.n_head, L.d_head).transpose(1, 2)

    def _attend(self, L: _Layer, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        """q ``(N, n_state)`` over keys/values ``(N, K, n_state)`` -> ``(N, n_state)``."""
        qh = q.view(q.shape[0], 1, L.n_head, L.d_head).transpose(1, 2)
        a = F.scaled_dot_product_attention(qh, self._heads(k, L), self._heads(v, L), attn_mask=mask,
                                           scale=L.scale)
        return a.transpose(1, 2).reshape(q.shape[0], L.n_state)

    def _layer(self, L: _Layer, x: torch.Tensor, attend) -> torch.Tensor:
        """One ``ResAttnBlock`` on x ``(N, width)``; ``attend(L, y)`` maps the normed input to the
        attention output before ``c_proj``."""
        a = L.c_proj(attend(L, self._norm(x, L.ln_0)))
        h = x + a
        m = L.c_fc(self._norm(h, L.ln_1))
        m = L.mlp_proj(m * torch.sigmoid(1.702 * m) if L.act is quick_gelu else L.act(m))
        if L.res_scale == 1.0:
            return h + m
        return x + L.res_scale * (a + m)

    def _qkv(self, L: _Layer, y: torch.Tensor):
        qkv = L.c_attn(y)
        s = L.n_state
        return qkv[:, :s], qkv[:, s:2 * s], qkv[:, 2 * s:]

    # ------------------------------------------------------------------ dynamic (Python int) step
    def step(self, x: torch.Tensor, t: int) -> torch.Tensor:
        """x ``(N, width)`` at position t -> ``(N, width)``; advances every layer's cache to t + 1."""
        self._t = t
        for L in self.layers:
            x = self._layer(L, x, self._attend_dynamic)
            # object.__setattr__ skips nn.Module's attribute bookkeeping (a plain int attribute).
            object.__setattr__(L.attn, "sample_t", t + 1)
        return x

    def _attend_dynamic(self, L: _Layer, y: torch.Tensor) -> torch.Tensor:
        t, f, key, value = self._t, L.func, L.key, L.value
        if f == 6:
            return self._attend(L, L.c_attn(y), key, value)
        q, k, v = self._qkv(L, y)
        bc = L.bc
        if f == 1:
            off = t % bc
            key[:, off] = k
            value[:, off] = v
            return self._attend(L, q, key[:, :off + 1], value[:, :off + 1])
        if f == 2:
            key[:, t] = k
            value[:, t] = v
            col = t % bc
            return self._attend(L, q, key[:, col:t + 1:bc], value[:, col:t + 1:bc])
        if f == 3:
            b = t // bc
            slot = b % 2 * bc + t % bc
            key[:, slot] = k
            value[:, slot] = v
            prev = (b - 1) % 2 * bc
            return self._attend(L, q, key[:, prev:prev + bc], value[:, prev:prev + bc])
        if f in (4, 5):
            b, s = t // bc, L.spread
            lo = b * bc + bc - s
            if t >= lo and (b + 1) * s < L.n_keys:
                key[:, (b + 1) * s + t - lo] = k
                value[:, (b + 1) * s + t - lo] = v
            return self._attend(L, q, key, value, mask=(L.key_pos <= t)[None])
        # 0 dense and 7 prime attention: positions in order, prime keys only up to the cache's end.
        if t < L.n_keys:
            key[:, t] = k
            value[:, t] = v
        stop = min(t + 1, L.n_keys)
        return self._attend(L, q, key[:, :stop], value[:, :stop])

    # ------------------------------------------------------------------ static (tensor position) step
    def static_step(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """x ``(N, width)`` at position ``pos`` (0-d int64 tensor) -> ``(N, width)``.

        Every shape is fixed, so the step can be captured as a CUDA graph; it does not touch the
        layers' ``sample_t`` (the caller keeps positions). Needs ``pos >= 1`` (the first position
        allocates the caches on the plain path).
        """
        self._pos = pos
        for L in self.layers:
            x = self._layer(L, x, self._attend_static)
        return x

    @staticmethod
    def _write(buf: torch.Tensor, slot: torch.Tensor, new: torch.Tensor, keep: torch.Tensor | None = None) -> None:
        """``buf[:, slot] = new`` for a 0-d slot tensor; where ``keep`` is True the old row stays."""
        slot = slot.view(1)
        if keep is not None:
            new = torch.where(keep, buf.index_select(1, slot)[:, 0], new)
        buf.index_copy_(1, slot, new[:, None])

    def _attend_static(self, L: _Layer, y: torch.Tensor) -> torch.Tensor:
        pos, f, key, value = self._pos, L.func, L.key, L.value
        if f == 6:
            return self._attend(L, L.c_attn(y), key, value)
        q, k, v = self._qkv(L, y)
        bc, dev = L.bc, key.device
        if f == 1:
            off = pos % bc
            self._write(key, off, k)
            self._write(value, off, v)
            return self._attend(L, q, key, value, mask=(torch.arange(bc, device=dev) <= off)[None])
        if f == 2:
            self._write(key, pos, k)
            self._write(value, pos, v)
            idx = pos % bc + bc * torch.arange(L.n_keys // bc, device=dev)
            return self._attend(L, q, key.index_select(1, idx), value.index_select(1, idx),
                                mask=(idx <= pos)[None])
        if f == 3:
            b = pos // bc
            slot = b % 2 * bc + pos % bc
            self._write(key, slot, k)
            self._write(value, slot, v)
            idx = (b - 1) % 2 * bc + torch.arange(bc, device=dev)
            return self._attend(L, q, key.index_select(1, idx), value.index_select(1, idx))
        if f in (4, 5):
            b, s = pos // bc, L.spread
            lo = b * bc + bc - s
            slot = (b + 1) * s + pos - lo
            skip = (pos < lo) | (slot >= L.n_keys)
            slot = slot.clamp(0, L.n_keys - 1)
            self._write(key, slot, k, skip)
            self._write(value, slot, v, skip)
            return self._attend(L, q, key, value, mask=(L.key_pos <= pos)[None])
        # 0 and 7: write while inside the cache, see every key up to pos.
        skip = pos >= L.n_keys
        slot = pos.clamp(max=L.n_keys - 1)
        self._write(key, slot, k, skip)
        self._write(value, slot, v, skip)
        return self._attend(L, q, key, value, mask=(torch.arange(L.n_keys, device=dev) <= pos)[None])

