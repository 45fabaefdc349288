"""A real ``streamlit run app.py`` on a free 127.0.0.1 port, in its own process group, for the browser tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def streamlit_server(home: Path, log_path: Path, env: Optional[dict] = None,
                     procs: Optional[list] = None) -> Iterator[str]:
    """Start the dashboard with data folder ``home`` (and ``env`` added); yields its URL; stops it (its whole
    process group) at the end. ``procs``, if given, receives the ``Popen``."""
    port = free_port()
    full_env = {**os.environ, "TOPTUNE_HOME": str(home), "PYTHONPATH": str(REPO), **(env or {})}
    log = open(log_path, "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true", "--server.address",
         "127.0.0.1", "--server.port", str(port), "--browser.gatherUsageStats", "false"],
        cwd=REPO, env=full_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    if procs is not None:
        procs.append(proc)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as resp:
                    if resp.read().strip() == b"ok":
                        break
            except OSError:
                pass
            assert proc.poll() is None, f"streamlit exited; see {log_path}"
            assert time.monotonic() < deadline, "streamlit did not start within 90 s"
            time.sleep(0.5)
        yield url
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)  # its own process group: streamlit and what it started
            proc.wait(20)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


@contextmanager
def browser_page(pw, folder: Path, timeout_ms: int = 60_000) -> Iterator[tuple]:
    """Debian's chromium, headless (``CHROMIUM_ARGS``), and one 1366 x 1000 page whose waits and ``expect`` checks
    default to ``timeout_ms``: yields (page, shot), ``shot`` a ``Screenshots`` into ``folder``. A failure inside
    saves ``folder/failure.png``; the browser is closed at the end."""
    from playwright.sync_api import expect

    browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    page = browser.new_page(viewport={"width": 1366, "height": 1000})
    page.set_default_timeout(timeout_ms)
    expect.set_options(timeout=timeout_ms)
    try:
        yield page, Screenshots(page, folder)
    except BaseException:
        page.screenshot(path=str(folder / "failure.png"), full_page=True)
        raise
    finally:
        browser.close()


class Screenshots:
    """Numbered full-page screenshots of ``page`` in ``folder``: ``shot("home")`` writes 01-home.png, then 02-..."""

    def __init__(self, page, folder: Path):
        self.page, self.folder, self.step = page, folder, 0

    def __call__(self, name: str) -> None:
        self.step += 1
        self.page.screenshot(path=str(self.folder / f"{self.step:02d}-{name}.png"), full_page=True)
