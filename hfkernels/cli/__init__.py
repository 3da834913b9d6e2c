"""Command line ``hfkernels``: one module per sub-command, each with ``register(subparsers)``.

Errors a user can fix (bad arguments, missing or unreadable files, an unavailable backend or
device, an output that would replace something) end with one ``hfkernels CMD: error: ...`` line
and exit status 2; Ctrl-C ends with one line and status 130. Anything else is a bug and keeps its
traceback. ``HFK_DEBUG=1`` shows the traceback of every error.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from .. import __version__

#: sub-command modules under hfkernels.cli; each defines register(subparsers) which adds a
#: parser and sets ``func`` (called with the parsed args, returning an exit code).
SUBCOMMANDS = ("info", "fuse", "train", "sweep", "eval", "bench")

DEBUG_VAR = "HFK_DEBUG"


class CLIError(Exception):
    """A user-facing error: printed without a traceback, exit status 2."""


def user_errors() -> tuple[type[BaseException], ...]:
    """Exception types that mean "the user asked for something that cannot be done here"."""
    import torch

    from ..core.backends import BackendUnavailableError

    return (CLIError, ValueError, TypeError, OSError, BackendUnavailableError, torch.OutOfMemoryError)


def _message(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror and e.filename is not None:
        return f"{e.filename}: {e.strerror}"  # "[Errno 2] ..." says less than it seems to
    return str(e) or type(e).__name__


def run_guarded(fn, prog: str) -> int:
    """Call ``fn()`` (returning an exit code) the way every command and script runs: user errors
    as one ``PROG: error: ...`` line (exit 2), Ctrl-C as one line (exit 130), bugs with their
    traceback. With ``HFK_DEBUG`` set (not "0"), every error keeps its traceback."""
    debug = os.environ.get(DEBUG_VAR, "") not in ("", "0")
    try:
        return int(fn() or 0)
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except user_errors() as e:
        if debug:
            raise
        print(f"{prog}: error: {_message(e)}", file=sys.stderr)
        return 2
    except (RuntimeError, MemoryError) as e:
        from ..evaluation import out_of_memory

        if debug or not out_of_memory(e):
            raise
        # an allocation that failed: the inputs are too large for this machine, not a bug
        print(f"{prog}: error: not enough memory ({_message(e).splitlines()[0][:200]}); use smaller images "
              "(train: --max-size) or a machine with more memory", file=sys.stderr)
        return 2


def parse_device(spec, option: str = "--device"):
    """``torch.device`` for a ``--device`` value (None: cuda if available, else cpu). Unknown
    names and CUDA devices that are not there raise CLIError instead of torch's errors."""
    import torch

    if spec is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(spec)
    except (RuntimeError, ValueError, TypeError):
        raise CLIError(f"{option} must be cpu, cuda or cuda:N, got {spec!r}") from None
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            why = "torch was built without CUDA" if torch.version.cuda is None else "no CUDA device is visible"
            raise CLIError(f"{option} {spec}: {why}; use --device cpu")
        if dev.index is not None and dev.index >= n:
            raise CLIError(f"{option} {spec}: only {n} CUDA device(s) here (cuda:0..cuda:{n - 1})")
    elif dev.type != "cpu":
        raise CLIError(f"{option} must be cpu, cuda or cuda:N, got {spec!r}")
    return dev


def source_paths(vis, ir) -> tuple:
    """``(Path(vis), Path(ir))`` after the checks ``fuse`` and ``eval`` share: both exist, and
    both are folders or both are files (CLIError naming the option otherwise)."""
    from pathlib import Path

    vis, ir = Path(vis), Path(ir)
    for name, p in (("--vis", vis), ("--ir", ir)):
        if not p.exists():
            raise CLIError(f"{name} {p} does not exist")
    if vis.is_dir() != ir.is_dir():
        raise CLIError("--vis and --ir must both be folders or both be files")
    return vis, ir


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="hfkernels", description="Hybrid image fusion kernels and tools.",
        epilog=f"Set {DEBUG_VAR}=1 to see the Python traceback behind an error message.")
    p.add_argument("--version", action="version", version=f"hfkernels {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in SUBCOMMANDS:
        importlib.import_module(f"{__name__}.{name}").register(sub)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return run_guarded(lambda: args.func(args), f"hfkernels {args.command}")
