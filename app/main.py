"""``panel serve app/`` from a source checkout: the dashboard of :mod:`popsed_viz` (``popsed serve`` runs the
same).

Opens on the bundled sample run; another run can be given with ``--args RUN_DIR``
or the ``POPSED_RUN`` environment variable, or picked in the sidebar.
"""
import sys
from pathlib import Path

ROOT = str(Path(__file__).resolve().parents[1])
if ROOT not in sys.path:  # a source checkout without `pip install -e .`
    sys.path.insert(0, ROOT)

from popsed_viz.app import serve_page  # noqa: E402 - importable only after the sys.path insertion above

serve_page()
