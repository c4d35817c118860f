"""A non-editable install works: the wheel ships the served app and the sample run, and ``popsed serve``
serves them; stopping ``popsed serve`` stops the server it started (the port is freed).

The wheel is built from a copy of the source tree (``pip wheel --no-build-isolation``: no network) and
installed with ``--no-deps`` into a fresh ``venv --system-site-packages`` (the dependencies come from the
running interpreter's environment; the venv's own copy of popsed comes first on its path).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
COPY_IGNORE = shutil.ignore_patterns(".git", "build", "dist", "*.egg-info", "__pycache__", "runs",
                                     "test-artifacts", ".venv", ".pytest_cache", ".hypothesis", "_recovery")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _wait_http(url: str, proc: subprocess.Popen, timeout: float) -> int:
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, f"the server exited with status {proc.returncode}"
        try:
            with urllib.request.urlopen(url, timeout=60) as r:
                return r.status
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout} s")


def _terminate_and_check_port_freed(proc: subprocess.Popen, port: int) -> None:
    """SIGTERM to the launcher's pid: the port must be free within a few seconds."""
    try:
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)
        deadline = time.time() + 8
        while _port_open(port) and time.time() < deadline:
            time.sleep(0.2)
        assert not _port_open(port), f"port {port} still served after SIGTERM to popsed serve"
    finally:  # whatever the outcome, leave nothing of this test running
        if _group_alive(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except (ProcessLookupError, PermissionError):
        return False


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("src") / "popsed"
    shutil.copytree(REPO, src, ignore=COPY_IGNORE)
    out = tmp_path_factory.mktemp("wheel")
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation",
                          "-w", str(out), "-v"], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    # a data folder that is not a listed package would be dropped by a future setuptools
    assert "absent from the `packages` configuration" not in res.stdout + res.stderr
    (whl,) = out.glob("popsed-*.whl")
    return whl


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    env_dir = tmp_path_factory.mktemp("venv") / "v"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(env_dir)], check=True,
                   timeout=300)
    py = env_dir / "bin" / "python"
    res = subprocess.run([str(py), "-m", "pip", "install", "--no-deps", "--no-index", "--ignore-installed",
                          "-q", str(wheel)], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return env_dir


def _clean_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("POPSED_") and k != "PYTHONPATH"}
    env.update(OMP_NUM_THREADS="1", **extra)
    return env


def test_wheel_holds_every_package_the_app_and_the_sample_data(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for pkg_dir in ("engine", "popsed_viz"):
        for init in (REPO / pkg_dir).rglob("*.py"):
            if "__pycache__" in init.parts:
                continue
            rel = init.relative_to(REPO).as_posix()
            assert rel in names, f"{rel} is missing from the wheel (add its package to pyproject.toml)"
    for rel in ("popsed_viz/served/app/main.py", "popsed_viz/served/app/server_lifecycle.py",
                "popsed_sample_data/run_sdss/config.json", "popsed_sample_data/run_sdss/history.jsonl",
                "popsed_sample_data/run_sdss/population.parquet",
                "popsed_sample_data/run_sdss/flows/member_0.pt",
                "popsed_sample_data/mock_sdss/catalog.ecsv", "popsed_sample_data/mock_sdss/truth.ecsv",
                "engine/data/emulator_sdss_galex.pt"):
        assert rel in names, f"{rel} is missing from the wheel"


def test_installed_wheel_serves_the_sample_run(venv, tmp_path):
    py, popsed = venv / "bin" / "python", venv / "bin" / "popsed"
    env = _clean_env()
    res = subprocess.run([str(popsed), "serve", "--help"], capture_output=True, text=True, cwd=tmp_path,
                         env=env, timeout=300)
    assert res.returncode == 0 and "--port" in res.stdout, res.stderr[-2000:]
    probe = ("import json, engine, popsed_viz.paths as p; print(json.dumps({'engine': engine.__file__, "
             "'run': str(p.sample_run_dir()), 'catalog': str(p.sample_catalog()), 'app': str(p.APP_DIR)}))")
    res = subprocess.run([str(py), "-c", probe], capture_output=True, text=True, cwd=tmp_path, env=env,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    where = json.loads(res.stdout)
    site = str(venv.resolve())
    for key, value in where.items():
        assert str(Path(value).resolve()).startswith(site), f"{key} resolves outside the venv: {value}"
    assert (Path(where["run"]) / "population.parquet").is_file() and Path(where["catalog"]).is_file()
    assert (Path(where["app"]) / "main.py").is_file()

    port = _free_port()
    log = open(tmp_path / "serve.log", "wb")
    proc = subprocess.Popen([str(popsed), "serve", "--port", str(port), "--runs-dir", str(tmp_path / "runs")],
                            cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        status = _wait_http(f"http://127.0.0.1:{port}/app", proc, timeout=240)
        assert status == 200
    except BaseException:
        log.flush()
        print((tmp_path / "serve.log").read_text()[-4000:])
        raise
    finally:
        _terminate_and_check_port_freed(proc, port)
        log.close()


def test_sigterm_to_popsed_serve_frees_the_port(tmp_path):
    """``kill PID`` of ``popsed serve`` must not leave its ``panel serve`` serving the port."""
    port = _free_port()
    env = _clean_env(PYTHONPATH=str(REPO), POPSED_RUNS_DIR=str(tmp_path / "runs"))
    proc = subprocess.Popen([sys.executable, "-m", "engine.cli", "serve", "--port", str(port)], cwd=REPO,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 240
    while not _port_open(port):
        assert proc.poll() is None and time.time() < deadline, "popsed serve did not open its port"
        time.sleep(0.3)
    _terminate_and_check_port_freed(proc, port)
