"""Process-group set-up for plain ``python``, ``mpiexec -n N`` and ``torchrun``, and the
rank-aware helpers used everywhere else (``print_once``, ``allreduce``, ``allgather``).

Backend: NCCL when every rank of a machine has a CUDA device of its own, gloo otherwise (on CPU,
or when ranks share a GPU, which NCCL refuses). Under MPI, rank 0 picks the
rendezvous address and a free port and broadcasts them with mpi4py. An uncaught exception on
any rank aborts the whole MPI job (``MPI_Abort``) so the other ranks never hang in a collective.
"""
from __future__ import annotations

import atexit
import datetime
import os
import socket
import sys
import traceback
from typing import Any

import torch
import torch.distributed as dist

from jukebox.utils.cli import abort_mpi_job

__all__ = [
    "setup_dist_from_mpi", "get_rank", "get_world_size", "is_distributed", "barrier", "finish_dist",
    "print_once", "print_all", "allreduce", "allgather", "broadcast", "DistSetupError",
]

_MPI_ENV_VARS = ("PMI_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MPI_LOCALNRANKS", "PMIX_RANK")
_TORCHRUN_ENV_VARS = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


class DistSetupError(RuntimeError):
    """The distributed environment could not be set up."""


def _launched_by_mpi() -> bool:
    return any(v in os.environ for v in _MPI_ENV_VARS)


def _launched_by_torchrun() -> bool:
    return all(v in os.environ for v in _TORCHRUN_ENV_VARS)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _abort_mpi_on_exception(comm: Any) -> None:
    rank = comm.Get_rank()

    def hook(exc_type, exc, tb):
        # Write to the real stderr: torch.distributed's own excepthook (installed around this one by
        # init_process_group) buffers sys.stderr and would print only after we return, i.e. never.
        stream = sys.__stderr__ or sys.stderr
        text = "".join(traceback.format_exception(exc_type, exc, tb))
        stream.write("".join(f"[rank{rank}]: {line}\n" for line in text.rstrip("\n").split("\n")))
        stream.flush()
        abort_mpi_job(1)

    sys.excepthook = hook


def _pick_device(local_rank: int) -> torch.device:
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def default_backend(device: torch.device, local_size: int) -> str:
    """The process-group backend for ``local_size`` ranks on this machine, this rank on ``device``.

    NCCL needs a GPU per rank ("Duplicate GPU detected" otherwise); gloo reduces CUDA tensors too,
    so ranks that outnumber the GPUs share them through gloo, more slowly.
    """
    if device.type == "cuda" and local_size <= torch.cuda.device_count():
        return "nccl"
    return "gloo"


def setup_dist_from_mpi(port: int = 29500, backend: str | None = None,
                        timeout_s: float = 600.0) -> tuple[int, int, torch.device]:
    """Initialise ``torch.distributed`` if launched with several processes.

    Returns ``(rank, local_rank, device)``. With a single plain process no process group is
    created and the collective helpers of this module are no-ops. ``port`` is the rendezvous
    port under MPI; 0 or a busy port makes rank 0 pick a free one.
    """
    if dist.is_available() and dist.is_initialized():
        rank = dist.get_rank()
        local_rank = int(os.environ.get("LOCAL_RANK", rank))
        return rank, local_rank, _pick_device(local_rank)

    if _launched_by_mpi():
        try:
            from mpi4py import MPI
        except ImportError as e:
            raise DistSetupError("launched under mpiexec but mpi4py is missing: pip install mpi4py mpich") from e
        comm = MPI.COMM_WORLD
        rank, world_size = comm.Get_rank(), comm.Get_size()
        local = comm.Split_type(MPI.COMM_TYPE_SHARED)
        local_rank, local_size = local.Get_rank(), local.Get_size()
        _abort_mpi_on_exception(comm)
        if world_size == 1:
            return 0, 0, _pick_device(0)
        all_local = _all_local(comm)  # a collective: every rank must call it
        if rank == 0:
            host = "127.0.0.1" if all_local else socket.gethostbyname(socket.gethostname())
            chosen = port if port and _port_is_free(port) else _free_port()
            address = (host, chosen)
        else:
            address = None
        host, chosen = comm.bcast(address, root=0)
        os.environ.update(MASTER_ADDR=host, MASTER_PORT=str(chosen), RANK=str(rank),
                          WORLD_SIZE=str(world_size), LOCAL_RANK=str(local_rank))
    elif _launched_by_torchrun():
        rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local_rank = int(os.environ.get("LOCAL_RANK", rank))
        local_size = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
        if world_size == 1:
            return 0, 0, _pick_device(0)
    else:
        return 0, 0, _pick_device(0)

    device = _pick_device(local_rank)
    if device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        # Ranks on one machine share its cores: each takes its part instead of all of them.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_size))
    backend = backend or default_backend(device, local_size)
    dist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(seconds=timeout_s))
    if device.type == "cuda" and backend == "gloo":
        print_once(f"{local_size} ranks share {torch.cuda.device_count()} GPU(s) on this machine: collectives go "
                   "through gloo, slower than NCCL; start one rank per GPU for full speed")
    # Left to interpreter shutdown, the process group's threads can abort a finished rank
    # ("terminate called without an active exception"); tear it down first.
    atexit.register(_destroy_process_group)
    return rank, local_rank, device


def _destroy_process_group() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _all_local(comm: Any) -> bool:
    names = comm.allgather(socket.gethostname())
    return len(set(names)) == 1


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("", port))
            return True
        except OSError:
            return False


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def finish_dist() -> None:
    """The end of a distributed run that went well: wait for every rank, then tear the process group down while
    the interpreter is whole. Without the barrier a rank that finished first can close its connections while
    another rank's gloo threads still use them, and either can then abort at exit ("terminate called without
    an active exception"). A no-op without a process group."""
    barrier()
    _destroy_process_group()


def print_once(*args: Any, **kwargs: Any) -> None:
    """Print on rank 0 only; the one place user-facing progress messages go through."""
    if get_rank() == 0:
        print_all(*args, **kwargs)


def print_all(*args: Any, sep: str = " ", end: str = "\n", file: Any = None) -> None:
    """Print on every rank, flushed so messages of several ranks do not interleave mid-line."""
    stream = file or sys.stdout
    stream.write(sep.join(str(a) for a in args) + end)
    stream.flush()


def allreduce(x: torch.Tensor | float, op: str = "sum") -> torch.Tensor | float:
    """Sum (``op='sum'``), mean, max or min of ``x`` over ranks; a float in gives a float out."""
    ops = {"sum": dist.ReduceOp.SUM, "mean": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}
    if op not in ops:
        raise ValueError(f"allreduce op must be one of {sorted(ops)}, got {op!r}")
    is_number = not isinstance(x, torch.Tensor)
    tensor = torch.as_tensor(x, dtype=torch.float64, device=_collective_device()) if is_number else x
    if is_distributed():
        tensor = tensor.clone()
        dist.all_reduce(tensor, op=ops[op])
        if op == "mean":
            tensor = tensor / get_world_size()
    return tensor.item() if is_number else tensor


def _collective_device() -> torch.device:
    # NCCL only reduces CUDA tensors; gloo takes CPU tensors.
    if is_distributed() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def allgather(x: torch.Tensor) -> list[torch.Tensor]:
    """The tensors ``x`` of every rank (same shape on every rank), in rank order."""
    if not is_distributed():
        return [x]
    out = [torch.empty_like(x) for _ in range(get_world_size())]
    dist.all_gather(out, x.contiguous())
    return out


def broadcast(x: torch.Tensor, src: int = 0) -> torch.Tensor:
    """Copy rank ``src``'s ``x`` into ``x`` on every rank (in place) and return it."""
    if is_distributed():
        dist.broadcast(x, src=src)
    return x
