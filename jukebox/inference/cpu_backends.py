"""The ways a CPU sampling step can multiply its weights, and the choice among them per machine.

A one-token step multiplies a few rows (``n_samples``) by every weight matrix once, so its floor is
the time to read the weights, and which library gets closest to it depends on the CPU and the batch:
a hand-written tile kernel on one machine, a BLAS with prepacked weights on another. Each
``Backend`` here supplies the products of a ``StepPlan`` (``linear``), built once per sampling
window from the layer's weights, so nothing is repacked per call:

* ``plain``: ``torch.addmm`` on the weights as stored, with torch's attention (the reference);
* ``numba``: ``cpu_kernels.TiledLinear`` column tiles, with the layer norm, activation and
  residual add inside the kernel, and the numba cache attention;
* ``numba_blocks``: the same with ``cpu_kernels.BlockedLinear``, four outputs by four rows at a time
  in registers (the numba kernels keep float16-stored weights at two bytes and widen them exactly);
* ``numba_blocks_256``: the same blocks where the CPU has AVX-512, tuned for CPUs whose 512-bit arithmetic is
  two 256-bit halves (AMD Zen 4): groups of four rows summed in 256-bit vectors (``narrow``), and a single row
  of float16 weights left to the CPU's own prefetchers (no ``single_prefetch``);
* ``mkl``: MKL's packed SGEMM for the batch (``torch.ops.mkl._mkl_linear``), the product Inductor
  emits for float32 weights once it freezes them, without the compile;
* ``onednn``: oneDNN's inner product on weights reordered once for the batch
  (``torch.ops.mkldnn._linear_pointwise``);
* ``onednn_bf16``: oneDNN's inner product in bfloat16 (AMX or AVX-512 BF16 where the CPU has them),
  weights rounded to bfloat16 once and inputs at every call, sums in float32: not exact, an opt-in
  only (mainly for priming, where a chunk's products are compute-bound);
* ``fbgemm_fp16``: FBGEMM's float16-weight GEMM, reading half the bytes; exact for float16-stored
  weights (``fp16_params`` checkpoints), a rounding of float32 ones (an opt-in only).

All but ``plain`` use the numba cache attention where numba runs. Every exact backend gives the
plain path's numbers to float32 rounding. ``choose`` times the exact, available ones on the plan
being built and keeps the fastest; the result is cached in a JSON file per machine, model shape
and batch (``calibration_path``), so the timing runs once per machine and model.

An Inductor-compiled step (``torch.compile`` with ``freezing``) is not a backend: its float32
products are the same packed MKL GEMM as ``mkl``'s, and compiling a whole step (weights frozen
into the graph, the attention as an opaque op) takes far longer than a calibration, in every
process and for every batch.
"""
from __future__ import annotations

import functools
import json
import logging
import os
import platform
import time
import weakref
from collections.abc import Callable
from pathlib import Path

import torch

from jukebox.inference import cpu_kernels
from jukebox.utils.atomic import atomic_write
from jukebox.utils.torch_utils import transposed

__all__ = ["BACKENDS", "Backend", "Addmm", "get_backend", "check_backend_name", "fp16_gemm_available", "cpu_info",
           "calibration_path", "choose", "calibration"]

log = logging.getLogger(__name__)

Product = Callable[..., torch.Tensor]


class Backend:
    """How a CPU step multiplies: ``linear(w, b, batch)`` builds the product ``x (M, n_in) -> x @ w + b``
    ``(M, n_out)`` of a weight ``(n_in, n_out)`` and bias ``(n_out,)`` for batches of ``batch`` rows.

    ``fuses``: ``linear`` also takes ``norm = (weight, bias, eps)``, a layer norm of its input, and
    ``gelu``, quick_gelu of its output, and the product takes ``residual`` ``(M, n_out)`` to add.
    ``attends``: the numba cache attention runs the layers' attention where numba is available.
    ``packs``: ``linear`` makes a copy of the weight (transposed, reordered or rounded) for the plan to hold.
    ``min_batch(weights)``: below this batch it runs another backend's code for weights stored as ``weights``,
    and calibration passes it by.
    """

    name = ""
    fuses = False
    attends = True
    packs = True

    def missing(self) -> str | None:
        """Why this backend can not run here, or None."""
        return None

    def exact(self, weights: torch.dtype) -> bool:
        """Whether products of weights stored as ``weights`` equal ``addmm``'s to float32 rounding."""
        return True

    def min_batch(self, weights: torch.dtype) -> int:
        """The smallest batch whose products of weights stored as ``weights`` run this backend's own code."""
        return 1

    def linear(self, w: torch.Tensor, b: torch.Tensor, batch: int, norm: tuple | None = None,
               gelu: bool = False) -> Product:
        raise NotImplementedError


class Addmm:
    """``addmm`` in the compute dtype; weights stored in another dtype are cast per call (a float32
    copy of float16 weights would double their memory)."""

    __slots__ = ("w", "b", "cast")

    def __init__(self, w: torch.Tensor, b: torch.Tensor, dtype: torch.dtype):
        self.w, self.b = w.detach(), b.detach().to(dtype)
        self.cast = self.w.dtype != dtype

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addmm(self.b, x, self.w.to(x.dtype) if self.cast else self.w)


class Plain(Backend):
    name = "plain"
    attends = False
    packs = False

    def linear(self, w, b, batch, norm=None, gelu=False):
        return Addmm(w, b, torch.float32)


class Numba(Backend):
    name = "numba"
    fuses = True

    def missing(self):
        return None if cpu_kernels.available() else "numba has no parallel threading layer here (or is missing)"

    def linear(self, w, b, batch, norm=None, gelu=False):
        return cpu_kernels.TiledLinear(w, b, norm, gelu)


class NumbaBlocks(Numba):
    name = "numba_blocks"
    narrow = False

    def single_prefetch(self, weights: torch.dtype) -> bool:
        """Whether a single row over weights stored as ``weights`` asks for their lines ahead (``BlockedLinear``)."""
        return True

    def linear(self, w, b, batch, norm=None, gelu=False):
        return cpu_kernels.BlockedLinear(w, b, norm, gelu, self.narrow, self.single_prefetch(w.dtype))


class NumbaBlocks256(NumbaBlocks):
    name = "numba_blocks_256"
    narrow = True

    def single_prefetch(self, weights):
        return weights != torch.float16

    def min_batch(self, weights):
        # A single row differs from numba_blocks' only where its prefetching does.
        return 1 if self.single_prefetch(weights) != super().single_prefetch(weights) else 2

    def missing(self):
        if not cpu_kernels.available():
            return super().missing()
        from jukebox.inference.numba_kernels import NARROW

        return None if NARROW == 8 else "without AVX-512, numba_blocks already sums in 256-bit vectors"


class Mkl(Backend):
    name = "mkl"

    def missing(self):
        if not (torch._C.has_mkl and hasattr(torch.ops.mkl, "_mkl_linear")):
            return "this PyTorch build has no MKL packed GEMM"
        return None

    def linear(self, w, b, batch, norm=None, gelu=False):
        wt = w.detach().float().t()  # (n_out, n_in), the layout MKL packs
        packed = torch.ops.mkl._mkl_reorder_linear_weight(transposed(w, torch.float32), batch)
        b = b.detach().float()
        return lambda x: torch.ops.mkl._mkl_linear(x, packed, wt, b, batch)


class OneDnn(Backend):
    name = "onednn"

    def missing(self):
        if not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")):
            return "this PyTorch build has no oneDNN linear"
        return None

    def linear(self, w, b, batch, norm=None, gelu=False):
        packed = torch.ops.mkldnn._reorder_linear_weight(transposed(w, torch.float32), batch)
        b = b.detach().float()
        return lambda x: torch.ops.mkldnn._linear_pointwise(x, packed, b, "none", [], "")


class OneDnnBf16(OneDnn):
    name = "onednn_bf16"

    def missing(self):
        reason = super().missing()
        if reason is None and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
            reason = "this CPU has no bfloat16 support in oneDNN (it needs AVX-512 BF16 or AMX)"
        return reason

    def exact(self, weights):
        return False

    def linear(self, w, b, batch, norm=None, gelu=False):
        packed = torch.ops.mkldnn._reorder_linear_weight(transposed(w, torch.bfloat16), batch)
        b = b.detach().float()
        return lambda x: torch.ops.mkldnn._linear_pointwise(x.bfloat16(), packed, None, "none", [], "").float() + b


def fp16_gemm_available() -> bool:
    """Whether this PyTorch build has FBGEMM's float16-weight GEMM (x86 CPU builds)."""
    return "fbgemm" in torch.backends.quantized.supported_engines and hasattr(torch.ops.quantized,
                                                                                "linear_dynamic_fp16")


_PACKED: weakref.WeakValueDictionary = weakref.WeakValueDictionary()


class _PackedFp16:
    """FBGEMM's float16 packing of a weight ``(n_in, n_out)`` and bias; float16 weights round-trip exactly."""

    __slots__ = ("packed", "source", "__weakref__")

    def __init__(self, w: torch.Tensor, b: torch.Tensor):
        self.source = w  # held, so that no other weight takes its address while the packing is shared
        wt = transposed(w, torch.float32)
        self.packed = torch.ops.quantized.linear_prepack_fp16(wt, b.detach().to(torch.float32))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.quantized.linear_dynamic_fp16(x, self.packed)


class Fbgemm16(Backend):
    name = "fbgemm_fp16"

    def missing(self):
        return None if fp16_gemm_available() else "this PyTorch build has no FBGEMM (x86 builds have it)"

    def exact(self, weights):
        return weights == torch.float16

    def linear(self, w, b, batch, norm=None, gelu=False):
        # Packing a 161 M parameter prior takes seconds: windows of one run (and calibration) share it while
        # a plan holds it and the weight is unchanged.
        key = (w.data_ptr(), w._version, w.dtype, tuple(w.shape), b.data_ptr(), b._version)
        product = _PACKED.get(key)
        if product is None:
            product = _PACKED[key] = _PackedFp16(w, b)
        return product


BACKENDS: dict[str, Backend] = {b.name: b for b in (Plain(), Numba(), NumbaBlocks(), NumbaBlocks256(), Mkl(), OneDnn(),
                                                    OneDnnBf16(), Fbgemm16())}


def check_backend_name(name: str | None) -> None:
    """Refuse an unknown backend name (None, the calibrated choice, is fine)."""
    if name is not None and name not in BACKENDS:
        raise ValueError(f"unknown --cpu_backend={name!r}; choose one of {', '.join(BACKENDS)} (or leave it out to "
                         "calibrate)")


def get_backend(name: str) -> Backend:
    """The backend ``name``, which must run here."""
    check_backend_name(name)
    backend = BACKENDS[name]
    reason = backend.missing()
    if reason is not None:
        raise ValueError(f"--cpu_backend={name} can not run here: {reason}; choose another of {', '.join(BACKENDS)}")
    return backend


# ---------------------------------------------------------------------- calibration
@functools.cache
def _cpu_flags() -> tuple[str, frozenset]:
    model, flags = platform.processor() or platform.machine(), frozenset()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    model = value.strip()
                elif key.strip() == "flags":
                    flags = frozenset(value.split())
                if model and flags:
                    break
    except OSError:
        pass
    return model, flags


def cpu_info() -> dict:
    """The CPU model, its vector ISA (``AVX2``, ``AVX-512``, ``AVX-512 + AMX``), torch's kernel level
    and the threads torch uses."""
    model, flags = _cpu_flags()
    isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "other"
    if "amx_tile" in flags:
        isa += " + AMX"
    return dict(model=model, isa=isa, torch_isa=torch.backends.cpu.get_cpu_capability(),
                threads=torch.get_num_threads())


def calibration_path() -> Path:
    """The calibration cache: ``$JUKEBOX_CPU_CALIBRATION``, else ``cpu_backends.json`` in the cache directory."""
    from jukebox.utils.remote import cache_dir

    return Path(os.environ.get("JUKEBOX_CPU_CALIBRATION") or cache_dir() / "cpu_backends.json")


# Raised when a backend's code changes what calibration would measure: choices cached under another revision
# are made again.
CALIBRATION_REVISION = 2


def _key(shape: dict) -> str:
    # The backends' names too: a choice made before a backend existed is made again with it.
    machine = dict(cpu_info(), torch=torch.__version__, numba=cpu_kernels.backend(), backends=sorted(BACKENDS),
                   revision=CALIBRATION_REVISION)
    return json.dumps(dict(machine=machine, **shape), sort_keys=True)


def _read(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def choose(shape: dict, weights: torch.dtype, measure: Callable[[list[Backend]], dict],
           path: Path | None = None) -> str:
    """The fastest exact backend for a step of ``shape`` (JSON-able: the model's products, its ``layers``, batch,
    dtypes) with weights stored as ``weights``: the cached choice for this machine and shape, else the one
    ``measure(candidates)`` finds fastest, written to the cache. ``candidates`` are every available exact
    backend that serves the batch (``min_batch``); ``measure`` returns ``{name: (seconds, layers)}`` for those
    that ran: the median step over the model's first ``layers`` layers. The fastest of those that ran the most
    layers wins. Falls back to ``plain``. The cache keeps each backend's time scaled to the whole step
    (``step_ms``) beside the layers its trial ran (``trial_layers``)."""
    path = calibration_path() if path is None else path
    key = _key(shape)
    cached = _read(path).get(key)
    if cached is not None and cached.get("backend") in BACKENDS:
        return cached["backend"]
    started = time.perf_counter()
    candidates = []
    for backend in BACKENDS.values():
        smallest = backend.min_batch(weights)
        reason = backend.missing() or (None if backend.exact(weights) else "not exact for these weights") or \
            (None if shape["batch"] >= smallest else f"another backend's code below {smallest} rows")
        if reason is None:
            candidates.append(backend)
        else:
            log.debug("cpu backend %s skipped: %s", backend.name, reason)
    trials = measure(candidates) if candidates else {}
    longest = max((layers for _, layers in trials.values()), default=0)
    finalists = {name: seconds for name, (seconds, layers) in trials.items() if layers == longest}
    best = min(finalists, key=finalists.get) if finalists else "plain"
    entries = _read(path)
    entries[key] = dict(backend=best, measured=time.strftime("%Y-%m-%dT%H:%M:%S"),
                        step_ms={name: round(seconds * shape["layers"] / layers * 1e3, 3)
                                 for name, (seconds, layers) in trials.items()},
                        trial_layers={name: layers for name, (_, layers) in trials.items()},
                        seconds=round(time.perf_counter() - started, 2))
    try:
        with atomic_write(path, "w", encoding="utf-8") as f:
            json.dump(entries, f, indent=1, sort_keys=True)
    except OSError as error:  # a read-only cache directory: calibrate again next time
        log.debug("calibration cache %s not written: %s", path, error)
    return best


def trial_layer_counts(entry: dict, whole: int | None = None) -> list[int]:
    """The distinct numbers of leading layers that a calibration ``entry``'s trials ran, fewest first. Entries
    written before the two trials keep one number; those without any give ``whole``, the step's layers."""
    trial = entry.get("trial_layers") or whole
    return sorted(set(trial.values())) if isinstance(trial, dict) else [trial]


def calibration(shape: dict, path: Path | None = None) -> dict | None:
    """The cached calibration of ``shape`` on this machine: ``{backend, step_ms, measured, trial_layers,
    seconds}`` (see ``choose``; ``seconds``: how long the calibration took), or None."""
    return _read(calibration_path() if path is None else path).get(_key(shape))
