"""Neural SED emulator (Speculator-style, Alsing et al. 2020), a drop-in for the direct SPS.

- :mod:`~engine.emulator.network` -- the MLP with the Speculator activation;
- :mod:`~engine.emulator.model` -- :class:`Emulator`, :func:`load`, :func:`save` (the design: the SPS's exact
  linear structure around two small networks for the redshift- and dust-dependent component luminosities);
- :mod:`~engine.emulator.dataset` -- SPS training sets (in chunks, on dask if asked);
- :mod:`~engine.emulator.train` -- the training loop;
- :mod:`~engine.emulator.check` -- accuracy and throughput against the SPS;
- :mod:`~engine.emulator.cli` -- ``popsed emulator train|check|info``.
"""
from engine.emulator.model import Emulator, load, save

__all__ = ["Emulator", "load", "save", "default_emulator_path"]


def default_emulator_path():
    """Path of the emulator shipped with the package (SDSS ugriz + GALEX FUV/NUV)."""
    from pathlib import Path

    return Path(__file__).resolve().parents[1] / "data" / "emulator_sdss_galex.pt"
