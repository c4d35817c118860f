"""popsed engine: differentiable SPS, emulator, population inference, catalogs and runs.

Sub-packages and modules (one per concept):

- :mod:`engine.sps` -- differentiable stellar population synthesis (BC03/MILES SSPs,
  SFH bases, dust, cosmology, filter photometry);
- :mod:`engine.mock` -- magnitude-limited mock catalogs;
- :mod:`engine.errors` -- the project's user-facing exception types;
- :mod:`engine.cli` -- the ``popsed`` command line.
"""
from __future__ import annotations

__version__ = "0.1.0"
