"""The studio's JSON API: generate (a job), jobs and their events and images, training, uploads, scans, pushes."""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import zipfile
from pathlib import Path
from typing import Any, Literal

from fastapi import APIRouter, Form, Query, Request, UploadFile
from fastapi.responses import FileResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from lorastack.core.generate import MAX_ADAPTERS, MAX_PROMPT_CHARS
from lorastack.registry.errors import InvalidValueError, NotFoundError

from .folders import check_folder
from .security import UploadTooLarge

router = APIRouter(prefix="/api", tags=["studio"])
JOB_ID = re.compile(r"^\d{8}-\d{6}-[0-9a-f]{8}$")
FILE_NAME = re.compile(r"^[0-9]{5}-[0-9]+(-[a-z-]+)?\.png$")
UPLOAD_ID = re.compile(r"^[0-9a-f]{32}$")
MAX_ZIP_MEMBERS = 20_000
MAX_ZIP_BYTES = 8 << 30
CHUNK = 1 << 20


def _server(request: Request):
    return request.app.state.server


class AdapterChoice(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ref: str = Field(..., min_length=1, max_length=400)
    scale: float | dict[str, Any] = 1.0


class GenerateRequest(BaseModel):
    """What ``lorastack generate`` takes; the ranges are checked by the same code, with the same messages."""

    model_config = ConfigDict(extra="forbid")
    prompt: str = Field(..., max_length=MAX_PROMPT_CHARS)
    negative: str = Field("", max_length=MAX_PROMPT_CHARS)
    base: str | None = Field(None, max_length=1000)
    adapters: list[AdapterChoice] = Field(default_factory=list, max_length=MAX_ADAPTERS)
    steps: int = 25
    guidance: float | None = None
    width: int | None = None
    height: int | None = None
    seed: int | None = None
    num_images: int = 1
    scheduler: str | None = Field(None, max_length=100)
    trigger: bool = False
    mode: Literal["image", "compare", "sweep"] = "image"
    sweep: str | None = Field(None, max_length=400, description="sweep mode: the adapter swept over 0…1.5")


@router.post("/generate", summary="Queue a generation (images, a compare grid or a weight sweep); returns the job")
def generate(request: Request, body: GenerateRequest) -> dict[str, Any]:
    from .studio import check_request

    server = _server(request)
    params = check_request(server.studio, body.model_dump())
    return server.jobs.submit("generate", params)


@router.get("/bases", summary="The bases this server offers")
def bases(request: Request) -> dict[str, Any]:
    studio = _server(request).studio
    return {"bases": studio.bases, "loaded": studio.source}


def _job_id(job_id: str) -> str:
    if not JOB_ID.match(job_id):
        raise InvalidValueError(f"{job_id[:80]!r} is not a job id (YYYYMMDD-HHMMSS-xxxxxxxx)")
    return job_id


def _with_urls(job: dict[str, Any]) -> dict[str, Any]:
    base = f"/api/jobs/{job['id']}/files/"
    result = job.get("result") or {}
    for image in result.get("images", []):
        image["url"] = base + image["file"]
    job["image_urls"] = [base + name for name in job.get("live", {}).get("images", [])]
    job["sample_urls"] = [f"/api/jobs/{job['id']}/samples/{n}" for n in job.get("live", {}).get("samples", [])]
    return job


@router.get("/jobs", summary="Recent jobs, newest first")
def list_jobs(request: Request, kind: str | None = Query(None, max_length=20),
              limit: int = Query(50, ge=1, le=500)) -> dict[str, Any]:  # fmt: skip
    return {"jobs": [_with_urls(j) for j in _server(request).jobs.list(limit, kind)]}


@router.get("/jobs/{job_id}", summary="A job: state, progress, results with image URLs")
def get_job(request: Request, job_id: str) -> dict[str, Any]:
    return _with_urls(_server(request).jobs.get(_job_id(job_id)))


@router.post("/jobs/{job_id}/cancel", summary="Cancel a queued or running job")
def cancel_job(request: Request, job_id: str) -> dict[str, Any]:
    return _with_urls(_server(request).jobs.cancel(_job_id(job_id)))


@router.post("/jobs/{job_id}/resume", summary="Resume a cancelled or interrupted training job (a new job)")
def resume_job(request: Request, job_id: str) -> dict[str, Any]:
    jobs = _server(request).jobs
    old = jobs.get(_job_id(job_id))
    if old["kind"] != "train" or old["state"] not in ("cancelled", "interrupted", "failed"):
        raise InvalidValueError(f"job {job_id} is a {old['state']} {old['kind']} job; only a stopped training job "
                                "resumes")  # fmt: skip
    return jobs.submit("train", {**old["params"], "resume": True})


@router.get("/jobs/{job_id}/events", summary="Server-sent events: the job's record each time it changes")
async def job_events(request: Request, job_id: str) -> StreamingResponse:
    jobs = _server(request).jobs
    jobs.get(_job_id(job_id))  # 404 before the stream starts

    async def stream():
        while True:
            version = jobs.version(job_id)  # taken before the read: a change after it wakes the wait at once
            record = _with_urls(jobs.get(job_id))
            yield f"data: {json.dumps(record)}\n\n"
            if record["state"] in ("done", "failed", "cancelled", "interrupted") or await request.is_disconnected():
                return
            await asyncio.to_thread(jobs.wait_change, job_id, version, 10.0)

    return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-store"})


@router.get("/jobs/{job_id}/files/{name}", summary="An image a job made, by job id and file name")
def job_file(request: Request, job_id: str, name: str) -> FileResponse:
    if not FILE_NAME.match(name):
        raise InvalidValueError(f"{name[:80]!r} is not an image name of a job")
    server = _server(request)
    job = server.jobs.get(_job_id(job_id))
    listed = {i["file"] for i in (job.get("result") or {}).get("images", [])} | set(job["live"].get("images", []))
    if name not in listed:
        raise NotFoundError(f"job {job_id} has no image {name!r}")
    return FileResponse(server.jobs.folder / "jobs" / job_id / name, media_type="image/png")


@router.get("/jobs/{job_id}/samples/{name}", summary="A training job's sample grid or loss curve")
def job_sample(request: Request, job_id: str, name: str) -> FileResponse:
    from .work import SAMPLE_NAME

    server = _server(request)
    job = server.jobs.get(_job_id(job_id))
    if job["kind"] != "train" or not (SAMPLE_NAME.match(name) or name == "loss.png"):
        raise InvalidValueError(f"{name[:80]!r} is not a sample of a training job (step-NNNNNN.png or loss.png)")
    folder = Path(job["params"]["run_dir"])
    path = folder / "loss.png" if name == "loss.png" else folder / "samples" / name
    if not path.is_file():
        raise NotFoundError(f"job {job_id} has no {name!r} yet")
    return FileResponse(path, media_type="image/png")


# --- training -------------------------------------------------------------------------------------------------
@router.get("/trainers", summary="The trainers and their declared options, with defaults and help")
def trainers() -> dict[str, Any]:
    from .work import trainers as listed

    return {"trainers": listed()}


class TrainRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    trainer: str = Field(..., max_length=100)
    base: str | None = Field(None, max_length=1000)
    data: str | None = Field(None, max_length=4096, description="a dataset folder on this machine")
    upload: str | None = Field(None, max_length=64, description="an uploaded zip's id (POST /api/uploads/dataset)")
    name: str | None = Field(None, max_length=400, description="register the adapter as NAME[:TAG]")
    options: dict[str, Any] = Field(default_factory=dict, max_length=200)


@router.post("/train", summary="Start a training run (a job); the adapter lands in the library")
def start_training(request: Request, body: TrainRequest) -> dict[str, Any]:
    from .work import check_train

    server = _server(request)
    params = body.model_dump()
    params["base"] = server.studio.check_base(body.base)
    if body.upload:
        params["data"] = str(_upload_path(server, body.upload, ".zip"))
    elif body.data:
        params["data"] = str(check_folder(server.folders, body.data, "data"))
    check_train(params)
    params["run_dir"] = str(server.jobs.folder / "runs" / secrets.token_hex(8))
    return server.jobs.submit("train", params)


# --- uploads, scans, pushes -----------------------------------------------------------------------------------
def _upload_path(server, upload: str, suffix: str) -> Path:
    if not UPLOAD_ID.match(upload):
        raise InvalidValueError(f"{upload[:80]!r} is not an upload id")
    path = server.jobs.folder / "uploads" / (upload + suffix)
    if not path.is_file():
        raise NotFoundError(f"no upload {upload!r}")
    return path


async def _save_upload(server, file: UploadFile, suffix: str) -> tuple[str, Path]:
    """Stream an upload into the server's uploads folder, bounded (the body limit is checked again here)."""
    folder = server.jobs.folder / "uploads"
    folder.mkdir(parents=True, exist_ok=True)
    upload = secrets.token_hex(16)
    path, size = folder / (upload + suffix), 0
    try:
        with open(path, "xb") as out:
            while chunk := await file.read(CHUNK):
                size += len(chunk)
                if size > server.max_upload:
                    raise UploadTooLarge(f"{file.filename}: over {server.max_upload:,} bytes, the most accepted")
                out.write(chunk)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return upload, path


@router.post("/uploads/adapter", summary="Upload an adapter file (.safetensors) and import it (a job)")
async def upload_adapter(request: Request, file: UploadFile, name: str = Form(..., max_length=400),
                         tag: str | None = Form(None, max_length=200)) -> dict[str, Any]:  # fmt: skip
    from lorastack.adapters import read_adapter
    from lorastack.adapters.errors import AdapterError
    from lorastack.registry.names import validate_name, validate_tag

    validate_name(name)
    if tag:
        validate_tag(tag)
    filename = (file.filename or "")[:300]
    if not filename.lower().endswith(".safetensors"):
        raise InvalidValueError(f"{filename!r}: upload a .safetensors file (pickles are not accepted here)")
    server = _server(request)
    _, path = await _save_upload(server, file, ".safetensors")
    try:
        await asyncio.to_thread(read_adapter, path, tensors=False)  # the header, before anything is queued
    except AdapterError as e:
        path.unlink(missing_ok=True)
        raise InvalidValueError(f"{filename}: {e.problem}") from None
    return server.jobs.submit("import", {"path": str(path), "filename": filename, "name": name, "tag": tag or None})


@router.post("/uploads/dataset", summary="Upload a dataset zip for training; returns its upload id")
async def upload_dataset(request: Request, file: UploadFile) -> dict[str, Any]:
    server = _server(request)
    filename = (file.filename or "")[:300]
    upload, path = await _save_upload(server, file, ".zip")
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
            total = sum(m.file_size for m in members)
        if len(members) > MAX_ZIP_MEMBERS or total > MAX_ZIP_BYTES:
            raise InvalidValueError(f"{filename}: {len(members):,} files, {total:,} bytes unpacked; at most "
                                    f"{MAX_ZIP_MEMBERS:,} files and {MAX_ZIP_BYTES:,} bytes")  # fmt: skip
    except zipfile.BadZipFile:
        path.unlink(missing_ok=True)
        raise InvalidValueError(f"{filename}: not a zip file") from None
    except InvalidValueError:
        path.unlink(missing_ok=True)
        raise
    return {"upload": upload, "files": len(members), "bytes": total}


class ScanRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    folder: str = Field(..., min_length=1, max_length=4096)
    copy_files: bool = Field(False, description="copy the files into the registry (default: keep them in place)")
    namespace: str | None = Field(None, max_length=200)


@router.post("/scan", summary="Scan a folder on this machine into the library (a job)")
def scan_folder(request: Request, body: ScanRequest) -> dict[str, Any]:
    folder = check_folder(_server(request).folders, body.folder, "folder")
    if not folder.is_dir():
        raise InvalidValueError(f"{body.folder!r} is not a folder on this machine")
    params = {"folder": str(folder), "copy": body.copy_files, "namespace": body.namespace}
    return _server(request).jobs.submit("scan", params)


class PushRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ref: str = Field(..., max_length=400)
    repo_id: str = Field(..., max_length=200)
    private: bool = False


@router.post("/push", summary="Push a version to the Hugging Face Hub (a job; uses your huggingface login)")
def push(request: Request, body: PushRequest) -> dict[str, Any]:
    server = _server(request)
    version = server.registries.get().resolve(body.ref)
    return server.jobs.submit("push", {**body.model_dump(), "ref": version.ref})
