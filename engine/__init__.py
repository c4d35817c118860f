"""popsed engine: differentiable SPS, emulator, population inference, catalogs and runs.

Sub-packages and modules (one per concept):

- :mod:`engine.sps` -- differentiable stellar population synthesis (BC03/MILES SSPs,
  SFH bases, dust, cosmology, filter photometry);
- :mod:`engine.emulator` -- the neural SED emulator (Speculator-style);
- :mod:`engine.catalog` -- catalog reading and validation;
- :mod:`engine.population` -- flow ensembles, OT losses, noise model, training, runs;
- :mod:`engine.mock` -- magnitude-limited mock catalogs;
- :mod:`engine.errors` -- the project's user-facing exception types;
- :mod:`engine.cli` -- the ``popsed`` command line.
"""
from __future__ import annotations

#: The package version (pyproject.toml reads it from here).
__version__ = "0.1.0"


def fit(*args, **kwargs):
    """Fit a flow ensemble to a catalog; see :func:`engine.population.fit`."""
    from engine.population import fit as _fit

    return _fit(*args, **kwargs)
