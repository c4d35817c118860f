"""The ``popsed`` command line.

Each sub-command lives in the module that owns its concept and exposes
``add_subparser(subparsers)``, which registers the command and sets
``func`` to a handler taking the parsed ``argparse.Namespace`` and returning an
exit status.  User errors (:class:`engine.errors.PopsedError`) become one line
on stderr and exit status 2; Ctrl-C exits with 130.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from engine.errors import PopsedError

#: Modules that contribute sub-commands (each defines ``add_subparser``).
COMMAND_MODULES: tuple[str, ...] = (
    "engine.catalog.cli",
    "engine.mock",
    "engine.emulator.cli",
    "engine.population.cli",
    "popsed_viz.serve",
)


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser with every registered sub-command."""
    from engine import __version__

    parser = argparse.ArgumentParser(
        prog="popsed",
        description="Population-level SED inference: learn the galaxy population behind a photometric "
                    "catalog.",
    )
    parser.add_argument("--version", action="version", version=f"popsed {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_subparser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``popsed`` console script."""
    from engine.runtime import tune_cpu_allocator

    tune_cpu_allocator()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        status = args.func(args)
    except PopsedError as exc:
        print(f"popsed {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"popsed {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(status or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
