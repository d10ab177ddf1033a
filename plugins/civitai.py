"""The built-in metadata source ``civitai``: Civitai's public by-hash API.

``GET /api/v1/model-versions/by-hash/{sha256}`` for one file, ``POST /api/v1/model-versions/by-hash`` (a JSON list of
hashes; the answer lists the versions found) for several. The endpoint is ``LORASTACK_CIVITAI_ENDPOINT`` (default
``https://civitai.com``); ``CIVITAI_API_TOKEN``, when set, is sent as ``Authorization: Bearer`` to that endpoint's
host only (never to an image host), read when a request is made and never kept, logged or put in a message.

Rate limits (429) and server errors (5xx) are retried with exponential backoff (``Retry-After`` honoured up to
:data:`MAX_BACKOFF` seconds) until ``LORASTACK_CIVITAI_TIMEOUT`` seconds (default 60) have passed for the whole
lookup; each request has its own timeout within that. An answer that is not JSON, or not the JSON expected, fails
the items it was for, with a one-line reason; an unknown hash is ``unknown``, not an error.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from lorastack.plugins.api import LookupAnswer, LookupItem, PluginError, civitai_version_values, hookimpl

ENDPOINT_ENV = "LORASTACK_CIVITAI_ENDPOINT"
TOKEN_ENV = "CIVITAI_API_TOKEN"
TIMEOUT_ENV = "LORASTACK_CIVITAI_TIMEOUT"
DEFAULT_ENDPOINT = "https://civitai.com"
DEFAULT_TIMEOUT = 60.0
REQUEST_TIMEOUT = 20.0
MAX_ANSWER_BYTES = 16 << 20
MAX_BACKOFF = 10.0
BATCH = 100  # hashes per bulk request
RETRIED = {429, 500, 502, 503, 504}
BY_HASH = "/api/v1/model-versions/by-hash"


class _Failed(Exception):
    """A request that failed for good (after retries): the one-line reason, with no secret in it."""


def endpoint() -> str:
    url = os.environ.get(ENDPOINT_ENV, "").strip() or DEFAULT_ENDPOINT
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise PluginError(f"{ENDPOINT_ENV}={url!r} is not an http(s) address such as {DEFAULT_ENDPOINT}")
    return url.rstrip("/")


def time_budget() -> float:
    raw = os.environ.get(TIMEOUT_ENV, "").strip()
    if not raw:
        return DEFAULT_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not 0 < value <= 3600:
        raise PluginError(f"{TIMEOUT_ENV}={raw!r} must be a number of seconds in (0, 3600]")
    return value


class _Client:
    """HTTP for one lookup: a deadline over all its requests, retries, bounded answers."""

    def __init__(self, base: str, deadline: float):
        self.base, self.deadline = base, deadline
        self.host = urlsplit(base).netloc
        self.requests = 0

    def _headers(self, url: str) -> dict[str, str]:
        headers = {"Accept": "application/json", "User-Agent": "lorastack"}
        token = os.environ.get(TOKEN_ENV, "").strip()
        if token and urlsplit(url).netloc == self.host:
            headers["Authorization"] = f"Bearer {token}"
        return headers

    def fetch(self, url: str, body: bytes | None = None, limit: int = MAX_ANSWER_BYTES) -> tuple[int, bytes]:
        """``(status, body)``; 2xx and 404 are answers, 429/5xx and network failures are retried until the
        deadline, anything else is a failure."""
        what = urlsplit(url).path or "/"  # messages name the path only: no host credentials, no query
        delay = 0.5
        while True:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise _Failed(f"Civitai did not answer {what} within the time allowed ({TIMEOUT_ENV})")
            headers = self._headers(url)
            if body is not None:
                headers["Content-Type"] = "application/json"
            request = urllib.request.Request(url, data=body, headers=headers, method="POST" if body else "GET")
            retry_after = None
            self.requests += 1
            try:
                with urllib.request.urlopen(request, timeout=min(REQUEST_TIMEOUT, left)) as response:
                    data = response.read(limit + 1)
                    if len(data) > limit:
                        raise _Failed(f"Civitai's answer to {what} is over {limit:,} bytes")
                    return response.status, data
            except urllib.error.HTTPError as e:
                status = e.code
                retry_after = e.headers.get("Retry-After") if e.headers else None
                e.close()
                if status == 404:
                    return 404, b""
                if status in (401, 403):
                    raise _Failed(f"Civitai refused {what} ({status}): check {TOKEN_ENV}") from None
                if status not in RETRIED:
                    raise _Failed(f"Civitai answered {what} with HTTP {status}") from None
                reason = f"HTTP {status}"
            except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as e:
                reason = type(getattr(e, "reason", e)).__name__
            wait = delay
            if retry_after is not None:
                with contextlib.suppress(ValueError):
                    wait = max(wait, min(float(retry_after), MAX_BACKOFF))
            if time.monotonic() + wait >= self.deadline:
                raise _Failed(f"Civitai kept failing on {what} ({reason}) until the time allowed ran out")
            time.sleep(wait)
            delay = min(delay * 2, MAX_BACKOFF)

    def json(self, url: str, body: bytes | None = None) -> Any:
        status, data = self.fetch(url, body)
        if status == 404:
            return None
        try:
            return json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            raise _Failed(f"Civitai's answer to {urlsplit(url).path} is not JSON") from None


def _hashes(record: Any) -> set[str]:
    """The SHA256 hashes of a model-version record's files (how a bulk answer is matched back to files)."""
    found = set()
    files = record.get("files") if isinstance(record, dict) else None
    for f in files if isinstance(files, list) else []:
        hashes = f.get("hashes") if isinstance(f, dict) else None
        value = hashes.get("SHA256") if isinstance(hashes, dict) else None
        if isinstance(value, str):
            found.add(value.lower())
    return found


def _answer(item: LookupItem, record: Any) -> LookupAnswer:
    if not isinstance(record, dict):
        return LookupAnswer(item.ref, "failed", error="Civitai's answer is not a model-version record")
    values, urls = civitai_version_values(record)
    return LookupAnswer(item.ref, "found", values, urls)


class CivitaiSource:
    name = "civitai"
    description = "Civitai's by-hash API (LORASTACK_CIVITAI_ENDPOINT, optional CIVITAI_API_TOKEN)."
    options = ()

    def lookup(self, items: Sequence[LookupItem], options: Mapping[str, Any]) -> Iterator[LookupAnswer]:
        base = endpoint()
        client = _Client(base, time.monotonic() + time_budget())
        if len(items) == 1:
            yield from self._single(client, base, items[0])
            return
        for start in range(0, len(items), BATCH):
            yield from self._bulk(client, base, items[start : start + BATCH])

    @staticmethod
    def _single(client: _Client, base: str, item: LookupItem) -> Iterator[LookupAnswer]:
        try:
            record = client.json(f"{base}{BY_HASH}/{item.sha256}")
        except _Failed as e:
            yield LookupAnswer(item.ref, "failed", error=str(e))
            return
        yield LookupAnswer(item.ref, "unknown") if record is None else _answer(item, record)

    def _bulk(self, client: _Client, base: str, items: Sequence[LookupItem]) -> Iterator[LookupAnswer]:
        body = json.dumps([item.sha256 for item in items]).encode()
        try:
            records = client.json(f"{base}{BY_HASH}", body)
        except _Failed as e:
            yield from (LookupAnswer(item.ref, "failed", error=str(e)) for item in items)
            return
        if records is None:  # an endpoint without the bulk form: one request per file
            for item in items:
                yield from self._single(client, base, item)
            return
        if not isinstance(records, list):
            error = "Civitai's answer to the bulk lookup is not a list of model versions"
            yield from (LookupAnswer(item.ref, "failed", error=error) for item in items)
            return
        by_hash = {h: record for record in records for h in _hashes(record)}
        for item in items:
            record = by_hash.get(item.sha256.lower())
            yield LookupAnswer(item.ref, "unknown") if record is None else _answer(item, record)

    def fetch_preview(self, url: str, limit: int) -> bytes:
        if urlsplit(url).scheme not in ("http", "https"):
            raise PluginError(f"{url[:80]!r} is not an http(s) address")
        client = _Client(endpoint(), time.monotonic() + min(time_budget(), 60.0))
        try:
            status, data = client.fetch(url, limit=limit)
        except _Failed as e:
            raise PluginError(str(e)) from None
        if status == 404:
            raise PluginError(f"preview {urlsplit(url).path} is not there (404)")
        return data


@hookimpl
def register_metadata_sources(register):
    register(CivitaiSource())
