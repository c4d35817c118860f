"""Exception types of the project.

Every error a user can cause (a bad catalog, a foreign model file, a parameter
outside its range) is raised as a subclass of :class:`PopsedError` with a
one-line message that names the problem (file, column, parameter, row count).
The ``popsed`` command line turns these into a single line on stderr and exit
status 2, never a traceback.
"""
from __future__ import annotations


class PopsedError(ValueError):
    """Base class of all user-facing errors (a ``ValueError``)."""


class CatalogError(PopsedError):
    """A catalog cannot be read or fails validation."""


class ModelFileError(PopsedError):
    """A model / run file is missing, truncated, foreign or from an incompatible version."""


class RunDirError(PopsedError):
    """A run directory is missing, locked, partial or would be overwritten."""
