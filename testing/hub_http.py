"""HTTP plumbing of the test Hub server: requests, responses, errors with ``X-Error-Code``, the request log."""

from __future__ import annotations

import contextlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, quote, unquote, urlparse

from lorastack.errors import LorastackError

#: How long a "hang" fault holds a request unanswered at most (the server's stop() ends it sooner).
HANG_SECONDS = 300


@dataclass
class Logged:
    method: str
    route: str
    status: int
    bytes_in: int


class HubError(LorastackError):
    def __init__(self, status: int, message: str, code: str | None = None, extra: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.extra = status, message, code, extra or {}


@dataclass
class Request:
    method: str
    path: str
    query: dict
    headers: object  # an email.message.Message: case-insensitive .get()
    body: bytes

    def json(self):
        return json.loads(self.body or b"null")


@dataclass
class Response:
    status: int
    body: bytes
    headers: dict = field(default_factory=dict)
    head_only: bool = False

    @classmethod
    def json(cls, data, status: int = 200) -> Response:
        return cls(status, json.dumps(data).encode(), {"Content-Type": "application/json"})

    @classmethod
    def error(cls, e: HubError) -> Response:
        headers = {"Content-Type": "application/json", "X-Error-Message": e.message}
        if e.code:
            headers["X-Error-Code"] = e.code
        if "commit" in e.extra:
            headers["X-Repo-Commit"] = e.extra["commit"]
        body = {"error": e.message, **{k: v for k, v in e.extra.items() if k != "commit"}}
        return cls(e.status, json.dumps(body).encode(), headers)


def handler_for(hub):  # hub: a FakeHub
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # keep test output clean
            pass

        def setup(self):
            super().setup()
            with hub.lock:
                hub.connections.add(self.connection)

        def finish(self):
            with hub.lock:
                hub.connections.discard(self.connection)
            super().finish()

        def _read_body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                chunks = []
                while True:
                    size = int(self.rfile.readline().strip(), 16)
                    if size == 0:
                        self.rfile.readline()
                        return b"".join(chunks)
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _serve(self):
            url = urlparse(self.path)
            path = quote(unquote(url.path), safe="/%:@")
            # self.headers looks names up case-insensitively (httpx sends them in lower case)
            req = Request(self.command, url.path, parse_qs(url.query), self.headers, self._read_body())
            route = f"{self.command} {path}"
            fault = self._fault(route)
            if fault == "hang":  # accept the request and never answer (until the server stops)
                hub.stopping.wait(HANG_SECONDS)
                self.close_connection = True
                return
            try:
                if fault is not None and fault.isdigit():
                    raise HubError(int(fault), f"injected {fault}")
                response = hub.handle(req)
            except HubError as e:
                response = Response.error(e)
            except Exception as e:  # a bug in the fake: make it visible to the test
                response = Response.error(HubError(500, f"fake hub error: {type(e).__name__}: {e}"))
            with hub.lock:
                hub.log.append(Logged(self.command, route_name(route), response.status, len(req.body)))
            self.send_response(response.status)
            for key, value in response.headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(response.body)))
            self.end_headers()
            if response.head_only or self.command == "HEAD":  # HEAD answers never carry a body
                return
            if fault == "corrupt" and response.body:  # the whole body, one byte of it changed
                body = bytearray(response.body)
                body[len(body) // 2] ^= 0xFF
                response.body = bytes(body)
            if fault == "drop":  # half the body, then the connection goes away
                self.wfile.write(response.body[: len(response.body) // 2])
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(2)
                return
            self.wfile.write(response.body)

        def _fault(self, route: str) -> str | None:
            with hub.lock:
                for i, (pattern, fault, times) in enumerate(hub.faults):
                    if pattern.search(route):
                        if times <= 1:
                            hub.faults.pop(i)
                        else:
                            hub.faults[i] = (pattern, fault, times - 1)
                        return fault
            return None

        do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _serve

    return Handler


def route_name(route: str) -> str:
    """The route with commit hashes and LFS oids replaced by placeholders (stable for contract tests)."""
    route = re.sub(r"/[0-9a-f]{64}\b", "/{oid}", route)
    return re.sub(r"/[0-9a-f]{40}\b", "/{commit}", route)


class LoopbackServer:
    """What every fake server shares: a threaded HTTP server on 127.0.0.1 answering through :func:`handler_for`,
    its URL, and a stop that also drops the connections clients keep alive (as a real server going away would).
    Subclasses set their own state before calling ``super().__init__()``."""

    def __init__(self):
        self.lock = threading.RLock()
        self.connections: set = set()
        self.stopping = threading.Event()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler_for(self))
        self.server.daemon_threads = True

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self):
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        self.server.shutdown()
        self.server.server_close()
        with self.lock:
            for connection in list(self.connections):
                with contextlib.suppress(OSError):
                    connection.shutdown(2)
            self.connections.clear()
