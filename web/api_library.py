"""The library's JSON API: list (one page in SQL), one adapter, metadata and tag edits, removal, images by hash."""

from __future__ import annotations

import contextlib
import json
import re
from pathlib import Path
from typing import Any, Literal

from fastapi import APIRouter, Query, Request, UploadFile
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field

from lorastack.registry.errors import ConflictError, InvalidValueError, NotFoundError

router = APIRouter(prefix="/api", tags=["library"])
SHA256 = r"^[0-9a-f]{64}$"
PER_PAGE = 48
MAX_PER_PAGE = 200
MAX_PAGE = 1_000_000
RUN_IMAGE = re.compile(r"^(loss|step-\d{6})$")


def _registry(request: Request):
    return request.app.state.server.registries.get()


def card(row: dict[str, Any], thumbnails: dict[str, str]) -> dict[str, Any]:
    thumb = thumbnails.get(row["ref"])
    return {
        **{k: row[k] for k in ("ref", "name", "version", "family", "kind", "rank", "trigger_words", "tags",
                               "versions", "created_at", "missing", "location", "size", "sha256")},
        "preview_url": f"/api/thumbnails/{thumb}" if thumb else None,
        "url": f"/#/adapter/{row['ref']}",
    }  # fmt: skip


@router.get("/adapters", summary="The library, one page")
def list_adapters(
    request: Request,
    q: str | None = Query(None, max_length=1000, description="Text in names, trigger words, metadata."),
    family: str | None = Query(None, max_length=64),
    lineage: str | None = Query(None, max_length=1000),
    tag: str | None = Query(None, max_length=1000),
    missing: bool = False,
    all_versions: bool = False,
    sort: Literal["name", "date", "use"] = "name",
    page: int = Query(1, ge=1, le=MAX_PAGE),
    per_page: int = Query(PER_PAGE, ge=1, le=MAX_PER_PAGE),
) -> dict[str, Any]:
    from lorastack.registry.served import first_thumbnails

    registry = _registry(request)
    rows = registry.list(family=family or None, search=q or None, all_versions=all_versions, missing=missing,
                         lineage=lineage or None, tag=tag or None, limit=per_page + 1, offset=(page - 1) * per_page,
                         sort=sort)  # fmt: skip
    has_more = len(rows) > per_page
    rows = rows[:per_page]
    thumbnails = first_thumbnails(registry, [(r["name"], r["version"]) for r in rows])
    return {"items": [card(r, thumbnails) for r in rows], "page": page, "per_page": per_page, "has_more": has_more}


@router.get("/adapters/{ref:path}", summary="One adapter version: metadata, previews, versions, training record")
def get_adapter(request: Request, ref: str) -> dict[str, Any]:
    from lorastack.registry.metadata import FIELDS, get_metadata
    from lorastack.registry.previews import list_previews

    registry = _registry(request)
    version = registry.resolve(ref)
    data = version.as_dict()
    data["metadata_header"] = data.pop("metadata")
    data["metadata"] = {k: v.as_dict() for k, v in get_metadata(registry, version.ref).items()}
    data["fields"] = {k: v[1] for k, v in FIELDS.items()}
    data["previews"] = [
        {**p.as_dict(), "url": f"/api/previews/{p.sha256}", "thumbnail_url": f"/api/thumbnails/{p.thumbnail_sha256}"}
        for p in list_previews(registry, version.ref)
    ]
    data["all_versions"] = [
        {"ref": v.ref, "version": v.number, "tags": v.tags, "created_at": v.created_at}
        for v in registry.versions(version.name)
    ]
    data["training"] = _training(version)
    data["scores"] = _scores(registry, version.ref)
    data["download_url"] = f"/api/download/{version.ref}"
    return data


def _scores(registry, ref: str) -> dict[str, Any] | None:
    """The version's stored evaluation scores (``lorastack eval``, ``train --eval-every``) with the headline value of
    each metric; ``None`` when it was never evaluated."""
    from lorastack.registry.scores import get_scores, headline

    stored = get_scores(registry, ref)
    return None if stored is None else {**stored.as_dict(), "headline": headline(stored)}


def _run_folder(version) -> Path | None:
    run = (version.provenance.get("training") or {}).get("run")
    return Path(run) if isinstance(run, str) and run else None


def _training(version) -> dict[str, Any] | None:
    """The run record of an adapter lorastack trained: recipe, losses, validation, samples (URLs by step)."""
    folder = _run_folder(version)
    if folder is None:
        return None
    record: dict[str, Any] = {"provenance": version.provenance["training"], "available": folder.is_dir()}
    if not folder.is_dir():
        return record
    try:
        state = json.loads((folder / "run.json").read_text(encoding="utf-8")[:5_000_000])
        record["validation"] = state.get("validation")
        record["checkpoints"] = state.get("checkpoints")
    except (OSError, ValueError):
        pass
    with contextlib.suppress(OSError):
        record["recipe"] = (folder / "recipe.toml").read_text(encoding="utf-8")[:100_000]
    base = f"/api/training-image/{version.ref}?image="
    record["loss_url"] = base + "loss" if (folder / "loss.png").is_file() else None
    record["samples"] = [
        {"step": int(f.stem[5:]), "url": base + f.stem} for f in sorted((folder / "samples").glob("step-*.png"))
    ][:1000]
    return record


@router.get("/training-image/{ref:path}", summary="A trained adapter's loss curve or sample grid, by step")
def training_image(request: Request, ref: str, image: str = Query(..., max_length=20)) -> FileResponse:
    if not RUN_IMAGE.match(image):
        raise InvalidValueError(f"image {image!r} is not 'loss' or 'step-NNNNNN'")
    version = _registry(request).resolve(ref)
    folder = _run_folder(version)
    path = None if folder is None else folder / "loss.png" if image == "loss" else folder / "samples" / f"{image}.png"
    if path is None or not path.is_file():
        raise NotFoundError(f"{version.ref} has no training image {image!r}")
    return FileResponse(path, media_type="image/png")


class MetadataEdit(BaseModel):
    model_config = ConfigDict(extra="forbid")
    metadata: dict[str, Any] = Field(default_factory=dict, description="field → value (null clears it)")
    add_tags: list[str] = Field(default_factory=list, max_length=100)


@router.patch("/adapters/{ref:path}", summary="Edit a version's metadata (as the user) and add tags")
def edit_adapter(request: Request, ref: str, edit: MetadataEdit) -> dict[str, Any]:
    from lorastack.registry.metadata import FIELDS, set_metadata

    registry = _registry(request)
    unknown = [k for k in edit.metadata if k not in FIELDS]
    if unknown:
        raise InvalidValueError(f"unknown metadata field {unknown[0]!r}; fields: {', '.join(FIELDS)}")
    version = registry.resolve(ref)
    report = set_metadata(registry, version.ref, edit.metadata, "user") if edit.metadata else None
    for t in edit.add_tags:
        registry.tag(version.ref, t)
    return {"ref": version.ref, "report": report.as_dict() if report else None}


@router.delete("/adapters/{ref:path}", summary="Remove one version (confirm with its reference)")
def delete_adapter(request: Request, ref: str, confirm: str = Query(..., max_length=400)) -> dict[str, Any]:
    registry = _registry(request)
    version = registry.resolve(ref)
    if "@" not in ref:
        raise ConflictError(f"name the version to remove: {version.ref} (removal takes one version at a time)")
    if confirm != version.ref:
        raise ConflictError(f"to remove {version.ref}, repeat its reference: confirm={version.ref}")
    removed = registry.remove(version.ref, force=True)
    return {"removed": version.ref, "freed": removed.get("freed")}


@router.get("/previews/{sha256}", summary="A preview image, by its sha256")
def preview(request: Request, sha256: str) -> FileResponse:
    return _blob(request, sha256, thumbnail=False)


@router.get("/thumbnails/{sha256}", summary="A preview's thumbnail, by its sha256")
def thumbnail(request: Request, sha256: str) -> FileResponse:
    return _blob(request, sha256, thumbnail=True)


def _blob(request: Request, sha256: str, thumbnail: bool) -> FileResponse:
    from lorastack.registry.served import preview_blob

    if not re.match(SHA256, sha256):
        raise InvalidValueError(f"{sha256[:80]!r} is not a sha256 (64 lowercase hex digits)")
    path, media = preview_blob(_registry(request), sha256, thumbnail)
    return FileResponse(path, media_type=media, headers={"Cache-Control": "max-age=31536000, immutable"})


@router.post("/preview-uploads/{ref:path}", summary="Add a preview image to a version (PNG, JPEG or WebP)")
async def add_preview_upload(request: Request, ref: str, file: UploadFile) -> dict[str, Any]:
    from lorastack.registry.previews import MAX_PREVIEW_BYTES, add_preview

    data = await file.read(MAX_PREVIEW_BYTES + 1)  # check_image refuses what is over the limit
    registry = _registry(request)
    p = add_preview(registry, registry.resolve(ref).ref, data, "user")
    return {**p.as_dict(), "url": f"/api/previews/{p.sha256}"}


@router.get("/download/{ref:path}", summary="A version's adapter file (re-hashed before it is sent)")
def download(request: Request, ref: str) -> FileResponse:
    version, path = _registry(request).adapter_path(ref)
    filename = re.sub(r"[^A-Za-z0-9._-]+", "-", version.ref) + ".safetensors"
    return FileResponse(path, media_type="application/octet-stream", filename=filename)


@router.get("/families", summary="The families and lineages present, for filters")
def families(request: Request) -> dict[str, Any]:
    from lorastack.registry.served import families as present

    return {"families": present(_registry(request))}
