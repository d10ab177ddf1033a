"""The ASGI app of ``lorastack serve``: the JSON API (``/api``, schema at ``/openapi.json``) and the pages.

>>> app = create_app(registry=Registry("lib"), token=None, default_base="toy")

Errors a user can cause come back as ``{"error": "<one line>"}`` with a 4xx status: lorastack's own errors carry
the command line's messages (404 for what does not exist, 409 for conflicts, 400 otherwise), and malformed requests
(a wrong type, a value past a bound) name the field and the rule.
"""

from __future__ import annotations

import threading
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from lorastack.errors import LorastackError
from lorastack.registry import Registry

from .folders import FolderNotAllowed, allowed_roots
from .jobs import JobQueueFull, JobStore
from .security import MAX_BODY, Guard, UploadTooLarge, check_token
from .studio import Studio

STATIC = Path(__file__).parent / "static"


class Registries:
    """One :class:`Registry` per thread over the same folder (a SQLite connection belongs to its thread)."""

    def __init__(self, root: Path):
        self.root = root
        self._local = threading.local()

    def get(self) -> Registry:
        registry = getattr(self._local, "registry", None)
        if registry is None:
            registry = self._local.registry = Registry(self.root)
        return registry


class Server:
    """What the routes share: the registries, the job store with its worker, the studio."""

    def __init__(self, root: Path, folder: Path, bases: list[str], max_upload: int, folders: list[Path] = ()):
        from . import work

        self.registries = Registries(root)
        self.folders = list(folders)  # the folders requests may name (web/folders.py)
        self.studio = Studio(self.registries, bases)
        self.max_upload = max_upload
        self.jobs = JobStore(folder, {
            "generate": self.studio.run,
            "train": lambda job: work.train_job(self.registries, job),
            "import": lambda job: work.import_job(self.registries, job),
            "scan": lambda job: work.scan_job(self.registries, job),
            "push": lambda job: work.push_job(self.registries, job),
        })  # fmt: skip


def default_folder(registry: Registry) -> Path:
    """Where the server keeps jobs, uploads and training runs: ``serve/`` beside the registry folder."""
    return registry.root.parent / "serve"


def create_app(
    registry: Registry | str | Path | None = None,
    token: str | None = None,
    default_base: str | None = None,
    *,
    bases: list[str] | None = None,
    folder: str | Path | None = None,
    max_upload: int = MAX_BODY,
    folders: list[str | Path] | None = None,
) -> FastAPI:
    """The app over ``registry`` (default: ``$LORASTACK_HOME/registry``).

    ``token``: required on every request when given. ``default_base``: the base the pages start with; ``bases``:
    every base a request may name (default: the default base and the toy). ``folder``: jobs, uploads and runs
    (default :func:`default_folder`). ``max_upload``: the largest request body, in bytes. ``folders``: the folders on
    this machine that requests may name to train on or scan (default: none; uploads only).
    """
    from lorastack.core.config import default_base as configured_base

    token = check_token(token)
    registry = registry if isinstance(registry, Registry) else Registry(registry)
    default_base = default_base or configured_base()
    offered = list(dict.fromkeys([b for b in [default_base, *(bases or []), "toy"] if b]))
    server = Server(
        registry.root,
        Path(folder) if folder else default_folder(registry),
        offered,
        max_upload,
        allowed_roots(folders),
    )

    @asynccontextmanager
    async def lifespan(app):
        yield
        server.jobs.close()

    app = FastAPI(title="lorastack", summary="The lorastack library and studio", lifespan=lifespan)
    app.state.server = server

    @app.exception_handler(LorastackError)
    async def lorastack_error(request: Request, e: LorastackError):
        from lorastack.cli.text import printable

        return JSONResponse({"error": printable(e)}, status_code=status_of(e))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException):
        return JSONResponse({"error": str(e.detail)}, status_code=e.status_code, headers=e.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, e: RequestValidationError):
        return JSONResponse({"error": validation_line(e)}, status_code=422)

    from .api_jobs import router as jobs_router
    from .api_library import router as library_router

    app.include_router(library_router)
    app.include_router(jobs_router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    def index():
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})

    return _guarded(app, token, max_upload)


def _guarded(app: FastAPI, token: str | None, max_upload: int) -> FastAPI:
    # the guard wraps everything the app serves (routes, static files, the schema); a multipart body carries a
    # little more than its file
    app.add_middleware(Guard, token=token, max_body=max_upload + (1 << 20))
    return app


def status_of(e: LorastackError) -> int:
    from lorastack.registry.errors import BusyError, ConflictError, NoSpaceError, NotFoundError, ReadOnlyError

    if isinstance(e, NotFoundError):
        return 404
    if isinstance(e, FolderNotAllowed):
        return 403
    if isinstance(e, UploadTooLarge):
        return 413
    if isinstance(e, ConflictError):
        return 409
    if isinstance(e, JobQueueFull | BusyError):
        return 503
    if isinstance(e, NoSpaceError | ReadOnlyError):
        return 507
    return 400


def validation_line(e: RequestValidationError) -> str:
    """The first problem of a malformed request, on one line: where it is, what is wrong."""
    first = e.errors()[0] if e.errors() else {}
    where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path", "form"))
    message = str(first.get("msg", "invalid request")).replace("\n", " ")
    extra = f" (and {len(e.errors()) - 1} more)" if len(e.errors()) > 1 else ""
    return f"{where or 'request'}: {message}{extra}"
