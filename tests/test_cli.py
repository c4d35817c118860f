"""The ``popsed`` command line: fast top-level help, every command's help, one-line help in sync."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine import cli

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "scipy", "pandas", "astropy", "panel", "bokeh", "holoviews", "numpy")

_PROBE = """
import sys, time
t0 = time.perf_counter()
from engine.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print(repr(sorted(m for m in {heavy!r} if m in sys.modules)), time.perf_counter() - t0)
"""


def _probe(*args: str) -> tuple[list[str], float]:
    res = subprocess.run([sys.executable, "-c", _PROBE.format(heavy=HEAVY), *args], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    last = res.stdout.strip().splitlines()[-1]
    mods, seconds = last.rsplit(" ", 1)
    return eval(mods), float(seconds)  # noqa: S307 -- our own probe's repr of a list of str


def test_top_level_help_imports_nothing_heavy_and_is_fast():
    mods, seconds = _probe("--help")
    assert mods == []
    assert seconds < 1.0
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "engine.cli", "--help"], cwd=REPO, capture_output=True,
                         text=True)
    wall = time.perf_counter() - t0
    assert res.returncode == 0
    for name in cli.COMMANDS:
        assert name in res.stdout
    assert wall < 3.0  # interpreter start included; importing torch alone takes longer than this here


def test_command_help_imports_only_its_module():
    mods, _ = _probe("catalog", "--help")
    assert "torch" not in mods and "panel" not in mods


@pytest.mark.parametrize("argv", [["catalog"], ["mock"], ["emulator"], ["emulator", "train"], ["fit"],
                                  ["summary"], ["serve"]])
def test_every_command_has_help(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main([*argv, "--help"])
    assert exc.value.code == 0
    assert f"usage: popsed {' '.join(argv)}" in capsys.readouterr().out


def test_one_line_help_matches_the_modules():
    parser = cli.build_parser()  # every module registers itself in full
    sub = next(a for a in parser._actions if a.dest == "command")
    helps = {a.dest: a.help for a in sub._choices_actions}
    assert helps == {name: h for name, (_, h) in cli.COMMANDS.items()}


def test_unknown_command_is_one_line_exit_2(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["fitt"])
    assert exc.value.code == 2
    assert "invalid choice: 'fitt'" in capsys.readouterr().err
