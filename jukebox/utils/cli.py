"""How every command line ends: bad input is one line, ``error: <message>``, on stderr and exit status 2.

``JUKEBOX_DEBUG=1`` lets the exception through with its traceback instead. Under ``mpiexec`` with several ranks
the whole job is aborted after the line is written, so no other rank waits forever in a collective.
"""
from __future__ import annotations

import argparse
import difflib
import inspect
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

__all__ = ["run_cli", "fire_command", "check_options", "ArgumentParser", "error_message", "EXIT_BAD_INPUT"]

EXIT_BAD_INPUT = 2
_EXIT_INTERRUPTED = 130
T = TypeVar("T")


def error_message(exc: BaseException) -> str:
    """The one-line text of ``exc``: its message without Python's decorations (``[Errno 2]``, quotes of KeyError)."""
    if isinstance(exc, OSError) and exc.strerror:
        text = exc.strerror if exc.filename is None else f"{exc.strerror}: {exc.filename}"
    elif isinstance(exc, KeyError) and len(exc.args) == 1 and isinstance(exc.args[0], str):
        text = exc.args[0]
    else:
        text = str(exc)
    text = " ".join(text.split())  # one line, however the message was wrapped
    return text or type(exc).__name__


def abort_mpi_job(code: int) -> None:
    """End every rank of a multi-rank MPI job with ``code``; nothing outside one, or before MPI starts."""
    mpi = sys.modules.get("mpi4py.MPI")
    if mpi is not None and mpi.Is_initialized() and not mpi.Is_finalized() and mpi.COMM_WORLD.Get_size() > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        # The launcher's proxy forwards our last lines asynchronously; MPI_Abort kills it too, so give it a
        # moment, or the error that explains the abort can be lost.
        time.sleep(1.0)
        mpi.COMM_WORLD.Abort(code)


def run_cli(main: Callable[[], T]) -> T:
    """Call ``main()``; an exception becomes ``error: <message>`` on stderr and exit status 2, Ctrl-C exit 130."""
    if os.environ.get("JUKEBOX_DEBUG") == "1":
        return main()
    try:
        return main()
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        abort_mpi_job(_EXIT_INTERRUPTED)
        raise SystemExit(_EXIT_INTERRUPTED) from None
    except Exception as exc:  # noqa: BLE001 - every failure of a command line ends the same way
        sys.stderr.write(f"error: {error_message(exc)}\n")
        sys.stderr.flush()
        abort_mpi_job(EXIT_BAD_INPUT)
        raise SystemExit(EXIT_BAD_INPUT) from None


class ArgumentParser(argparse.ArgumentParser):
    """argparse that raises ``ValueError`` on bad options, so ``run_cli`` words them as every other error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise ValueError(f"{message} (see `{self.prog} --help`)")


def check_options(fn: Callable[..., Any], argv: Sequence[str], prog: str) -> None:
    """Refuse a ``--option`` that ``fn`` does not take, naming the closest ones, before any work starts
    (fire alone would run with the defaults and complain about a mistyped option only afterwards)."""
    params = inspect.signature(fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    known = set(params) | {"help"}
    for arg in argv:
        if arg == "--":  # fire's own flags follow
            break
        if arg.startswith("--"):
            flag = arg[2:].split("=", 1)[0].replace("-", "_")
            if flag not in known and not (flag.startswith("no") and flag[2:] in known):
                close = difflib.get_close_matches(flag, sorted(known), n=3)
                hint = f"; did you mean {', '.join('--' + c for c in close)}?" if close else ""
                raise ValueError(f"unknown option --{flag}{hint} (see `{prog} --help`)")


def fire_command(fn: Callable[..., Any], argv: Sequence[str] | None = None, prog: str | None = None) -> None:
    """Run ``fn`` as a command line through fire, options checked first, errors worded by ``run_cli``."""
    import fire

    argv = sys.argv[1:] if argv is None else list(argv)
    prog = prog or f"python {sys.argv[0]}"

    def main() -> None:
        check_options(fn, argv, prog)
        fire.Fire(fn, command=argv)

    run_cli(main)
