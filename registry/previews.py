"""Preview images of a version: stored as blobs, with a thumbnail made once.

A preview is a file of its version (role ``preview``, its thumbnail role ``thumbnail``), so ``verify`` re-hashes it,
``gc`` keeps it while a version uses it and ``rm`` frees it like the adapter file. The ``previews`` table says where
each came from (a sidecar, the user, a metadata source and its URL) and its size in pixels.

Images come from outside (sidecars, downloads), so each is bounded before it is decoded: at most
:data:`MAX_PREVIEW_BYTES`, a PNG, JPEG or WebP by its content (not its name), at most :data:`MAX_PIXELS` pixels,
decoded in full once to make the thumbnail (a truncated file is refused then).
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lorastack.faults import crash_point

from .db import transaction
from .errors import IntegrityError, InvalidValueError
from .folder import guarded
from .metadata import _stored_version_id, check_source, target

MAX_PREVIEW_BYTES = 32 << 20
MAX_PIXELS = 50_000_000
MAX_PREVIEWS = 50  # per version
THUMBNAIL_SIZE = 256
_FORMATS = {"PNG": ("image/png", ".png"), "JPEG": ("image/jpeg", ".jpg"), "WEBP": ("image/webp", ".webp")}


@dataclass(frozen=True)
class Preview:
    sha256: str
    thumbnail_sha256: str
    media_type: str
    width: int
    height: int
    source: str
    url: str | None
    path: str  # the file's path in the version
    thumbnail_path: str

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def check_image(data: bytes, what: str) -> tuple[str, int, int, bytes]:
    """``(media type, width, height, JPEG thumbnail bytes)`` of an image, or :class:`InvalidValueError`."""
    from PIL import Image

    if len(data) > MAX_PREVIEW_BYTES:
        raise InvalidValueError(f"{what}: {len(data):,} bytes; a preview is at most {MAX_PREVIEW_BYTES:,}")
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format not in _FORMATS:
                raise InvalidValueError(f"{what}: a {image.format} image; previews are PNG, JPEG or WebP")
            width, height = image.size
            if width * height > MAX_PIXELS:
                raise InvalidValueError(f"{what}: {width}×{height} pixels; a preview has at most {MAX_PIXELS:,}")
            media = _FORMATS[image.format][0]
            image.load()
            thumb = image.convert("RGB")
            thumb.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE))
            out = io.BytesIO()
            thumb.save(out, "JPEG", quality=85)
    except InvalidValueError:
        raise
    except Exception as e:  # Pillow raises many kinds for a broken file (OSError, SyntaxError, DecompressionBomb…)
        raise InvalidValueError(f"{what}: not a readable PNG, JPEG or WebP image ({type(e).__name__})") from None
    return media, width, height, out.getvalue()


def read_preview_file(path: str | Path) -> bytes:
    """A preview image's bytes from a regular file (bounded; a FIFO or a device is refused)."""
    import os
    import stat

    path = Path(path)
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise InvalidValueError(f"{path}: not a regular file; a preview is an image file")
        if st.st_size > MAX_PREVIEW_BYTES:
            raise InvalidValueError(f"{path}: {st.st_size:,} bytes; a preview is at most {MAX_PREVIEW_BYTES:,}")
        with open(path, "rb") as f:
            return f.read(MAX_PREVIEW_BYTES + 1)
    except OSError as e:
        raise InvalidValueError(f"{path}: cannot be read ({e.strerror or e})") from None


@dataclass(frozen=True)
class PreviewItem:
    """One image to add as a preview of a version (what :func:`add_previews_many` takes)."""

    ref: str
    data: bytes
    source: str
    url: str | None = None


@guarded
def add_preview(registry, ref: str, data: bytes, source: str, url: str | None = None) -> Preview:
    """Store ``data`` (an image) as a preview of the version ``ref`` names, with its thumbnail.

    The same image added again is returned as it is (its thumbnail is not made twice, in any version). Both blobs
    are stored before the one transaction that records them, so a kill at any point leaves at most unreferenced
    blobs for ``gc``.
    """
    (result,) = add_previews_many(registry, [PreviewItem(ref, data, source, url)])
    if isinstance(result, InvalidValueError):
        raise result
    return result


@guarded
def add_previews_many(registry, items: list[PreviewItem]) -> list[Preview | InvalidValueError]:
    """:func:`add_preview` for several images (a scan's batch of sidecar previews): every blob written under one
    lock, then every record in one transaction (one commit, not one per image). An image that is not a usable
    preview, or one over a version's :data:`MAX_PREVIEWS`, gives its :class:`InvalidValueError` in its place in the
    result; the others are stored."""
    for item in items:
        check_source(item.source)
    db = registry._db(write=True)
    versions = {ref: target(registry, db, ref) for ref in dict.fromkeys(item.ref for item in items)}
    checked: list[tuple | InvalidValueError] = []
    made: dict[str, tuple] = {}  # sha256 → (media, width, height, thumbnail bytes): each image decoded once
    for item in items:
        sha256 = hashlib.sha256(item.data).hexdigest()
        try:
            if sha256 not in made:
                made[sha256] = _known(registry, db, sha256) or check_image(
                    item.data, item.url or f"preview of {versions[item.ref].ref}"
                )
            checked.append((item, sha256, *made[sha256]))
        except InvalidValueError as e:
            checked.append(e)
    out: list[Preview | InvalidValueError] = []
    with registry.blobs.lock(exclusive=False), registry.blobs.scratch() as scratch:
        stored: dict[bytes, object] = {}
        for entry in checked:
            if isinstance(entry, InvalidValueError):
                continue
            item, sha256, _, _, _, thumbnail = entry
            for content in (item.data, thumbnail):
                key = hashlib.sha256(content).digest()
                if key not in stored:
                    stored[key] = registry.blobs.commit(registry.blobs.stage_bytes(content, scratch))
        crash_point("registry.preview.stored")
        with transaction(db):
            for entry in checked:
                if isinstance(entry, InvalidValueError):
                    out.append(entry)
                    continue
                item, sha256, media, width, height, thumbnail = entry
                image, thumb = stored[bytes.fromhex(sha256)], stored[hashlib.sha256(thumbnail).digest()]
                out.append(_record(db, versions[item.ref], image, thumb, media, width, height, item))
            crash_point("registry.preview.before-commit")
    return out


def _known(registry, db, sha256: str) -> tuple | None:
    """``check_image``'s answer for an image stored before (in any version), if its thumbnail blob is sound."""
    known = db.execute(
        "SELECT media_type, width, height, thumbnail_sha256 FROM previews WHERE sha256 = ? LIMIT 1", (sha256,)
    ).fetchone()
    if known is None:
        return None
    try:
        thumbnail = registry.blobs.check(known["thumbnail_sha256"]).read_bytes()
    except IntegrityError:
        return None
    return known["media_type"], known["width"], known["height"], thumbnail


def _record(db, version, image, thumb, media, width, height, item: PreviewItem) -> Preview | InvalidValueError:
    """The rows of one preview, inside the caller's transaction (or the preview the version holds already)."""
    version_id = _stored_version_id(db, version.name, version.number)
    existing = _previews(db, version_id)
    for p in existing:
        if p.sha256 == image.sha256:
            return p
    if len(existing) >= MAX_PREVIEWS:
        return InvalidValueError(f"{version.ref} has {MAX_PREVIEWS} previews already, the most kept")
    ext = next(e for m, e in _FORMATS.values() if m == media)
    path, thumb_path = f"previews/{image.sha256[:16]}{ext}", f"previews/{image.sha256[:16]}.thumb.jpg"
    for file_path, role, blob in ((path, "preview", image), (thumb_path, "thumbnail", thumb)):
        db.execute(
            "INSERT OR REPLACE INTO files (version_id, path, role, size, sha256, tensor_sha256) "
            "VALUES (?, ?, ?, ?, ?, NULL)",
            (version_id, file_path, role, blob.size, blob.sha256),
        )
    db.execute(
        "INSERT INTO previews (version_id, sha256, thumbnail_sha256, media_type, width, height, source, url, "
        "position) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (version_id, image.sha256, thumb.sha256, media, width, height, item.source, item.url, len(existing)),
    )
    return Preview(image.sha256, thumb.sha256, media, width, height, item.source, item.url, path, thumb_path)


def _previews(db, version_id: int) -> list[Preview]:
    rows = db.execute(
        "SELECT p.*, (SELECT path FROM files f WHERE f.version_id = p.version_id AND f.sha256 = p.sha256 "
        "AND f.role = 'preview') AS path, (SELECT path FROM files f WHERE f.version_id = p.version_id "
        "AND f.sha256 = p.thumbnail_sha256 AND f.role = 'thumbnail') AS thumbnail_path "
        "FROM previews p WHERE p.version_id = ? ORDER BY p.position",
        (version_id,),
    )
    return [
        Preview(r["sha256"], r["thumbnail_sha256"], r["media_type"], r["width"], r["height"], r["source"], r["url"],
                r["path"] or "", r["thumbnail_path"] or "")
        for r in rows
    ]  # fmt: skip


@guarded
def list_previews(registry, ref: str) -> list[Preview]:
    """The previews of the version ``ref`` names, in the order they were added."""
    version = registry.resolve(ref)
    db = registry._db()
    return _previews(db, _stored_version_id(db, version.name, version.number)) if db is not None else []
