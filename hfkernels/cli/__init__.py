"""Command line ``hfkernels``: one module per sub-command, each with ``register(subparsers)``."""
from __future__ import annotations

import argparse
import importlib
import sys

from .. import __version__

#: sub-command modules under hfkernels.cli; each defines register(subparsers) which adds a
#: parser and sets ``func`` (called with the parsed args, returning an exit code).
SUBCOMMANDS = ("info", "fuse", "train", "eval", "bench")


class CLIError(Exception):
    """A user-facing error: printed without a traceback, exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hfkernels", description="Hybrid image fusion kernels and tools.")
    p.add_argument("--version", action="version", version=f"hfkernels {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in SUBCOMMANDS:
        importlib.import_module(f"{__name__}.{name}").register(sub)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (CLIError, ValueError, FileNotFoundError) as e:
        print(f"hfkernels {args.command}: error: {e}", file=sys.stderr)
        return 2
