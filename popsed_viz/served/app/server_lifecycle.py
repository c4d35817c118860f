"""Bokeh directory-app lifecycle hook: warm up once when the server starts."""
from popsed_viz.app import on_server_loaded  # noqa: F401
