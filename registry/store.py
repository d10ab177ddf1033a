"""The local registry: named, versioned, tagged, content-addressed adapters.

Layout under the registry folder (``$LORASTACK_HOME/registry`` by default)::

    index.sqlite          adapters, versions, files, tags (WAL)
    blobs/sha256/ab/…     file contents by sha256
    tmp/                  files being written (swept by gc)
    lock                  orders blob writes against deletions

An import stores its blob first (temp file, fsync, rename) and commits its version after, in one transaction; a
version is therefore visible only once it is complete, and a crash leaves at most an unreferenced blob or temp
file, which ``gc`` sweeps.
"""

from __future__ import annotations

import difflib
import json
import os
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

from lorastack.adapters.files import PICKLE_SUFFIXES, atomic_write_bytes, check_path
from lorastack.paths import data_home

from . import maintenance
from .blobs import BlobStore
from .db import connect, transaction
from .errors import ConflictError, IntegrityError, NotFoundError, ReadOnlyError, RegistryError
from .listing import list_rows
from .maintenance import DEFAULT_GRACE_SECONDS
from .names import LATEST, Ref, parse_ref, validate_name, validate_tag
from .records import FileRecord, GcReport, ImportResult, VerifyReport, Version

ADAPTER_FILE = "adapter.safetensors"


def default_root() -> Path:
    return data_home() / "registry"


class Registry:
    """The registry in ``root`` (default ``$LORASTACK_HOME/registry``). Nothing is created until the first write."""

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root is not None else default_root()
        self.blobs = BlobStore(self.root)
        self._conn: sqlite3.Connection | None = None
        self._readonly = False

    # --- connection ------------------------------------------------------------------------------------------
    @property
    def index_path(self) -> Path:
        return self.root / "index.sqlite"

    # Locking order: open the index (which may take the blob lock briefly) before taking the blob lock.

    def _db(self, write: bool = False) -> sqlite3.Connection | None:
        if write:
            self._check_writable()
        if self._conn is not None and not (write and self._readonly):
            return self._conn
        if not self.index_path.exists():
            if not write:
                return None
            self.root.mkdir(parents=True, exist_ok=True)
        if not write and not os.access(self.root, os.W_OK):
            self._conn, self._readonly = connect(self.index_path, readonly=True), True
        else:
            with self.blobs.lock(exclusive=True):  # one process at a time creates or migrates the index
                self._conn, self._readonly = connect(self.index_path), False
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _check_writable(self) -> None:
        probe = self.root
        while not probe.exists():
            probe = probe.parent
        if not os.access(probe, os.W_OK) or (self.index_path.exists() and not os.access(self.index_path, os.W_OK)):
            raise ReadOnlyError(f"{self.root}: the registry folder is read-only; nothing was changed")

    # --- import ----------------------------------------------------------------------------------------------
    def import_file(
        self,
        path: str | Path,
        name: str,
        tag: str | None = None,
        *,
        trigger_words: list[str] | None = None,
        base_model: str | None = None,
        description: str | None = None,
        provenance: dict[str, Any] | None = None,
        allow_pickle: bool = False,
    ) -> ImportResult:
        """Import an adapter file as a new version of ``name`` (tagged ``tag`` and, unless pinned, ``latest``).

        Importing bytes and details identical to an existing version of ``name`` returns that version instead.
        """
        from lorastack.adapters import read_adapter, write_adapter

        validate_name(name)
        if tag is not None:
            validate_tag(tag)
        self._check_writable()
        source = check_path(path)
        # the structure is enough to refuse what is not an adapter and to describe it; the numbers are checked
        # when a version is loaded
        adapter = read_adapter(source, allow_pickle=allow_pickle, tensors=False)
        meta = adapter.metadata
        details = {
            "trigger_words": list(trigger_words) if trigger_words is not None else list(meta.trigger_words),
            "base_model": base_model if base_model is not None else meta.base_model,
            "description": description if description is not None else meta.description,
        }
        provenance = {"file": str(source.resolve()), **(provenance or {})}
        db = self._db(write=True)  # open (and maybe create) the index before taking the blob lock
        with tempfile.TemporaryDirectory(dir=self._tmp_dir()) as scratch:
            if source.suffix.lower() in PICKLE_SUFFIXES:  # store pickles as safetensors, never as pickles
                converted = Path(scratch) / ADAPTER_FILE
                write_adapter(adapter, converted, format=adapter.source_format)
                provenance["converted_from_pickle"] = True
                source = converted
            with self.blobs.lock(exclusive=False):
                blob = self.blobs.store(source)
                with transaction(db):
                    result = self._record(db, name, tag, adapter, blob, details, provenance)
        return result

    def _tmp_dir(self) -> Path:
        self.blobs.tmp.mkdir(parents=True, exist_ok=True)
        return self.blobs.tmp

    def _record(self, db, name, tag, adapter, blob, details, provenance) -> ImportResult:
        now = time.time()
        row = db.execute("SELECT id, name FROM adapters WHERE name = ?", (name,)).fetchone()
        if row is None:
            adapter_id = db.execute("INSERT INTO adapters (name, created_at) VALUES (?, ?)", (name, now)).lastrowid
            stored_name = name
        else:
            adapter_id, stored_name = row["id"], row["name"]
        same = db.execute(
            "SELECT v.id FROM versions v JOIN files f ON f.version_id = v.id AND f.role = 'adapter' "
            "WHERE v.adapter_id = ? AND f.sha256 = ? AND v.trigger_words = ? AND v.base_model IS ? "
            "AND v.description IS ? ORDER BY v.number DESC LIMIT 1",
            (adapter_id, blob.sha256, json.dumps(details["trigger_words"]), details["base_model"],
             details["description"]),
        ).fetchone()  # fmt: skip
        created = same is None
        if created:
            (number,) = db.execute(
                "SELECT COALESCE(MAX(number), 0) + 1 FROM versions WHERE adapter_id = ?", (adapter_id,)
            ).fetchone()
            kinds = adapter.kinds()
            version_id = db.execute(
                "INSERT INTO versions (adapter_id, number, created_at, format, family, kind, rank, alpha, "
                "trigger_words, base_model, description, provenance, metadata) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (adapter_id, number, now, adapter.source_format, adapter.family, "+".join(kinds), adapter.rank,
                 adapter.alpha, json.dumps(details["trigger_words"]), details["base_model"], details["description"],
                 json.dumps(provenance, sort_keys=True), json.dumps(adapter.metadata.raw, sort_keys=True)),
            ).lastrowid  # fmt: skip
            db.execute(
                "INSERT INTO files (version_id, path, role, size, sha256, tensor_sha256) VALUES (?,?,?,?,?,?)",
                (version_id, ADAPTER_FILE, "adapter", blob.size, blob.sha256, blob.tensor_sha256),
            )
            pinned = db.execute("SELECT latest_pinned FROM adapters WHERE id = ?", (adapter_id,)).fetchone()[0]
            if not pinned:
                self._set_tag(db, adapter_id, LATEST, version_id)
        else:
            version_id = same["id"]
        if tag is not None:
            self._set_tag(db, adapter_id, tag, version_id)
            if tag.lower() == LATEST:
                db.execute("UPDATE adapters SET latest_pinned = 1 WHERE id = ?", (adapter_id,))
        return ImportResult(self._version(db, version_id, stored_name), created)

    @staticmethod
    def _set_tag(db, adapter_id: int, tag: str, version_id: int) -> None:
        db.execute(
            "INSERT INTO tags (adapter_id, tag, version_id) VALUES (?, ?, ?) "
            "ON CONFLICT (adapter_id, tag) DO UPDATE SET version_id = excluded.version_id",
            (adapter_id, tag, version_id),
        )

    # --- reading ---------------------------------------------------------------------------------------------
    def _version(self, db, version_id: int, name: str | None = None) -> Version:
        row = db.execute(
            "SELECT v.*, a.name AS adapter_name FROM versions v JOIN adapters a ON a.id = v.adapter_id WHERE v.id = ?",
            (version_id,),
        ).fetchone()
        files = [
            FileRecord(f["path"], f["role"], f["size"], f["sha256"], f["tensor_sha256"])
            for f in db.execute("SELECT * FROM files WHERE version_id = ? ORDER BY path", (version_id,))
        ]
        tags = [t[0] for t in db.execute("SELECT tag FROM tags WHERE version_id = ? ORDER BY tag", (version_id,))]
        return Version(
            name=row["adapter_name"],
            number=row["number"],
            created_at=row["created_at"],
            format=row["format"],
            family=row["family"],
            kind=row["kind"],
            rank=row["rank"],
            alpha=row["alpha"],
            trigger_words=json.loads(row["trigger_words"]),
            base_model=row["base_model"],
            description=row["description"],
            provenance=json.loads(row["provenance"]),
            metadata=json.loads(row["metadata"]),
            files=files,
            tags=tags,
        )

    def resolve(self, ref: str | Ref) -> Version:
        """The version a reference names; :class:`NotFoundError` with close matches when there is none."""
        ref = parse_ref(ref) if isinstance(ref, str) else ref
        db = self._db()
        row = db.execute("SELECT id, name FROM adapters WHERE name = ?", (ref.name,)).fetchone() if db else None
        if row is None:
            names = [r[0] for r in db.execute("SELECT name FROM adapters")] if db else []
            close = difflib.get_close_matches(ref.name, names, n=3, cutoff=0.6)
            hint = (
                f"; did you mean {', '.join(close)}?" if close else (" (the registry is empty)" if not names else "")
            )
            raise NotFoundError(f"no adapter named '{ref.name}' in the registry{hint}")
        if ref.version is not None:
            found = db.execute(
                "SELECT id FROM versions WHERE adapter_id = ? AND number = ?", (row["id"], ref.version)
            ).fetchone()
            if found is None:
                numbers = [r[0] for r in db.execute("SELECT number FROM versions WHERE adapter_id = ?", (row["id"],))]
                raise NotFoundError(f"'{row['name']}' has no version {ref.version}; versions: {_ranges(numbers)}")
            return self._version(db, found["id"])
        tag = ref.tag or LATEST
        found = db.execute("SELECT version_id FROM tags WHERE adapter_id = ? AND tag = ?", (row["id"], tag)).fetchone()
        if found is None:
            tags = [r[0] for r in db.execute("SELECT tag FROM tags WHERE adapter_id = ? ORDER BY tag", (row["id"],))]
            close = difflib.get_close_matches(tag, tags, n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise NotFoundError(f"'{row['name']}' has no tag '{tag}'; tags: {', '.join(tags) or 'none'}{hint}")
        return self._version(db, found["version_id"])

    def versions(self, name: str) -> list[Version]:
        db = self._db()
        if db is None:
            return []
        ids = db.execute(
            "SELECT v.id FROM versions v JOIN adapters a ON a.id = v.adapter_id WHERE a.name = ? ORDER BY v.number",
            (validate_name(name),),
        )
        return [self._version(db, row[0]) for row in ids.fetchall()]

    def list(self, family: str | None = None, search: str | None = None, all_versions: bool = False) -> list[dict]:
        """One row per adapter (its latest version), or per version with ``all_versions``; filtered."""
        db = self._db()
        if db is None:
            return []
        return list_rows(db, family, search, all_versions)

    def adapter_path(self, ref: str | Ref, verify: bool = True) -> tuple[Version, Path]:
        """The version and the path of its adapter file, re-hashed unless ``verify=False`` (corrupt ones refused)."""
        version = self.resolve(ref)
        record = version.adapter_file
        if verify:
            try:
                return version, self.blobs.check(record.sha256, record.size)
            except IntegrityError as e:
                raise IntegrityError(f"{version.ref}: {e}") from None
        return version, self.blobs.path(record.sha256)

    # --- tags and removal ------------------------------------------------------------------------------------
    def tag(self, ref: str, new_tag: str) -> Version:
        """Point ``new_tag`` at the version ``ref`` names (moving it if it exists). Tagging ``latest`` pins it."""
        validate_tag(new_tag)
        target = self.resolve(ref)
        with transaction(self._db(write=True)) as db:
            adapter_id = self._adapter_id(db, target.name)
            version_id = self._version_id(db, adapter_id, target.number)
            self._set_tag(db, adapter_id, new_tag, version_id)
            if new_tag.lower() == LATEST:
                db.execute("UPDATE adapters SET latest_pinned = 1 WHERE id = ?", (adapter_id,))
            return self._version(db, version_id)

    def record_provenance(self, ref: str, updates: dict[str, Any]) -> Version:
        """Add to a version's provenance (where it came from or went: a Hub repo and commit, a training run).

        The version's files and details never change; its provenance may grow.
        """
        target = self.resolve(ref)
        with transaction(self._db(write=True)) as db:
            version_id = self._version_id(db, self._adapter_id(db, target.name), target.number)
            (raw,) = db.execute("SELECT provenance FROM versions WHERE id = ?", (version_id,)).fetchone()
            merged = {**json.loads(raw), **updates}
            db.execute(
                "UPDATE versions SET provenance = ? WHERE id = ?", (json.dumps(merged, sort_keys=True), version_id)
            )
            return self._version(db, version_id)

    def follow_latest(self, name: str) -> Version:
        """Unpin ``latest``: point it at the newest version again and let imports move it."""
        with transaction(self._db(write=True)) as db:
            adapter_id = self._adapter_id(db, validate_name(name))
            (newest,) = db.execute("SELECT MAX(id) FROM versions WHERE adapter_id = ?", (adapter_id,)).fetchone()
            db.execute("UPDATE adapters SET latest_pinned = 0 WHERE id = ?", (adapter_id,))
            self._set_tag(db, adapter_id, LATEST, newest)
            return self._version(db, newest)

    def remove(self, ref: str, *, all_versions: bool = False, force: bool = False) -> dict[str, Any]:
        """Remove a tag (``name:tag``), a version (``name@N``) or, with ``all_versions``, a whole adapter.

        A version that tags still point at is kept unless ``force``. Blobs no longer referenced are deleted.
        """
        parsed = parse_ref(ref)
        if not all_versions and not parsed.explicit:
            raise ConflictError(
                f"say what to remove: {parsed.name}:TAG removes a tag, {parsed.name}@N a version, "
                f"{parsed.name} --all the whole adapter"
            )
        db = self._db(write=True)
        with self.blobs.lock(exclusive=True), transaction(db):
            adapter_id = self._adapter_id(db, parsed.name)
            if all_versions:
                removed = {"adapter": parsed.name}
                db.execute("DELETE FROM adapters WHERE id = ?", (adapter_id,))
            elif parsed.tag is not None:
                removed = self._remove_tag(db, adapter_id, parsed)
            else:
                removed = self._remove_version(db, adapter_id, parsed, force)
            removed["freed"] = self._delete_unreferenced(db)
        return removed

    def _remove_tag(self, db, adapter_id: int, parsed: Ref) -> dict[str, Any]:
        if parsed.tag.lower() == LATEST:
            raise ConflictError(
                f"'latest' always names a version; move it (lorastack tag {parsed.name}@N latest) or remove "
                f"versions instead"
            )
        deleted = db.execute("DELETE FROM tags WHERE adapter_id = ? AND tag = ?", (adapter_id, parsed.tag)).rowcount
        if not deleted:
            self.resolve(parsed)  # raises NotFoundError listing the tags
        return {"tag": str(parsed)}

    def _remove_version(self, db, adapter_id: int, parsed: Ref, force: bool) -> dict[str, Any]:
        version_id = self._version_id(db, adapter_id, parsed.version)
        tags = [r[0] for r in db.execute("SELECT tag FROM tags WHERE version_id = ? ORDER BY tag", (version_id,))]
        others = [t for t in tags if t.lower() != LATEST]
        if others and not force:
            raise ConflictError(
                f"{parsed} is tagged {', '.join(others)}; pass --force to remove it and its tags, or move the tags"
            )
        db.execute("DELETE FROM tags WHERE version_id = ?", (version_id,))
        db.execute("DELETE FROM versions WHERE id = ?", (version_id,))
        (left,) = db.execute("SELECT COUNT(*) FROM versions WHERE adapter_id = ?", (adapter_id,)).fetchone()
        if left == 0:
            db.execute("DELETE FROM adapters WHERE id = ?", (adapter_id,))
        elif LATEST in [t.lower() for t in tags]:
            (newest,) = db.execute("SELECT MAX(id) FROM versions WHERE adapter_id = ?", (adapter_id,)).fetchone()
            self._set_tag(db, adapter_id, LATEST, newest)
        return {"version": str(parsed), "tags": tags}

    def _delete_unreferenced(self, db) -> int:
        referenced = {r[0] for r in db.execute("SELECT sha256 FROM files")}
        freed = 0
        for blob in self.blobs.all_blobs():
            if blob.name not in referenced:
                freed += blob.stat().st_size
                blob.unlink()
        return freed

    def _adapter_id(self, db, name: str) -> int:
        row = db.execute("SELECT id FROM adapters WHERE name = ?", (name,)).fetchone()
        if row is None:
            self.resolve(Ref(name))  # raises NotFoundError with suggestions
        return row["id"]

    def _version_id(self, db, adapter_id: int, number: int) -> int:
        row = db.execute(
            "SELECT id FROM versions WHERE adapter_id = ? AND number = ?", (adapter_id, number)
        ).fetchone()
        if row is None:
            name = db.execute("SELECT name FROM adapters WHERE id = ?", (adapter_id,)).fetchone()[0]
            self.resolve(Ref(name, version=number))
        return row["id"]

    # --- export, verify, gc ----------------------------------------------------------------------------------
    def export(self, ref: str, output: str | Path, format: str | None = None, overwrite: bool = False) -> Path:
        """Write a version's adapter to ``output``: its stored bytes, or converted to ``format``."""
        from lorastack.adapters import read_adapter, write_adapter

        output = Path(output)
        if output.exists() and not overwrite:
            raise ConflictError(f"{output} already exists; choose another path or pass --force")
        if not output.parent.is_dir():
            raise RegistryError(f"{output.parent}: no such folder")
        version, path = self.adapter_path(ref)
        if format is None or format == version.format:
            atomic_write_bytes(output, path.read_bytes())
        else:
            write_adapter(read_adapter(path), output, format=format)
        return output

    def verify(self, ref: str | None = None) -> VerifyReport:
        """Re-hash blobs (all, or one version's): report missing, corrupt and extra blobs and stale temp files."""
        return maintenance.verify(self, ref)

    def gc(self, dry_run: bool = False, grace: float = DEFAULT_GRACE_SECONDS) -> GcReport:
        """Delete blobs no version references and stale temp files, both older than ``grace`` seconds."""
        return maintenance.gc(self, dry_run, grace)


def _ranges(numbers: list[int]) -> str:
    numbers = sorted(numbers)
    if not numbers:
        return "none"
    if numbers == list(range(numbers[0], numbers[-1] + 1)) and len(numbers) > 2:
        return f"{numbers[0]}–{numbers[-1]}"
    return ", ".join(map(str, numbers))
