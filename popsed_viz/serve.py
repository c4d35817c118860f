"""Launcher of the dashboard: ``python -m popsed_viz [RUN]`` (or ``popsed serve`` once registered).

It runs ``panel serve`` on the packaged app directory
(:data:`popsed_viz.paths.APP_DIR`) bound to **127.0.0.1** unless ``--address``
says otherwise (``panel serve`` alone listens on all interfaces), with the
websocket origins that match the address.  ``popsed serve`` *becomes* the
server (``exec``), so stopping it stops the server.
"""
from __future__ import annotations

import argparse
import ipaddress
import os
import subprocess
import sys
from pathlib import Path

from popsed_viz.paths import APP_DIR, pythonpath_with_checkout

__all__ = ["APP_DIR", "serve_command", "add_subparser", "main"]


def _is_loopback(address: str) -> bool:
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def serve_command(run=None, port: int = 5006, address: str = "127.0.0.1", show: bool = False,
                  allow_origin: list[str] | None = None, extra: list[str] | None = None) -> list[str]:
    """The ``panel serve`` command line of the dashboard."""
    origins = list(allow_origin or [])
    if _is_loopback(address):
        origins += [f"127.0.0.1:{port}", f"localhost:{port}"]
    elif address not in ("0.0.0.0", "::", ""):
        origins.append(f"{address}:{port}")
    cmd = [sys.executable, "-m", "panel", "serve", str(APP_DIR), "--address", address, "--port", str(port)]
    for o in dict.fromkeys(origins):
        cmd += ["--allow-websocket-origin", o]
    if show:
        cmd.append("--show")
    cmd += list(extra or [])
    if run:
        cmd += ["--args", str(run)]
    return cmd


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", nargs="?", default=None,
                   help="run directory to open (default: the bundled sample run)")
    p.add_argument("--port", type=int, default=5006, help="port (default 5006)")
    p.add_argument("--address", default="127.0.0.1",
                   help="interface to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--allow-origin", action="append", default=None, metavar="HOST[:PORT]",
                   help="extra websocket origin to accept (needed when serving to other machines)")
    p.add_argument("--show", action="store_true", help="open a browser tab")
    p.add_argument("--runs-dir", default=None, help="where fits started from the app write (default ./runs)")


def _run(args) -> int:
    env = dict(os.environ)
    if args.runs_dir:
        env["POPSED_RUNS_DIR"] = str(Path(args.runs_dir).expanduser().resolve())
    if args.run:  # the server's warm-up (server_lifecycle.py of the app) preloads this run
        env["POPSED_RUN"] = str(Path(args.run).expanduser().resolve())
    env["PYTHONPATH"] = pythonpath_with_checkout(env)
    cmd = serve_command(args.run, args.port, args.address, args.show, args.allow_origin)
    print("popsed dashboard: "
          f"http://{'127.0.0.1' if _is_loopback(args.address) else args.address}:{args.port}/app",
          file=sys.stderr, flush=True)
    return _replace_process(cmd, env)


def _replace_process(cmd: list[str], env: dict) -> int:
    """Become ``panel serve`` (``os.execve``): SIGTERM / SIGINT sent to ``popsed serve`` reach the server
    itself, so stopping the launcher frees the port.  Where ``exec`` does not replace the process (Windows),
    run it as a child and stop it with the launcher."""
    if os.name == "posix":
        sys.stdout.flush()
        os.execve(cmd[0], cmd, env)
    proc = subprocess.Popen(cmd, env=env)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        proc.wait()
        return 130


def add_subparser(sub) -> None:
    """Register ``popsed serve`` (for engine/cli.py's COMMAND_MODULES)."""
    p = sub.add_parser("serve", help="serve the dashboard (panel) on 127.0.0.1",
                       description="Serve the popsed dashboard (panel serve app/) on this machine only, "
                                   "unless --address says otherwise.")
    _add_arguments(p)
    p.set_defaults(func=_run)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m popsed_viz", description="Serve the popsed dashboard.")
    _add_arguments(p)
    return _run(p.parse_args(argv))
