"""Parsed adapters kept in memory, least recently used first out, within a byte budget.

Switching among many adapters (a server's requests, a sweep, a compare grid) must not read and parse a file again
each time it comes back. Entries are keyed by the file's sha256, so one file under two paths (a registry blob and
an in-place copy) is held once. The hash of a path is remembered by its identity (device, inode, size, mtime), as
the registry's in-place files are, so a file is hashed again only when it changes; a caller that knows the hash (a
registry version) passes it and no hash is computed at all. The budget counts the tensors' bytes; an adapter larger
than the whole budget is returned without being kept.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from lorastack.adapters import Adapter, read_adapter
from lorastack.adapters.files import file_sha256

from .errors import ConfigError

#: Default budget: 4 GiB of parsed tensors (a few hundred typical SDXL LoRAs, a few dozen Flux ones).
DEFAULT_BUDGET = 4 << 30
_SHA256 = frozenset("0123456789abcdef")


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    hashed: int = 0  # files hashed (read once for their sha256)
    parsed: int = 0  # files read and parsed
    evicted: int = 0


def adapter_bytes(adapter: Adapter) -> int:
    """The bytes an adapter's tensors hold (tensors shared between layers counted once)."""
    seen: dict[int, int] = {}
    for layer in adapter.layers.values():
        for t in layer.tensors().values():
            seen.setdefault(id(t), t.numel() * t.element_size())
    for vectors in adapter.embeddings.values():
        for t in vectors.values():
            seen.setdefault(id(t), t.numel() * t.element_size())
    return sum(seen.values())


class AdapterCache:
    """``cache.read(path)`` → the parsed :class:`Adapter`, from memory when its file was read before."""

    def __init__(self, max_bytes: int = DEFAULT_BUDGET):
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 0:
            raise ConfigError(f"adapter cache budget {max_bytes!r} is not a whole number of bytes (0 or more)")
        self.max_bytes = max_bytes
        self.stats = CacheStats()
        self._entries: OrderedDict[str, tuple[Adapter, int]] = OrderedDict()
        self._hashes: dict[tuple, str] = {}  # (path, device, inode, size, mtime) → sha256
        self._lock = threading.Lock()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, sha256: str) -> bool:
        return sha256 in self._entries

    def read(self, path: str | Path, *, sha256: str | None = None, allow_pickle: bool = False) -> Adapter:
        """The adapter in ``path`` (``sha256``: its file hash when the caller knows it, e.g. from the registry)."""
        path = Path(path)
        if sha256 is not None and (len(sha256) != 64 or not set(sha256) <= _SHA256):
            raise ConfigError(f"{sha256!r} is not a sha256 (64 lowercase hex digits)")
        key = sha256 or self._hash(path)
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
                self.stats.hits += 1
                return entry[0]
            self.stats.misses += 1
        adapter = read_adapter(path, allow_pickle=allow_pickle)
        size = adapter_bytes(adapter)
        with self._lock:
            self.stats.parsed += 1
            if size <= self.max_bytes and key not in self._entries:
                self._entries[key] = (adapter, size)
                self.bytes += size
                while self.bytes > self.max_bytes:
                    _, (_, dropped) = self._entries.popitem(last=False)
                    self.bytes -= dropped
                    self.stats.evicted += 1
        return adapter

    def _hash(self, path: Path) -> str:
        try:
            st = os.stat(path)
        except OSError:
            return file_sha256(path)  # raises the reader's one-line error for a missing or unreadable file
        identity = (str(path.resolve()), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        with self._lock:
            known = self._hashes.get(identity)
        if known is not None:
            return known
        digest = file_sha256(path)
        with self._lock:
            self.stats.hashed += 1
            if len(self._hashes) >= 100_000:  # bounded: identities of files long gone are dropped wholesale
                self._hashes.clear()
            self._hashes[identity] = digest
        return digest

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._hashes.clear()
            self.bytes = 0
