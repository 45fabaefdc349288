"""A real HTTP server on 127.0.0.1 serving zips as Eden's download server does (Range requests, 404s).

``serve()`` starts it in a thread; ``EdenServer`` holds what it serves (URL path
-> bytes) and what it saw: each request's path and Range header, and the most
connections it was sending at once. ``rate`` throttles each response (bytes a
second) so that downloads last long enough to overlap or to be killed midway;
``cut_after`` drops a connection after that many bytes.
"""

from __future__ import annotations

import io
import threading
import time
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator, Optional

from toptune_core.data.eden import eden_url

_SEND = 64 * 1024


@dataclass
class EdenServer:
    files: dict[str, bytes] = field(default_factory=dict)
    requests: list[tuple[str, Optional[str]]] = field(default_factory=list)  # (path, Range header)
    cut_after: dict[str, int] = field(default_factory=dict)  # path -> bytes sent before dropping the connection
    rate: Optional[float] = None  # bytes a second per response; None: as fast as possible
    base_url: str = ""
    active: int = 0
    max_active: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def serve_zip(self, name: str, data: bytes) -> None:
        self.files[url_path(name)] = data

    def _sending(self, delta: int) -> None:
        with self.lock:
            self.active += delta
            self.max_active = max(self.max_active, self.active)


def url_path(name: str) -> str:
    """The URL path the client asks for dataset ``name``."""
    return "/datasets/" + eden_url(name, "http://x/").split("/", 3)[3]


def zip_bytes(entries: dict[str, bytes]) -> bytes:
    """A zip of ``entries`` (name -> bytes), stored: camera JPEGs barely compress, and Eden's zips are stored."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _handler(state: EdenServer):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:
            pass

        def do_GET(self) -> None:
            rng = self.headers.get("Range")
            state.requests.append((self.path, rng))
            data = state.files.get(self.path)
            if data is None:
                self.send_error(404, "Not Found")
                return
            start = 0
            if rng and rng.startswith("bytes=") and rng.endswith("-"):
                start = int(rng[6:-1])
                if start >= len(data):
                    self.send_error(416, "Range Not Satisfiable")
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            self.send_header("Content-Type", "application/zip")
            self.send_header("Content-Length", str(len(data) - start))
            self.send_header("Accept-Ranges", "bytes")
            self.end_headers()
            cut = state.cut_after.get(self.path)
            self._send(data[start:] if cut is None else data[start:cut])
            if cut is not None:
                self.wfile.flush()
                self.close_connection = True

        def _send(self, body: bytes) -> None:
            state._sending(+1)
            try:
                for i in range(0, len(body), _SEND):
                    self.wfile.write(body[i:i + _SEND])
                    if state.rate:
                        time.sleep(_SEND / state.rate)
            except (BrokenPipeError, ConnectionResetError):  # the client went away (killed, cancelled)
                self.close_connection = True
            finally:
                state._sending(-1)

    return Handler


@contextmanager
def serve(state: Optional[EdenServer] = None) -> Iterator[EdenServer]:
    """Serve ``state`` on 127.0.0.1 (a free port) until the block ends."""
    state = state or EdenServer()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    state.base_url = f"http://127.0.0.1:{httpd.server_address[1]}/datasets/"
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
