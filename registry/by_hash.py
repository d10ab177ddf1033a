"""Find registry versions by the hash another tool recorded: a full sha256, A1111's short hash (the first 12 hex of
the tensor sha256, Civitai's AutoV3) or Civitai's AutoV2 (the first 10 hex of the file sha256).

A prefix is matched against both the file sha256 (``files_by_sha256``) and the tensor sha256
(``files_by_tensor_sha256``) of adapter files, as an index range, so a lookup costs a few index reads however
large the registry is.
"""

from __future__ import annotations

import re
import sqlite3

from .db import index_error
from .errors import InvalidValueError
from .records import Version

#: The shortest prefix looked up: 8 hex digits (4 billion values) keep chance matches out of even a large library.
MIN_PREFIX = 8
MAX_MATCHES = 20
_HEX = re.compile(r"[0-9a-f]{8,64}")


def versions_by_hash(registry, digest: str) -> list[Version]:
    """The versions whose adapter file's sha256 or tensor sha256 starts with ``digest`` (8–64 hex digits), oldest
    first; :class:`InvalidValueError` for anything that is not such a prefix."""
    prefix = digest.strip().lower() if isinstance(digest, str) else ""
    if not _HEX.fullmatch(prefix):
        raise InvalidValueError(f"{str(digest)[:80]!r} is not a hash: give {MIN_PREFIX} to 64 hex digits")
    try:
        db = registry._db()
        if db is None:
            return []
        upper = prefix + "g"  # every hex string that starts with prefix sorts below prefix + "g"
        rows = db.execute(
            "SELECT DISTINCT version_id FROM files WHERE role = 'adapter' AND "
            "((sha256 >= ? AND sha256 < ?) OR (tensor_sha256 >= ? AND tensor_sha256 < ?)) "
            "ORDER BY version_id LIMIT ?",
            (prefix, upper, prefix, upper, MAX_MATCHES),
        ).fetchall()
        return [registry._version(db, row[0]) for row in rows]
    except sqlite3.Error as e:
        error = index_error(e, registry.index_path)
        if error is None:
            raise
        raise error from None
