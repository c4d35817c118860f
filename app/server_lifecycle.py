"""Bokeh directory-app lifecycle hooks: warm up once when the server starts."""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def on_server_loaded(server_context):
    from popsed_viz.app import warm_up

    warm_up()
