"""The dashboard: training monitor, photometry and population views of one run.

``Dashboard(run).template()`` is what ``panel serve app/`` serves (one
instance per browser session: no state is shared between sessions);
``Dashboard(run).panel()`` is the same without the page template, for
notebooks.  The sidebar picks a run directory, cuts redshift, chooses the
pooled ensemble or a member, and starts / stops a background fit of the
sample catalog or an uploaded one.
"""
from __future__ import annotations

import html
import os
import sys
import time
from pathlib import Path

import panel as pn
import param
from panel.theme.fast import Fast

from popsed_viz.base import C, L
from popsed_viz.jobs import (
    DEFAULT_FIT,
    FitJob,
    default_runs_dir,
    new_run_dir,
    safe_filename,
    sample_catalog,
    sample_run_dir,
)
from popsed_viz.monitor import TrainingMonitor
from popsed_viz.photometry import PhotometryView
from popsed_viz.population import PopulationView
from popsed_viz.reader import RunReader

__all__ = ["Dashboard", "discover_runs", "drop_remote_fonts", "serve_session", "serve_page",
           "on_server_loaded", "warm_up"]


CATALOG_SUFFIXES = (".ecsv", ".csv", ".fits", ".fit", ".parquet", ".pq", ".h5", ".hdf5")
#: Units offered for flux columns that carry none ("": the file's own units; see docs/catalogs.md)
FLUX_UNITS = ["", "nanomaggy", "maggy", "nJy", "uJy", "mJy", "Jy"]


def drop_remote_fonts() -> None:
    """Serve the Fast design without its Google-Fonts stylesheet.

    The app must work, and log no console error, on a machine without
    internet access; Panel's Fast design links ``fonts.googleapis.com``.  This
    patches ``panel.theme.fast.Fast._resources`` for the running server process
    (called by :func:`serve_session`, not on import), falling back to the
    browser's sans-serif font.
    """
    if "font" in Fast._resources:
        Fast._resources = {k: v for k, v in Fast._resources.items() if k != "font"}


def discover_runs(*roots: Path, limit: int = 50) -> list[Path]:
    """Run directories (with config.json or history.jsonl) directly under ``roots``, newest first."""
    found = []
    for root in roots:
        try:
            if (root / "config.json").is_file() or (root / "history.jsonl").is_file():
                found.append(root)
                continue
            for child in root.iterdir():
                if child.is_dir() and (
                    (child / "config.json").is_file() or (child / "history.jsonl").is_file()
                ):
                    found.append(child)
        except OSError:
            continue
    uniq = {}
    for p in found:
        uniq.setdefault(str(p.resolve()), p)

    def mtime(p):
        try:
            return p.stat().st_mtime
        except OSError:
            return 0

    return sorted(uniq.values(), key=mtime, reverse=True)[:limit]


class Dashboard(param.Parameterized):
    """All views of one run, with the run picker and fit controls."""

    run_path = param.String(default="", doc="the run directory shown")
    status_text = param.String(default="", precedence=-1)
    status_level = param.String(default="info", precedence=-1)
    job_text = param.String(default="", precedence=-1)
    job_level = param.String(default="info", precedence=-1)
    fit_error = param.String(default="", precedence=-1, doc="why the session's last fit failed (main pane)")

    def __init__(self, run=None, runs_dir=None, period_ms: int = 1000, **params):
        run = run if run not in (None, "") else sample_run_dir()
        super().__init__(run_path=str(run), **params)
        self.runs_dir = Path(runs_dir) if runs_dir else default_runs_dir()
        self.period_ms = period_ms
        self.reader = RunReader(self.run_path)
        self.monitor = TrainingMonitor(self.reader)
        self.photometry = PhotometryView(self.reader)
        self.population = PopulationView(self.reader)
        self.job: FitJob | None = None
        self._periodic = None
        self._upload_path: Path | None = None
        self._build_widgets()
        self._update_status()

    # ---------------------------------------------------------------- widgets
    def _build_widgets(self):
        self.run_select = pn.widgets.Select(
            **L("Runs found"), options=self._run_options(), sizing_mode="stretch_width"
        )
        self.run_input = pn.widgets.TextInput(
            css_classes=["popsed-run-input"],
            **L("Run directory"),
            value=self.run_path,
            sizing_mode="stretch_width",
            placeholder="path/to/run",
        )
        self.open_button = pn.widgets.Button(
            css_classes=["popsed-open"], **L("Open"), **C("primary"), width=80
        )
        self.rescan_button = pn.widgets.Button(**L("↻"), width=45, description="rescan the runs directory")
        self.open_button.on_click(lambda e: self.open_run(self.run_input.value))
        self.rescan_button.on_click(lambda e: self._rescan())
        self.run_select.param.watch(self._on_select, "value")

        self.z_slider = pn.widgets.RangeSlider.from_param(
            self.population.param.z_range,
            css_classes=["popsed-z"],
            **L("Redshift range"),
            step=0.005,
            format="0.000",
            sizing_mode="stretch_width",
        )
        self.member_select = pn.widgets.Select.from_param(
            self.population.param.member,
            css_classes=["popsed-member"],
            **L("Ensemble"),
            sizing_mode="stretch_width",
        )
        self.sample_choice = pn.widgets.RadioButtonGroup.from_param(
            self.population.param.sample,
            **L("Samples"),
            css_classes=["popsed-sample"],
            sizing_mode="stretch_width",
        )
        self.truth_toggle = pn.widgets.Checkbox.from_param(self.population.param.show_truth,
                                                           **L("Overlay truth (mock runs)"))
        self.population.param.watch(self._sync_member, "member")

        self._build_fit_widgets()

    def _build_fit_widgets(self):
        """The background fit: catalog (sample or upload) and how to read it, size, start / stop."""
        self.catalog_choice = pn.widgets.RadioButtonGroup(
            **L("Catalog"), options=["sample catalog", "upload"], value="sample catalog", **C("light")
        )
        self.upload = pn.widgets.FileInput(accept=",".join(CATALOG_SUFFIXES), multiple=False,
                                           sizing_mode="stretch_width", css_classes=["popsed-upload"])
        self.upload.param.watch(self._on_upload, "value")
        # how to read the uploaded catalog: the options of `popsed catalog` / `popsed fit` (docs/catalogs.md)
        self.bands_input = pn.widgets.TextInput(**L("Bands"), placeholder="auto, or sdss2010-u,sdss2010-g,…",
                                                css_classes=["popsed-bands"], sizing_mode="stretch_width")
        self.flux_unit_input = pn.widgets.Select(**L("Unit of flux columns without one"), options=FLUX_UNITS,
                                                 value="", css_classes=["popsed-flux-unit"],
                                                 sizing_mode="stretch_width")
        self.selection_input = pn.widgets.TextInput(**L("Selection"),
                                                    placeholder="the catalog's own, or sdss2010-r<17.77",
                                                    css_classes=["popsed-selection"],
                                                    sizing_mode="stretch_width")
        self.redshift_input = pn.widgets.Select(**L("Redshift"), options=["auto", "observed", "free"],
                                                value="auto", css_classes=["popsed-redshift"],
                                                sizing_mode="stretch_width")
        self.colmap_upload = pn.widgets.FileInput(accept=".yml,.yaml,.json", multiple=False,
                                                  sizing_mode="stretch_width")
        self.colmap_upload.param.watch(self._on_colmap, "value")
        self._colmap_path: Path | None = None
        self.steps_input = pn.widgets.IntInput(
            css_classes=["popsed-steps"], **L("Steps"), value=DEFAULT_FIT["steps"], start=1, step=50, width=90
        )
        self.members_input = pn.widgets.IntInput(
            css_classes=["popsed-members"],
            **L("Members"),
            value=DEFAULT_FIT["members"],
            start=1,
            end=16,
            width=90,
        )
        self.batch_input = pn.widgets.IntInput(
            css_classes=["popsed-batch"],
            **L("Batch"),
            value=DEFAULT_FIT["batch"],
            start=64,
            step=256,
            width=100,
        )
        self.start_button = pn.widgets.Button(
            css_classes=["popsed-start"], **L("▶ Start fit"), **C("success"), sizing_mode="stretch_width"
        )
        self.stop_button = pn.widgets.Button(
            css_classes=["popsed-stop"],
            **L("■ Stop fit"),
            **C("danger"),
            disabled=True,
            sizing_mode="stretch_width",
        )
        self.start_button.on_click(lambda e: self.start_fit())
        self.stop_button.on_click(lambda e: self.stop_fit())

    def _sync_member(self, event):
        if event.new in self.photometry.param.member.objects:
            self.photometry.member = event.new

    def _run_options(self) -> dict:
        opts = {}
        sample = sample_run_dir()
        if sample.is_dir():
            opts[f"sample: {sample.name}"] = str(sample)
        for p in discover_runs(self.runs_dir):
            opts.setdefault(p.name, str(p))
        cur = self.run_path
        if cur and cur not in opts.values():
            opts[Path(cur).name or cur] = cur
        return opts

    def _rescan(self):
        opts = self._run_options()
        self.run_select.options = opts
        if self.run_path in opts.values():
            self.run_select.value = self.run_path

    def _on_select(self, event):
        if event.new and event.new != self.run_path:
            self.open_run(event.new)

    def _on_upload(self, event):
        if not event.new:
            return
        name = safe_filename(self.upload.filename)
        if not name.lower().endswith(CATALOG_SUFFIXES):
            self._job_say(
                f"Unsupported catalog file `{name}` (use one of {', '.join(CATALOG_SUFFIXES)}).", "danger"
            )
            return
        dest = self._save_upload(name, event.new, "the upload")
        if dest is None:
            return
        self._upload_path = dest
        self.catalog_choice.value = "upload"
        self._job_say(f"Uploaded `{name}` ({len(event.new) / 1024:.0f} kB). Press *Start fit*.", "info")

    def _save_upload(self, name: str, data: bytes, what: str) -> Path | None:
        """Write an uploaded file to ``RUNS/uploads/name`` atomically; None (and a message) on failure."""
        dest = self.runs_dir / "uploads" / name
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_name(dest.name + ".part")
            tmp.write_bytes(data)
            os.replace(tmp, dest)
        except OSError as exc:
            self._job_say(f"Could not save {what}: {exc}", "danger")
            return None
        return dest

    def _on_colmap(self, event):
        if not event.new:
            return
        name = safe_filename(self.colmap_upload.filename)
        dest = self._save_upload(name, event.new, "the column map")
        if dest is None:
            return
        self._colmap_path = dest
        self._job_say(f"Column map `{name}` will be used for the uploaded catalog.", "info")

    def catalog_args(self) -> list[str]:
        """The ``popsed fit`` options of the catalog widgets (bands, column map, flux unit, selection,
        redshift); those left at their defaults are not passed."""
        args: list[str] = []
        if self.bands_input.value.strip() and self.bands_input.value.strip() != "auto":
            args += ["--bands", self.bands_input.value.strip()]
        if self._colmap_path is not None and self.catalog_choice.value == "upload":
            args += ["--columns", str(self._colmap_path)]
        if self.flux_unit_input.value:
            args += ["--flux-unit", self.flux_unit_input.value]
        if self.selection_input.value.strip():
            args += ["--selection", self.selection_input.value.strip()]
        if self.redshift_input.value != "auto":
            args += ["--redshift", self.redshift_input.value]
        return args

    # -------------------------------------------------------------- run files
    def open_run(self, path) -> None:
        """Show another run directory (bad paths show a message, never raise)."""
        path = str(path or "").strip()
        self.run_path = path
        self.reader = RunReader(path)
        for view in (self.monitor, self.photometry, self.population):
            view.set_run(self.reader)
        if self.run_input.value != path:
            self.run_input.value = path
        opts = self._run_options()
        self.run_select.options = opts
        if path in opts.values():
            self.run_select.value = path
        self._update_status()

    def _update_status(self):
        st = self.reader.status()
        text = st.markdown()
        if st.state in ("missing", "not_a_run") and self.job is not None and self.job.running:
            text, level = f"Starting the fit… (`{self.reader.path}` will appear shortly)", "info"
        else:
            level = st.level
        if text != self.status_text or level != self.status_level:
            self.param.update(status_text=text, status_level=level)

    def refresh(self):
        """Pull new data from the run (periodic callback)."""
        try:
            self.monitor.refresh()
            self.photometry.refresh()
            self.population.refresh()
            self._update_status()
            self._update_job()
        except Exception as exc:  # noqa: BLE001 - the periodic callback must survive bad files
            self.param.update(status_text=f"Could not read the run: {type(exc).__name__}: {exc}",
                              status_level="danger")

    # -------------------------------------------------------------------- fit
    def _job_say(self, text, level="info"):
        self.param.update(job_text=text, job_level=level)

    def start_fit(self) -> FitJob | None:
        if self.job is not None and self.job.running:
            self._job_say("A fit is already running in this session; stop it first.", "warning")
            return None
        if self.catalog_choice.value == "upload":
            if self._upload_path is None:
                self._job_say("Upload a catalog first (ECSV, CSV, FITS, Parquet or HDF5).", "warning")
                return None
            catalog, label = self._upload_path, Path(self._upload_path).stem
        else:
            catalog, label = sample_catalog(), "sample"
            if not catalog.is_file():
                self._job_say(f"The sample catalog is missing: `{catalog}`.", "danger")
                return None
        out = new_run_dir(self.runs_dir, label)
        self.fit_error = ""
        try:
            self.job = FitJob(catalog, out, steps=self.steps_input.value, members=self.members_input.value,
                              batch=self.batch_input.value, extra=self.catalog_args()).start()
        except OSError as exc:
            self._job_say(f"Could not start the fit: {exc}", "danger")
            return None
        self.open_run(out)
        self._update_job()
        return self.job

    def stop_fit(self):
        if self.job is None or not self.job.running:
            self._job_say("No fit is running in this session.", "info")
            return
        self._job_say("Stopping the fit…", "warning")
        self.job.stop()
        self._update_job()

    def _update_job(self):
        running = self.job is not None and self.job.running
        self.start_button.disabled = running
        self.stop_button.disabled = not running
        if self.job is not None:
            text, level = self.job.describe()
            if text != self.job_text or level != self.job_level:
                self._job_say(text, level)
            error = self._fit_error_markdown() if self.job.failed else ""
            if error != self.fit_error:
                self.fit_error = error

    def _fit_error_markdown(self) -> str:
        """The failed fit's message, whole and wrapped (the sidebar is too narrow for it)."""
        message = html.escape(self.job.error_message() or "(no message in the log)")
        return (f"**The fit of `{self.job.catalog.name}` failed** (exit status {self.job.poll()}):\n\n"
                f'<pre style="white-space: pre-wrap; word-break: break-word; margin: 0">{message}</pre>')

    # ------------------------------------------------------------ life cycle
    def start_watching(self):
        if self._periodic is None:
            self._periodic = pn.state.add_periodic_callback(self.refresh, period=self.period_ms, start=True)
        return self._periodic

    def close(self, *args):
        """Stop this session's periodic callback and fit (session destroyed)."""
        if self._periodic is not None:
            try:
                self._periodic.stop()
            except Exception:  # noqa: BLE001
                pass
            self._periodic = None
        if self.job is not None and self.job.running:
            self.job.stop(timeout=5.0)

    # ----------------------------------------------------------------- layout
    def _alert(self, text_param, level_param, css="popsed-status"):
        return pn.bind(
            lambda t, lvl: pn.pane.Alert(
                t, alert_type=lvl or "info", visible=bool(t), margin=(5, 5), css_classes=[css]
            ),
            text_param,
            level_param,
        )

    def sidebar(self):
        return [
            pn.pane.Markdown("### Run"),
            self.run_select,
            pn.Row(
                self.run_input,
                pn.Column(pn.Spacer(height=18), pn.Row(self.open_button, self.rescan_button)),
                sizing_mode="stretch_width",
            ),
            pn.pane.Markdown("### Population cut"),
            self.z_slider,
            self.member_select,
            self.sample_choice,
            self.truth_toggle,
            pn.pane.Markdown("### Fit in the background"),
            self.catalog_choice,
            self.upload,
            pn.Card(self.bands_input, pn.pane.Markdown("Column map (YAML/JSON, docs/catalogs.md)"),
                    self.colmap_upload,
                    self.flux_unit_input, self.selection_input, self.redshift_input, title="Catalog options",
                    collapsed=True, sizing_mode="stretch_width", css_classes=["popsed-catalog-options"]),
            pn.Row(self.steps_input, self.members_input, self.batch_input),
            pn.Row(self.start_button, self.stop_button, sizing_mode="stretch_width"),
            self._alert(self.param.job_text, self.param.job_level, "popsed-job"),
            pn.pane.Markdown(f"New runs go to `{self.runs_dir}`.", styles={"font-size": "0.8em"}),
        ]

    def main(self):
        tabs = pn.Tabs(
            ("Training", self.monitor.panel()),
            ("Photometry", self.photometry.plots()),
            ("Population", self.population.plots()),
            ("Corner", self.population.corner_panel()),
            dynamic=True,
            sizing_mode="stretch_width",
        )
        self.tabs = tabs
        fit_error = pn.bind(lambda t: pn.pane.Alert(t, alert_type="danger", visible=bool(t), margin=(5, 5),
                                                    css_classes=["popsed-fit-error"],
                                                    sizing_mode="stretch_width"),
                            self.param.fit_error)
        return [pn.Column(self._alert(self.param.status_text, self.param.status_level), fit_error, tabs,
                          sizing_mode="stretch_width")]

    def panel(self):
        """Dashboard without the page template (notebooks)."""
        return pn.Row(
            pn.Column(*self.sidebar(), width=320), pn.Column(*self.main(), sizing_mode="stretch_width")
        )

    def template(self):
        """The served page (a FastListTemplate)."""
        return pn.template.FastListTemplate(
            title="popsed · population SED inference",
            sidebar=self.sidebar(),
            main=self.main(),
            accent="#c0392b",
            sidebar_width=340,
            main_layout=None,
        )

    def __panel__(self):
        return self.panel()


def serve_session(run=None) -> pn.template.FastListTemplate:
    """Build one browser session's page (used by ``app/main.py``)."""
    drop_remote_fonts()
    dash = Dashboard(run)
    dash.start_watching()
    doc = pn.state.curdoc
    if doc is not None and doc.session_context is not None:  # served: per-session clean-up
        doc.on_session_destroyed(lambda ctx: dash.close())
    return dash.template()


def serve_page(argv: list[str] | None = None) -> None:
    """Body of the served directory app (``main.py``): mark this session's page servable.

    The run shown first is ``argv[1]`` (``panel serve ... --args RUN``), else ``$POPSED_RUN``, else the
    bundled sample run.
    """
    argv = sys.argv if argv is None else argv
    pn.extension(notifications=False)
    run = argv[1] if len(argv) > 1 else os.environ.get("POPSED_RUN") or None
    serve_session(run).servable(title="popsed")


def on_server_loaded(server_context) -> None:
    """Bokeh lifecycle hook (``server_lifecycle.py``): warm up once when the server starts."""
    warm_up()


def warm_up(run=None) -> float:
    """Server start-up: build and render one dashboard of the default run (all
    tabs), so that imports, datashader's numba kernels and the run's files are
    ready before the first browser session; returns the seconds it took."""

    from bokeh.document import Document

    from popsed_viz.plots import warm_up as _warm

    t = time.perf_counter()
    _warm()
    try:
        run = run or os.environ.get("POPSED_RUN") or sample_run_dir()
        dash = Dashboard(run)
        for obj in (
            dash.monitor.panel(),
            dash.photometry.plots(),
            dash.population.plots(),
            dash.population.corner(),
        ):
            pn.panel(obj).get_root(Document())
    except Exception:  # noqa: BLE001 - warming up must never stop the server
        pass
    return time.perf_counter() - t
