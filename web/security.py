"""Who may talk to the server: loopback by default, a token otherwise, no cross-site writes, bounded bodies.

* Binding to anything but a loopback address is refused without a token (:func:`check_bind`); with a token, every
  request carries it (``Authorization: Bearer …``, or the cookie a ``?token=`` visit sets), compared in constant time.
* Without a token the server answers only requests whose ``Host`` is a loopback name, so a web page on another site
  cannot reach it through DNS rebinding.
* A state-changing request (anything but GET/HEAD/OPTIONS) needs the header ``X-Lorastack: 1``, which a cross-site
  form cannot send and cross-site script cannot send without a CORS preflight this server never grants; an
  ``Origin`` that is not the server's own is refused as well.
* Request bodies are bounded (``Content-Length`` checked up front, streamed bodies counted).

Written as a plain ASGI middleware (not FastAPI dependencies) so that it guards every route, the static files and
the OpenAPI schema alike, and can refuse a body before any of it is read.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
from http.cookies import SimpleCookie
from urllib.parse import parse_qs

from lorastack.errors import LorastackError

CSRF_HEADER = "x-lorastack"
COOKIE = "lorastack_token"
MAX_BODY = 64 << 20  # an adapter upload; JSON bodies are far smaller
MAX_TOKEN = 512
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}
LOOPBACK_NAMES = {"localhost", "localhost.", "testserver"}  # testserver: Starlette's TestClient


class ServeError(LorastackError):
    """A ``lorastack serve`` setting that cannot be used (a public address without a token, a bad token)."""


def is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_token(token: str | None) -> str | None:
    if token is None:
        return None
    if (
        not isinstance(token, str)
        or not 16 <= len(token) <= MAX_TOKEN
        or not token.isascii()
        or not token.isprintable()
    ):
        raise ServeError(f"--token must be 16 to {MAX_TOKEN} printable ASCII characters; got {len(token or '')}")
    if " " in token or ";" in token or "," in token:
        raise ServeError("--token must not hold spaces, ';' or ','")
    return token


def check_bind(host: str, token: str | None) -> None:
    """Refuse a non-loopback address without a token (see the module docstring)."""
    if not is_loopback(host) and token is None:
        raise ServeError(
            f"--host {host} is not a loopback address: give --token TOKEN (every request must then carry it), or "
            "bind 127.0.0.1"
        )


def _host_name(value: str) -> str:
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


class Guard:
    """The ASGI middleware of the module docstring."""

    def __init__(self, app, token: str | None = None, max_body: int = MAX_BODY):
        self.app, self.token, self.max_body = app, token, max_body

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        method = scope["method"].upper()
        host = headers.get("host", "")
        set_cookie = None
        if self.token is None:
            if not (is_loopback(_host_name(host)) or _host_name(host).lower() in LOOPBACK_NAMES):
                return await _refuse(send, 403, f"host {host!r} is not a loopback name; this server answers only "
                                     "localhost (start it with --token to serve other hosts)")  # fmt: skip
        else:
            given, from_query = self._given(scope, headers)
            if given is None or not hmac.compare_digest(given.encode(), self.token.encode()):
                return await _refuse(send, 401, "this server needs its token: Authorization: Bearer TOKEN, or open "
                                     "the address printed by lorastack serve (…/?token=TOKEN)")  # fmt: skip
            if from_query:
                set_cookie = f"{COOKIE}={self.token}; HttpOnly; SameSite=Strict; Path=/"
        if method not in SAFE_METHODS:
            if headers.get(CSRF_HEADER) != "1":
                return await _refuse(send, 403, f"a {method} request needs the header X-Lorastack: 1 (cross-site "
                                     "requests are refused)")  # fmt: skip
            origin = headers.get("origin")
            if origin is not None and origin.split("://", 1)[-1] != host:
                return await _refuse(send, 403, f"origin {origin!r} is not this server ({host}); cross-site requests "
                                     "are refused")  # fmt: skip
        length = headers.get("content-length")
        if length is not None:
            if not length.isdigit():
                return await _refuse(send, 400, f"Content-Length {length!r} is not a number of bytes")
            if int(length) > self.max_body:
                return await _refuse(send, 413, f"the request body is {int(length):,} bytes; at most "
                                     f"{self.max_body:,}")  # fmt: skip
        seen = 0
        max_body = self.max_body

        async def bounded_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > max_body:
                    raise BodyTooLarge(max_body)
            return message

        async def send_with_cookie(message):
            if set_cookie and message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), (b"set-cookie", set_cookie.encode())]}
            await send(message)

        try:
            await self.app(scope, bounded_receive, send_with_cookie)
        except BodyTooLarge as e:
            await _refuse(send, 413, f"the request body is over {e.limit:,} bytes, the most accepted")

    def _given(self, scope, headers) -> tuple[str | None, bool]:
        auth = headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            return auth[7:].strip(), False
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        if query.get("token"):
            return query["token"][0], True
        if "cookie" in headers:
            cookie = SimpleCookie()
            try:
                cookie.load(headers["cookie"])
            except Exception:  # a malformed Cookie header is no token
                return None, False
            if COOKIE in cookie:
                return cookie[COOKIE].value, False
        return None, False


class UploadTooLarge(LorastackError):
    """An upload over the server's limit (``--max-upload-mb``)."""


class BodyTooLarge(LorastackError):
    def __init__(self, limit: int):
        self.limit = limit


async def _refuse(send, status: int, message: str) -> None:
    body = json.dumps({"error": message}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
