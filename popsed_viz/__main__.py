"""``python -m popsed_viz [RUN] [--port N] [--address A]``: serve the dashboard on 127.0.0.1."""
import sys

from popsed_viz.serve import main

sys.exit(main())
