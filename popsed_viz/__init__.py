"""popsed_viz: HoloViews/Panel views of popsed run directories.

Each component works alone in a notebook (display it, or call ``.panel()``)
and is composed by the dashboard (:class:`popsed_viz.app.Dashboard`, served
by ``panel serve app/``).  The package only *reads* run files
(docs/run_format.md); it never computes physics.
"""
from __future__ import annotations

from popsed_viz.reader import HistoryTail, RunReader, RunStatus

__all__ = ["RunReader", "RunStatus", "HistoryTail", "TrainingMonitor", "PhotometryView", "PopulationView",
           "Dashboard", "BackgroundFit", "fit_in_background"]


def __getattr__(name):  # lazy: importing the reader must not import holoviews/panel
    if name == "PopulationView":
        from popsed_viz.population import PopulationView
        return PopulationView
    if name == "TrainingMonitor":
        from popsed_viz.monitor import TrainingMonitor
        return TrainingMonitor
    if name == "PhotometryView":
        from popsed_viz.photometry import PhotometryView
        return PhotometryView
    if name == "Dashboard":
        from popsed_viz.app import Dashboard
        return Dashboard
    if name in ("BackgroundFit", "fit_in_background"):
        from popsed_viz import background
        return getattr(background, name)
    raise AttributeError(name)
