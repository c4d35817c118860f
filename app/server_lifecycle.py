"""Bokeh directory-app lifecycle hook: warm up once when the server starts."""
import sys
from pathlib import Path

ROOT = str(Path(__file__).resolve().parents[1])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from popsed_viz.app import on_server_loaded  # noqa: E402, F401 - needs the sys.path insertion above; re-exported
