"""Directory app served by ``popsed serve`` (``panel serve``); all of it is
:func:`popsed_viz.app.serve_page`."""
from popsed_viz.app import serve_page

serve_page()
