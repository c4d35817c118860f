"""Directory app: ``panel serve app/ --address 127.0.0.1 --port 5006``.

Opens on the bundled sample run (``sample_data/run_sdss``); another run can be
given with ``--args RUN_DIR`` or the ``POPSED_RUN`` environment variable, or
picked in the sidebar.  All logic lives in :mod:`popsed_viz`.
"""
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # a source checkout without `pip install -e .`
    sys.path.insert(0, str(ROOT))

import panel as pn  # noqa: E402

from popsed_viz.app import serve_session  # noqa: E402

pn.extension(notifications=False)

run = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("POPSED_RUN") or None
serve_session(run).servable(title="popsed")
