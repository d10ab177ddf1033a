"""The local registry: named, versioned, tagged, content-addressed adapters.

Layout under the registry folder (``$LORASTACK_HOME/registry`` by default)::

    index.sqlite          adapters, versions, files, tags (WAL)
    blobs/sha256/ab/…     file contents by sha256
    tmp/                  files being written (swept by gc)
    lock                  orders blob writes against deletions
    reserve               1 MiB kept free, so that rm can commit on a full disk

An import copies its file into a private scratch folder (hashing it), parses that copy, moves it into ``blobs/``
(fsync, rename) and commits its version after, in one transaction; a version is therefore visible only once it is
complete. A removal commits first and deletes blobs after. A crash at any point leaves at most an unreferenced
blob or a scratch folder, which ``gc`` sweeps, and never a listed version without its blob.
"""

from __future__ import annotations

import difflib
import json
import os
import sqlite3
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from lorastack.adapters.errors import AdapterError
from lorastack.adapters.files import PICKLE_SUFFIXES, check_path
from lorastack.adapters.outputs import atomic_write_bytes, check_output_file
from lorastack.faults import crash_point
from lorastack.paths import data_home

from . import inplace, maintenance, version_rows
from .blobs import BlobStore
from .db import connect, current, transaction
from .errors import (
    ConflictError,
    CorruptIndexError,
    IntegrityError,
    InvalidValueError,
    NotFoundError,
)
from .folder import check_root, check_writable, ensure_reserve, guarded, with_space, writable
from .listing import list_rows
from .maintenance import DEFAULT_GRACE_SECONDS
from .names import LATEST, Ref, parse_ref, validate_name, validate_tag, validate_version, version_ranges
from .records import (
    FileRecord,
    GcReport,
    ImportResult,
    VerifyReport,
    Version,
    clean_text,
    validate_details,
    version_from_row,
)
from .removal import delete_unreferenced, remove_committed

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
        self._check_root()
        if write:
            self._check_writable()
        if self._conn is not None and not (write and self._readonly):
            return self._conn
        self.close()
        if not self.index_path.exists():
            if not write:
                return None
            self.root.mkdir(parents=True, exist_ok=True)
        if not write and not self._writable():
            self._conn, self._readonly = connect(self.index_path, readonly=True), True
            return self._conn
        if current(self.index_path):  # the usual case: no lock, so nothing waits for imports in flight
            self._conn, self._readonly = connect(self.index_path), False
        else:
            with self.blobs.lock(exclusive=True):  # one process at a time creates or migrates the index
                self._conn, self._readonly = connect(self.index_path), False
        if write:
            self._ensure_reserve()
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _check_root(self) -> None:
        check_root(self.root, self.index_path)

    def _writable(self) -> bool:
        return writable(self.root, self.index_path)

    def _check_writable(self) -> None:
        check_writable(self.root, self.index_path)

    def _ensure_reserve(self) -> None:
        ensure_reserve(self.root)

    # --- import ----------------------------------------------------------------------------------------------
    @guarded
    def import_file(
        self,
        path: str | Path,
        name: str,
        tag: str | None = None,
        *,
        tags: Iterable[str] = (),
        number: int | None = None,
        trigger_words: list[str] | None = None,
        base_model: str | None = None,
        description: str | None = None,
        provenance: dict[str, Any] | None = None,
        sync: dict[str, Any] | None = None,
        allow_pickle: bool = False,
    ) -> ImportResult:
        """Import an adapter file as a new version of ``name`` (tagged ``tag`` and, unless pinned, ``latest``).

        Importing bytes and details identical to an existing version of ``name`` returns that version instead.
        ``tags`` are more tags for the version; ``number`` asks for a version number (a Hub tag ``vN``), granted
        when ``name`` never had a version ``number``, else the next number is used. ``sync`` is merged into the
        provenance of the version whether it is new or not (where and when it was last synced). Everything, the
        tags included, lands in one transaction, after the file is stored.
        """
        from lorastack.adapters import read_adapter, write_adapter

        validate_name(name)
        wanted = [validate_tag(t) for t in ([tag] if tag is not None else []) + list(tags)]
        if number is not None:
            validate_version(number)
        validate_details(trigger_words, base_model, description)
        self._check_writable()
        source = check_path(path)
        pickle = source.suffix.lower() in PICKLE_SUFFIXES
        # refuse what is not an adapter before copying a byte (a 50 GB file that is not one, a pickle without
        # --allow-pickle); the copy is parsed again below, and that parse is the one recorded
        if not pickle:
            read_adapter(source, tensors=False)
        elif not allow_pickle:
            read_adapter(source)  # raises the pickle refusal
        provenance = {"file": str(source.resolve()), **(provenance or {})}
        db = self._db(write=True)  # open (and maybe create) the index before taking the blob lock
        with self.blobs.lock(exclusive=False), self.blobs.scratch() as scratch:
            try:
                if pickle:  # store pickles as safetensors, never as pickles; read the private copy only
                    copy = self.blobs.stage(source, scratch, "source" + source.suffix.lower(), safetensors=False)
                    adapter = read_adapter(copy.path, allow_pickle=allow_pickle)
                    write_adapter(adapter, scratch / "converted.safetensors", format=adapter.source_format)
                    staged = self.blobs.stage(scratch / "converted.safetensors", scratch)
                    provenance.update(converted_from_pickle=True, source_sha256=copy.sha256)
                else:
                    staged = self.blobs.stage(source, scratch)
                    # the structure is enough to refuse what is not an adapter and to describe it; the numbers
                    # are checked when a version is loaded
                    adapter = read_adapter(staged.path, tensors=False)
            except AdapterError as e:  # name the user's file, not the private copy
                raise type(e)(e.problem, source) from None
            crash_point("registry.import.staged")
            meta = adapter.metadata
            details = {
                "trigger_words": list(trigger_words) if trigger_words is not None else clean_text(meta.trigger_words),
                "base_model": base_model if base_model is not None else clean_text(meta.base_model),
                "description": description if description is not None else clean_text(meta.description),
            }
            validate_details(**details, source=source)
            blob = self.blobs.commit(staged)
            crash_point("registry.import.stored")
            with transaction(db):
                result = self._record(db, name, wanted, number, adapter, blob, details, provenance, sync)
                crash_point("registry.import.before-commit")
            crash_point("registry.import.after-commit")
        return result

    def _record(self, db, name, tags, number, adapter, blob, details, provenance, sync) -> ImportResult:
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
            number = self._new_number(db, adapter_id, stored_name, number)
            kinds = adapter.kinds()
            version_id = db.execute(
                "INSERT INTO versions (adapter_id, number, created_at, format, family, kind, rank, alpha, "
                "trigger_words, base_model, description, provenance, metadata) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (adapter_id, number, now, adapter.source_format, adapter.family, "+".join(kinds), adapter.rank,
                 adapter.alpha, json.dumps(details["trigger_words"]), details["base_model"], details["description"],
                 json.dumps({**provenance, **(sync or {})}, sort_keys=True),
                 json.dumps(adapter.metadata.raw, sort_keys=True)),
            ).lastrowid  # fmt: skip
            db.execute(
                "INSERT INTO files (version_id, path, role, size, sha256, tensor_sha256) VALUES (?,?,?,?,?,?)",
                (version_id, ADAPTER_FILE, "adapter", blob.size, blob.sha256, blob.tensor_sha256),
            )
        else:
            version_id = same["id"]
            if sync:
                self._merge_provenance(db, version_id, sync)
        for t in tags:
            self._set_tag(db, adapter_id, t, version_id)
            if t.lower() == LATEST:
                db.execute("UPDATE adapters SET latest_pinned = 1 WHERE id = ?", (adapter_id,))
        self._follow_newest(db, adapter_id)
        return ImportResult(self._version(db, version_id, stored_name), created)

    # the index rows every writer shares (scan and removal call them through the registry too)
    _new_number = staticmethod(version_rows.new_number)
    _follow_newest = staticmethod(version_rows.follow_newest)
    _has_tag = staticmethod(version_rows.has_tag)
    _merge_provenance = staticmethod(version_rows.merge_provenance)
    _set_tag = staticmethod(version_rows.set_tag)

    # --- reading ---------------------------------------------------------------------------------------------
    def _version(self, db, version_id: int, name: str | None = None) -> Version:
        row = db.execute(
            "SELECT v.*, a.name AS adapter_name FROM versions v JOIN adapters a ON a.id = v.adapter_id WHERE v.id = ?",
            (version_id,),
        ).fetchone()
        files = [
            FileRecord(f["path"], f["role"], f["size"], f["sha256"], f["tensor_sha256"], *inplace.record_fields(f))
            for f in db.execute("SELECT * FROM files WHERE version_id = ? ORDER BY path", (version_id,))
        ]
        tags = [t[0] for t in db.execute("SELECT tag FROM tags WHERE version_id = ? ORDER BY tag", (version_id,))]
        try:
            return version_from_row(row, files, tags)
        except ValueError as e:
            raise CorruptIndexError(
                f"{self.index_path}: the record of {row['adapter_name']}@{row['number']} is damaged ({e}); restore "
                "index.sqlite from a backup, or remove that version"
            ) from None

    @guarded
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
                shown = version_ranges(numbers)
                raise NotFoundError(f"'{row['name']}' has no version {ref.version}; versions: {shown}")
            return self._version(db, found["id"])
        tag = ref.tag or LATEST
        found = db.execute("SELECT version_id FROM tags WHERE adapter_id = ? AND tag = ?", (row["id"], tag)).fetchone()
        if found is None:
            tags = [r[0] for r in db.execute("SELECT tag FROM tags WHERE adapter_id = ? ORDER BY tag", (row["id"],))]
            close = difflib.get_close_matches(tag, tags, n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise NotFoundError(f"'{row['name']}' has no tag '{tag}'; tags: {', '.join(tags) or 'none'}{hint}")
        return self._version(db, found["version_id"])

    @guarded
    def versions(self, name: str) -> list[Version]:
        db = self._db()
        if db is None:
            return []
        ids = db.execute(
            "SELECT v.id FROM versions v JOIN adapters a ON a.id = v.adapter_id WHERE a.name = ? ORDER BY v.number",
            (validate_name(name),),
        )
        return [self._version(db, row[0]) for row in ids.fetchall()]

    @guarded
    def list(
        self, family: str | None = None, search: str | None = None, all_versions: bool = False, missing: bool = False,
        lineage: str | None = None, tag: str | None = None, limit: int | None = None, offset: int = 0,
        sort: str = "name",
    ) -> list[dict]:  # fmt: skip
        """One row per adapter (its latest version), or per version with ``all_versions``; filtered (``missing``:
        only versions whose in-place file a rescan found gone; ``lineage``, ``tag``, ``limit``, ``offset``, ``sort``:
        see ``listing.list_rows``)."""
        if search is not None and (not isinstance(search, str) or clean_text(search) != search or len(search) > 1000):
            raise InvalidValueError("--search text must be UTF-8 text of at most 1000 characters")
        db = self._db()
        if db is None:
            return []
        return list_rows(db, family, search, all_versions, missing, lineage, tag, limit, offset, sort)

    @guarded
    def adapter_path(self, ref: str | Ref, verify: bool = True) -> tuple[Version, Path]:
        """The version and the path of its adapter file, re-hashed unless ``verify=False`` (corrupt ones refused)."""
        version = self.resolve(ref)
        record = version.adapter_file
        if record.location == inplace.INPLACE:  # a user's file, found by lorastack scan: never a blob
            return version, inplace.checked_path(version, record, verify)
        if verify:
            try:
                return version, self.blobs.check(record.sha256, record.size)
            except IntegrityError as e:
                raise IntegrityError(f"{version.ref}: {e}") from None
        return version, self.blobs.path(record.sha256)

    # --- tags and removal ------------------------------------------------------------------------------------
    @guarded
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
            crash_point("registry.tag.before-commit")
            return self._version(db, version_id)

    @guarded
    def record_provenance(self, ref: str, updates: dict[str, Any]) -> Version:
        """Add to a version's provenance (where it came from or went: a Hub repo and commit, a training run).

        The version's files and details never change; its provenance may grow.
        """
        target = self.resolve(ref)
        with transaction(self._db(write=True)) as db:
            version_id = self._version_id(db, self._adapter_id(db, target.name), target.number)
            self._merge_provenance(db, version_id, updates)
            crash_point("registry.provenance.before-commit")
            return self._version(db, version_id)

    @guarded
    def follow_latest(self, name: str) -> Version:
        """Unpin ``latest``: point it at the newest version again and let imports move it."""
        with transaction(self._db(write=True)) as db:
            adapter_id = self._adapter_id(db, validate_name(name))
            db.execute("UPDATE adapters SET latest_pinned = 0 WHERE id = ?", (adapter_id,))
            self._follow_newest(db, adapter_id)
            (newest,) = db.execute(
                "SELECT version_id FROM tags WHERE adapter_id = ? AND tag = ?", (adapter_id, LATEST)
            ).fetchone()
            return self._version(db, newest)

    @guarded
    def remove(self, ref: str, *, all_versions: bool = False, force: bool = False) -> dict[str, Any]:
        """Remove a tag (``name:tag``), a version (``name@N``) or, with ``all_versions``, a whole adapter.

        A version that tags still point at is kept unless ``force``. The index change commits first; the blobs it
        leaves unreferenced are deleted after, so a crash in between leaves orphans for ``gc``, never a listed
        version without its file. Removed version numbers are never given out again.
        """
        parsed = parse_ref(ref)
        if all_versions and parsed.explicit:
            raise ConflictError(
                f"--all-versions removes every version of {parsed.name}, but {ref!r} names one "
                f"{'tag' if parsed.tag is not None else 'version'}: write lorastack rm {parsed.name} --all-versions "
                f"for the whole adapter, or leave out --all-versions to remove only {parsed}"
            )
        if not all_versions and not parsed.explicit:
            raise ConflictError(
                f"say what to remove: {parsed.name}:TAG removes a tag, {parsed.name}@N a version, "
                f"{parsed.name} --all-versions the whole adapter"
            )
        db = self._db(write=True)
        with self.blobs.lock(exclusive=True):
            removed, candidates = with_space(
                self.root, lambda: remove_committed(self, db, parsed, all_versions, force)
            )
            crash_point("registry.rm.after-commit")
            removed["freed"] = delete_unreferenced(self, db, candidates)
        self._ensure_reserve()
        return removed

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
    @guarded
    def export(self, ref: str, output: str | Path, format: str | None = None, overwrite: bool = False) -> Path:
        """Write a version's adapter to ``output``: its stored bytes, or converted to ``format``.

        The output is checked first (only a regular file is ever replaced, and only with ``overwrite``).
        """
        from lorastack.adapters import read_adapter, write_adapter

        output = check_output_file(output, overwrite=overwrite)
        if Path(os.path.realpath(output)).is_relative_to(Path(os.path.realpath(self.root))):
            raise ConflictError(f"{output}: is inside the registry folder {self.root}; export somewhere else")
        version, path = self.adapter_path(ref)
        if format is None or format == version.format:
            atomic_write_bytes(output, path.read_bytes())
        else:
            write_adapter(read_adapter(path), output, format=format)
        return output

    @guarded
    def verify(self, ref: str | None = None) -> VerifyReport:
        """Re-hash blobs (all, or one version's): report missing, corrupt and extra blobs and stale temp files."""
        return maintenance.verify(self, ref)

    @guarded
    def gc(self, dry_run: bool = False, grace: float = DEFAULT_GRACE_SECONDS) -> GcReport:
        """Delete blobs no version references and stale temp files, both older than ``grace`` seconds."""
        self._check_root()
        report = maintenance.gc(self, dry_run, grace)
        if not dry_run and self.index_path.exists() and self._writable():
            self._ensure_reserve()
        return report
