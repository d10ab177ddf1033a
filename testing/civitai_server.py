"""A fake of the Civitai API endpoints lorastack uses, on 127.0.0.1, for tests of metadata sources.

* ``GET /api/v1/model-versions/by-hash/{sha256}`` — the model-version record of a known file, else 404;
* ``POST /api/v1/model-versions/by-hash`` — a JSON list of hashes in, the list of records found out;
* ``GET /images/{name}`` — preview images the records point at.

Records look like Civitai's (``id``, ``modelId``, ``baseModel``, ``trainedWords``, ``model``, ``files[].hashes``,
``images[].url``). Scripted faults answer the next matching requests with a status (``429`` with ``Retry-After``,
``503``, …) or with a body that is not JSON; every request is logged with its ``Authorization`` header, so a test can
check a token went where it should and nowhere else::

    civitai = FakeCivitai().start()
    civitai.add(sha256, trained_words=["zxc"], images=[png_bytes])
    civitai.fail("POST /api/v1/model-versions/by-hash", status=429)
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from .hub_http import HubError, Logged, LoopbackServer, Request, Response

BY_HASH = "/api/v1/model-versions/by-hash"


@dataclass
class Fault:
    pattern: re.Pattern
    status: int
    body: bytes
    headers: dict
    times: int


class FakeCivitai(LoopbackServer):
    """An in-memory Civitai. ``token``: when set, requests must carry ``Authorization: Bearer <token>`` (401
    otherwise), as a private deployment would."""

    def __init__(self, token: str | None = None):
        self.token = token
        self.records: dict[str, dict] = {}
        self.images: dict[str, bytes] = {}
        self.log: list[Logged] = []
        self.authorizations: list[tuple[str, str | None]] = []  # (route, Authorization header)
        self.faults: list = []  # the shared handler's own faults (drop, hang, corrupt), see hub_http
        self.scripted: list[Fault] = []
        self._next_id = 1000
        super().__init__()

    # --- test helpers ------------------------------------------------------------------------------------------
    def add(
        self,
        sha256: str,
        *,
        name: str = "Test LoRA",
        version_name: str = "v1.0",
        base_model: str = "SDXL 1.0",
        trained_words: list[str] = (),
        description: str | None = None,
        tags: list[str] = (),
        images: list[bytes] = (),
    ) -> dict:
        """Make ``sha256`` a known file; returns its record (ids assigned in order)."""
        with self.lock:
            self._next_id += 1
            version_id, model_id = self._next_id, self._next_id + 5000
            urls = []
            for i, data in enumerate(images):
                key = f"{version_id}-{i}.png"
                self.images[key] = data
                urls.append({"url": f"{self.url}/images/{key}", "type": "image", "width": 8, "height": 8})
            record = {
                "id": version_id, "modelId": model_id, "name": version_name, "baseModel": base_model,
                "trainedWords": list(trained_words), "description": description,
                "model": {"name": name, "type": "LORA", "nsfw": False, "tags": list(tags)},
                "files": [{"name": f"{name}.safetensors", "type": "Model", "primary": True,
                           "hashes": {"SHA256": sha256.upper(), "AutoV2": sha256[:10].upper()}}],
                "images": urls,
            }  # fmt: skip
            self.records[sha256.lower()] = record
            return record

    def fail(self, route_regex: str, status: int = 503, times: int = 1, body: bytes | None = None,
             retry_after: float | None = None) -> None:  # fmt: skip
        """Answer the next ``times`` requests whose ``METHOD path`` matches with ``status`` (and ``body``; a 200
        with a body that is not JSON makes a malformed answer)."""
        headers = {"Content-Type": "application/json" if body is None else "text/html"}
        if retry_after is not None:
            headers["Retry-After"] = f"{retry_after:g}"
        content = body if body is not None else json.dumps({"error": f"status {status}"}).encode()
        self.scripted.append(Fault(re.compile(route_regex), status, content, headers, times))

    def calls(self, method: str | None = None, route: str | None = None) -> list[Logged]:
        return [c for c in self.log if (method is None or c.method == method) and (route is None or route in c.route)]

    # --- the API -----------------------------------------------------------------------------------------------
    def _scripted(self, route: str) -> Response | None:
        with self.lock:
            for i, fault in enumerate(self.scripted):
                if fault.pattern.search(route):
                    fault.times -= 1
                    if fault.times <= 0:
                        self.scripted.pop(i)
                    return Response(fault.status, fault.body, dict(fault.headers))
        return None

    def handle(self, req: Request) -> Response:
        route = f"{req.method} {req.path}"
        with self.lock:
            self.authorizations.append((route, req.headers.get("Authorization")))
        if (scripted := self._scripted(route)) is not None:
            return scripted
        if self.token is not None and req.headers.get("Authorization") != f"Bearer {self.token}":
            raise HubError(401, "Unauthorized")
        if req.method == "GET" and req.path.startswith(f"{BY_HASH}/"):
            record = self.records.get(req.path.rsplit("/", 1)[1].lower())
            if record is None:
                raise HubError(404, "Model not found")
            return Response.json(record)
        if req.method == "POST" and req.path == BY_HASH:
            try:
                hashes = req.json()
            except ValueError:
                raise HubError(400, "the body is not JSON") from None
            if not isinstance(hashes, list) or not all(isinstance(h, str) for h in hashes) or len(hashes) > 10_000:
                raise HubError(400, "the body must be a list of hashes")
            return Response.json([self.records[h.lower()] for h in hashes if h.lower() in self.records])
        if req.method == "GET" and req.path.startswith("/images/"):
            data = self.images.get(req.path.removeprefix("/images/"))
            if data is None:
                raise HubError(404, "no such image")
            return Response(200, data, {"Content-Type": "image/png"})
        raise HubError(404, f"no route {route}")
