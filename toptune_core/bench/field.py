"""``bench-field``: how long the offline page takes to diagnose a photo in headless chromium, and its size.

The run's offline folder (``portable.offline``) is written to a temporary
folder and served on 127.0.0.1; Debian's chromium (Playwright) opens it, waits
until the service worker keeps it, goes offline, reloads, and diagnoses each
photo with 1, 2 and 8 views through the file input. The time is the page's
own (``milliseconds`` of its result: decoding, preprocessing, the backbone and
classifier in onnxruntime-web on one WebAssembly thread, the familiarity
check); the first photo of each view count is a warm-up and not counted.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import http.server
import json
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterator, Sequence

from toptune_core.errors import ToptuneError

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run"]
VIEWS = (("1", 1), ("flip", 2), ("dihedral", 8))
GROUPS = (("onnxruntime-web (ort/)", "ort/"), ("backbone graph", "model/backbone.onnx"),
          ("top classifier", "model/classifier.onnx"), ("familiarity reference (float16)", "model/familiarity.bin"),
          ("model.json (classes, calibration, map weights)", "model/model.json"))


def file_sizes(page: dict[str, bytes]) -> list[tuple[str, int, int]]:
    """(group, bytes, bytes gzip-compressed) of the offline folder's files, and the total."""
    rows = []
    grouped: set[str] = set()
    for label, prefix in GROUPS:
        names = [n for n in page if n.startswith(prefix)]
        grouped.update(names)
        rows.append((label, sum(len(page[n]) for n in names), sum(len(gzip.compress(page[n], 6)) for n in names)))
    rest = [n for n in page if n not in grouped]
    rows.append(("page (html, js, css, sw, manifest, icons, files.json)", sum(len(page[n]) for n in rest),
                 sum(len(gzip.compress(page[n], 6)) for n in rest)))
    rows.append(("total", sum(r[1] for r in rows), sum(r[2] for r in rows)))
    return rows


def bench_field(run_id: str, photos: Sequence[str], *, store=None, settings=None) -> dict:
    """Diagnosis milliseconds per photo at 1, 2 and 8 views, the page's load time offline, and its file sizes."""
    from toptune_core.portable.export import run_files
    from toptune_core.portable.offline import write_folder

    if not Path(CHROMIUM).exists():
        raise ToptuneError(f"bench-field needs Debian's chromium at {CHROMIUM} (make browser installs it).")
    if len(photos) < 2:
        raise ToptuneError("Give at least 2 photos (the first of each view count is a warm-up).")
    files = run_files(run_id, store=store, settings=settings, offline=True)
    page = {k[len("offline/"):]: v for k, v in files.items() if k.startswith("offline/")}
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_folder(Path(tmp) / "offline", page)
        handler = functools.partial(_QuietHandler, directory=str(folder))
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            timings = _in_chromium(f"http://127.0.0.1:{server.server_address[1]}/index.html", photos)
        finally:
            server.shutdown()
            server.server_close()
    return {"run_id": run_id, "photos": len(photos), "load_average": os.getloadavg(), **timings,
            "sizes": file_sizes(page)}


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@contextlib.contextmanager
def offline_page(url: str, timeout_ms: int = 300_000) -> Iterator[tuple]:
    """Headless chromium on the offline page at ``url``: loaded until it says it is kept for offline use, the
    network turned off, reloaded until the photo input is enabled. Yields (browser, page, milliseconds of the
    offline reload)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context()
            page = context.new_page()
            page.goto(url)
            page.wait_for_selector("#offline[data-state=ready]", timeout=timeout_ms)
            context.set_offline(True)
            start = time.perf_counter()
            page.reload()
            page.wait_for_selector("#photo:not([disabled])", timeout=timeout_ms)
            yield browser, page, (time.perf_counter() - start) * 1000
        finally:
            browser.close()


def diagnose(page, photo: str, timeout_ms: int = 300_000) -> dict:
    """One photo through the offline page's file input: its ``#result`` JSON."""
    page.evaluate("document.getElementById('result').textContent = ''")
    page.set_input_files("#photo", str(photo))
    page.wait_for_function("document.getElementById('result').textContent.length > 0", timeout=timeout_ms)
    return json.loads(page.text_content("#result"))


def _in_chromium(url: str, photos: Sequence[str]) -> dict:
    with offline_page(url) as (browser, page, load_ms):
        rows = []
        for name, n in VIEWS:
            page.check(f"input[name=views][value='{name}']")
            ms = [diagnose(page, photo)["milliseconds"] for photo in photos][1:]
            rows.append({"views": n, "median_ms": statistics.median(ms), "min_ms": min(ms), "max_ms": max(ms),
                         "n": len(ms)})
        return {"browser": f"chromium {browser.version}", "offline_load_ms": load_ms, "rows": rows}


def report(result: dict) -> str:
    """The benchmark as Markdown: the timing table and the size table."""
    load = ", ".join(f"{v:.2f}" for v in result["load_average"])
    lines = [f"Offline page of run {result['run_id']} in headless {result['browser']}, onnxruntime-web 1 WebAssembly "
             f"thread; {result['photos']} photos, the first of each view count a warm-up; load average {load}. "
             f"Page load offline (reload to ready): {result['offline_load_ms']:.0f} ms.", "",
             "| views | diagnosis per photo, median (ms) | min | max | photos timed |", "|---|---|---|---|---|"]
    lines += [f"| {r['views']} | {r['median_ms']:.0f} | {r['min_ms']:.0f} | {r['max_ms']:.0f} | {r['n']} |"
              for r in result["rows"]]
    lines += ["", "| offline files | size (MB) | gzip -6 (MB) |", "|---|---|---|"]
    lines += [f"| {label} | {raw / 1e6:.2f} | {packed / 1e6:.2f} |" for label, raw, packed in result["sizes"]]
    return "\n".join(lines)
