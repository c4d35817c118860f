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

#: Sub-commands: name -> (module that registers it with ``add_subparser``, one-line help).  The help is
#: shown by ``popsed --help`` without importing the module (torch, astropy and panel take seconds to
#: import); a test checks that it equals the module's own.
COMMANDS: dict[str, tuple[str, str]] = {
    "catalog": ("engine.catalog.cli", "check a photometric catalog and summarise its bands"),
    "mock": ("engine.mock", "make a magnitude-limited mock catalog with known truth"),
    "emulator": ("engine.emulator.cli", "train, check or inspect a neural SED emulator"),
    "fit": ("engine.population.cli",
            "fit the population behind a catalog (flow ensemble) into a run directory"),
    "summary": ("engine.population.cli", "summarise a run directory"),
    "serve": ("popsed_viz.serve", "serve the dashboard (panel) on 127.0.0.1"),
}

#: Modules that contribute sub-commands, in the order of :data:`COMMANDS`.
COMMAND_MODULES: tuple[str, ...] = tuple(dict.fromkeys(module for module, _ in COMMANDS.values()))


def requested_command(argv: Sequence[str]) -> str | None:
    """The sub-command named in ``argv`` (the first argument that is not an option), or ``None``."""
    for arg in argv:
        if not arg.startswith("-"):
            return arg if arg in COMMANDS else None
    return None


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The argument parser.

    Only the module of the command named in ``argv`` is imported and registers its full sub-parser; the
    others are listed with their one-line help.  ``argv=None`` registers every command in full."""
    from engine import __version__

    parser = argparse.ArgumentParser(
        prog="popsed",
        description="Population-level SED inference: learn the galaxy population behind a photometric "
        "catalog.",
    )
    parser.add_argument("--version", action="version", version=f"popsed {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    if argv is None:
        modules = COMMAND_MODULES
    else:
        name = requested_command(argv)
        modules = (COMMANDS[name][0],) if name else ()
    for module in modules:
        importlib.import_module(module).add_subparser(sub)
    for name, (_, help_text) in COMMANDS.items():
        if name not in sub.choices:
            sub.add_parser(name, help=help_text, add_help=False)
    # list the commands in the table's order whatever was registered first
    sub._choices_actions.sort(key=lambda action: list(COMMANDS).index(action.dest))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``popsed`` console script."""
    from engine.runtime import tune_cpu_allocator

    tune_cpu_allocator()
    if argv is None:
        argv = sys.argv[1:]
    parser = build_parser(argv)
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
