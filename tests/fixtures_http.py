"""A local HTTP file server for download tests (127.0.0.1, port 0, one thread, always shut down).

Each route serves bytes with one behaviour: ``normal`` (honours ``Range``), ``drop`` (the first
``drops`` requests send ``drop_after`` bytes then close the connection), ``no_range`` (ignores
``Range``: always 200 with the whole file), ``slow`` (sleeps ``delay`` seconds before answering)
or ``status`` (answers with ``status``, e.g. 404). Every request is recorded (path, Range header,
status), so tests can assert what the client asked for.

Use the ``http_server`` fixture: ``url = http_server.add("/a.bin", data, behaviour="drop")``.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

MAX_SLEEP_S = 5.0  # a slow route never blocks a handler thread longer than this


@dataclass
class Route:
    data: bytes
    behaviour: str = "normal"
    drop_after: int = 0
    drops: int = 1
    delay: float = 0.0
    status: int = 200
    served: int = 0


@dataclass
class FileServer:
    """State shared with the handler: routes and the log of requests."""

    routes: dict[str, Route] = field(default_factory=dict)
    requests: list[dict] = field(default_factory=list)
    base_url: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, path: str, data: bytes = b"", **behaviour) -> str:
        """Serve ``data`` at ``path`` with the given behaviour; returns the full URL."""
        self.routes[path] = Route(data=data, **behaviour)
        return self.base_url + path

    def url(self, path: str) -> str:
        return self.base_url + path

    def requests_for(self, path: str) -> list[dict]:
        with self.lock:
            return [r for r in self.requests if r["path"] == path]


class QuietHandler(BaseHTTPRequestHandler):
    """HTTP/1.1 handler that logs nothing and answers HEAD and GET with ``_serve(head)``."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # keep test output quiet
        pass

    def do_HEAD(self):  # noqa: N802
        self._serve(head=True)

    def do_GET(self):  # noqa: N802
        self._serve(head=False)

    def _serve(self, head: bool) -> None:
        raise NotImplementedError


def _handler(state: FileServer):
    class Handler(QuietHandler):
        def _serve(self, head: bool) -> None:
            route = state.routes.get(self.path)
            range_header = self.headers.get("Range")
            record = {"path": self.path, "range": range_header, "status": None}
            with state.lock:
                state.requests.append(record)
            if route is None:
                return self._reply(record, 404, b"not found", head)
            if route.behaviour == "status":
                return self._reply(record, route.status, b"error", head)
            if route.behaviour == "slow":
                time.sleep(min(route.delay, MAX_SLEEP_S))
            data, start = route.data, 0
            if range_header and route.behaviour != "no_range":
                start = int(range_header.split("=")[1].split("-")[0])
                if start >= len(data):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    record["status"] = 416
                    return
            body = data[start:]
            status = 206 if start else 200
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Accept-Ranges", "bytes" if route.behaviour != "no_range" else "none")
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.end_headers()
            record["status"] = status
            if head:
                return
            route.served += 1
            if route.behaviour == "drop" and route.served <= route.drops:
                self.wfile.write(body[: route.drop_after])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(body)

        def _reply(self, record: dict, status: int, body: bytes, head: bool) -> None:
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            record["status"] = status
            if not head:
                self.wfile.write(body)

    return Handler


@pytest.fixture
def http_server():
    """A :class:`FileServer` listening on 127.0.0.1 (ephemeral port) for the duration of a test."""
    state = FileServer()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    server.daemon_threads = True
    state.base_url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
