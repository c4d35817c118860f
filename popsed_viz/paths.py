"""Where the dashboard's files are: the served app directory and the bundled sample data.

A source checkout holds them at the top level (``app/``, ``sample_data/``); an
installed wheel ships the sample data as the package ``popsed_sample_data``
(``sample_data/`` mapped by ``[tool.setuptools.package-dir]`` in
pyproject.toml) and the served app as ``popsed_viz/served/app``.  The sample
data is found through the import system (:func:`importlib.util.find_spec`), falling back to the
checkout's ``sample_data/``.
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

__all__ = ["REPO_ROOT", "SOURCE_CHECKOUT", "APP_DIR", "sample_data_dir", "sample_run_dir", "sample_catalog",
           "pythonpath_with_checkout"]

#: The directory holding ``popsed_viz`` (the repository root in a source checkout, site-packages when
#: installed).
REPO_ROOT = Path(__file__).resolve().parents[1]

#: True when running from a source checkout (not an installed wheel).
SOURCE_CHECKOUT = (REPO_ROOT / "pyproject.toml").is_file()

#: The Bokeh directory app that ``popsed serve`` runs (``panel serve APP_DIR``); it is named ``app``, so the
#: page is served at ``/app``.  The checkout's top-level ``app/`` is the same two thin files.
APP_DIR = Path(__file__).resolve().parent / "served" / "app"

SAMPLE_PACKAGE = "popsed_sample_data"


def sample_data_dir() -> Path:
    """The bundled sample data: the checkout's ``sample_data/`` in a source checkout (editable installs
    included), else the installed ``popsed_sample_data`` package."""
    if SOURCE_CHECKOUT and (REPO_ROOT / "sample_data").is_dir():
        return REPO_ROOT / "sample_data"
    try:  # a namespace package (sample_data/ has no __init__.py): look in each of its real folders
        spec = importlib.util.find_spec(SAMPLE_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    for folder in (spec.submodule_search_locations or []) if spec is not None else []:
        if (Path(folder) / "run_sdss").is_dir():  # (an editable install also lists a finder's hook here)
            return Path(folder)
    return REPO_ROOT / "sample_data"


def sample_run_dir() -> Path:
    """The dashboard's default run (``$POPSED_SAMPLE_RUN`` or the bundled ``run_sdss``)."""
    env = os.environ.get("POPSED_SAMPLE_RUN")
    return Path(env) if env else sample_data_dir() / "run_sdss"


def sample_catalog() -> Path:
    """The catalog a fit started from the dashboard uses (``$POPSED_SAMPLE_CATALOG`` or the bundled mock)."""
    env = os.environ.get("POPSED_SAMPLE_CATALOG")
    return Path(env) if env else sample_data_dir() / "mock_sdss" / "catalog.ecsv"


def pythonpath_with_checkout(env: dict) -> str:
    """``$PYTHONPATH`` of a child process: the checkout first when running from one (unchanged when
    installed)."""
    parts = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if SOURCE_CHECKOUT and str(REPO_ROOT) not in parts:
        parts.insert(0, str(REPO_ROOT))
    return os.pathsep.join(parts)
