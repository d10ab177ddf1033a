"""``lorastack link``: the registry's adapters as a folder other UIs read, kept up to date on every rerun.

A1111/Forge and ComfyUI read LoRAs from a folder of files and the sidecars beside them; a folder of links to the
registry's files gives them the library without a copy. Layouts:

* ``a1111``: ``NAME.safetensors`` and A1111's user-metadata sidecar ``NAME.json`` (``activation text``, ``preferred
  weight``, ``sd version``, ``description``, ``notes``), the file ``ui_edit_user_metadata.py`` reads and writes;
* ``comfyui``: ``NAME.safetensors`` and ``NAME.metadata.json`` in ComfyUI-Lora-Manager's shape (``model_name``,
  ``sha256``, ``base_model``, ``civitai.trainedWords``, ``usage_tips``), which its UI shows.

Namespaces become subfolders (``me/style`` → ``me/style.safetensors``; the UIs name a LoRA by its file stem). The
folder's ``.lorastack-link.json`` lists what lorastack made there and the sha256 of each sidecar it wrote: a rerun
adds, updates and removes only its own files, keeps a sidecar the user edited in the UI since (its hash changed), and
never replaces a file it did not make. Links are renamed into place and sidecars and the list written atomically,
the list last: a run killed midway leaves links and sidecars that are exactly what the next run would write, which
it takes as its own.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from lorastack.adapters.outputs import atomic_write_bytes
from lorastack.faults import crash_point

from .errors import InvalidValueError, RegistryError
from .metadata import get_metadata
from .previews import list_previews

LAYOUTS = ("a1111", "comfyui")
MANIFEST = ".lorastack-link.json"
MAX_MANIFEST_BYTES = 64 << 20
#: A1111's ``sd version`` values (its SdVersion names); the families it has no name for are "Unknown".
A1111_VERSIONS = {"sd1": "SD1", "sd2": "SD2", "sdxl": "SDXL"}
LINEAGE = {"sd1": "SD 1.5", "sd2": "SD 2.1", "sdxl": "SDXL 1.0", "flux": "Flux.1 D", "sd3": "SD 3.5"}


@dataclass
class LinkReport:
    folder: str
    layout: str
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    unchanged: int = 0
    kept: dict[str, str] = field(default_factory=dict)  # path → why it was left as it is
    problems: dict[str, str] = field(default_factory=dict)  # ref → why it has no link

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def link_library(registry, folder: str | Path, layout: str, *, search: str | None = None, family: str | None = None,
                 all_versions: bool = False) -> LinkReport:  # fmt: skip
    """Make (or bring up to date) ``folder`` as a ``layout`` folder of the registry's adapters (latest versions, or
    every version as ``NAME@N``), filtered like ``list``."""
    if layout not in LAYOUTS:
        raise InvalidValueError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise InvalidValueError(f"{folder}: exists and is not a folder")
    folder.mkdir(parents=True, exist_ok=True)
    report = LinkReport(str(folder), layout)
    before = _read_manifest(folder)
    wanted: dict[str, dict] = {}
    for row in registry.list(family=family, search=search, all_versions=all_versions):
        ref = f"{row['name']}@{row['version']}"
        try:
            version, path = registry.adapter_path(ref, verify=False)
        except RegistryError as e:
            report.problems[ref] = str(e).splitlines()[0][:200]
            continue
        stem = version.name + (f"@{version.number}" if all_versions else "")
        wanted[f"{stem}.safetensors"] = {"kind": "link", "target": str(Path(path).resolve())}
        values = {k: v.value for k, v in get_metadata(registry, version.ref).items()}
        sidecar, content = _sidecar(layout, stem, version, values)
        wanted[sidecar] = {"kind": "sidecar", "content": content}
        previews = list_previews(registry, version.ref)
        if previews:  # the first preview, where both UIs look for it
            suffix = {"image/png": ".png", "image/jpeg": ".jpg", "image/webp": ".webp"}.get(previews[0].media_type)
            if suffix:
                target = str(registry.blobs.path(previews[0].sha256).resolve())
                wanted[f"{stem}.preview{suffix}"] = {"kind": "link", "target": target}
    made: dict[str, dict] = {}
    for rel, want in wanted.items():
        entry = _place(folder, rel, want, before.get(rel), report)
        if entry is not None:
            made[rel] = entry
    for rel, entry in before.items():
        if rel not in wanted:
            _remove(folder, rel, entry, report)
    crash_point("registry.link.before-list")
    atomic_write_bytes(folder / MANIFEST, json.dumps({"layout": layout, "files": made}, indent=1).encode())
    return report


def _sidecar(layout: str, stem: str, version, values: dict) -> tuple[str, bytes]:
    """The UI's sidecar from the version and its metadata (:mod:`lorastack.registry.metadata`)."""
    groups = values.get("trigger_groups") or ([list(version.trigger_words)] if version.trigger_words else [])
    words = [w for group in groups for w in group]
    weight = values.get("weight")  # A1111 reads 0 as "not set"
    description = values.get("description") or version.description or ""
    notes = "\n".join(filter(None, [values.get("notes"), f"lorastack {version.ref}"]))
    if layout == "a1111":
        data = {
            "description": description,
            "sd version": values.get("sd_version") or A1111_VERSIONS.get(version.family or "", "Unknown"),
            "activation text": ", ".join(words),
            "preferred weight": weight or 0,
            "negative text": values.get("negative") or "",
            "notes": notes,
        }
        return f"{stem}.json", json.dumps(data, indent=4, ensure_ascii=False).encode()
    data = {
        "file_name": Path(stem).name,
        "model_name": version.name,
        "sha256": version.adapter_file.sha256,
        "size": version.adapter_file.size,
        "base_model": values.get("lineage") or LINEAGE.get(version.family or "", "Unknown"),
        "notes": notes,
        "tags": list(version.tags),
        "civitai": {"trainedWords": words},
        "usage_tips": json.dumps({"strength": weight} if weight else {}),
        "from_civitai": False,
        "source": f"lorastack {version.ref}",
    }
    return f"{stem}.metadata.json", json.dumps(data, indent=2, ensure_ascii=False).encode()


def _place(folder: Path, rel: str, want: dict, previous: dict | None, report: LinkReport) -> dict | None:
    path = folder / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    exists = os.path.lexists(path)
    if want["kind"] == "link":
        target = want["target"]
        if exists and path.is_symlink() and os.readlink(path) == target:
            report.unchanged += 1
            return {"kind": "link", "target": target}
        if exists and previous is None:
            report.kept[rel] = "exists and was not made by lorastack link"
            return None
        crash_point("registry.link.before-link")
        tmp = path.with_name(f".{path.name}.lorastack-tmp")
        if os.path.lexists(tmp):
            tmp.unlink()
        os.symlink(target, tmp)
        os.replace(tmp, path)  # atomic: the UI sees the old link or the new one
        (report.updated if exists else report.created).append(rel)
        return {"kind": "link", "target": target}
    content = want["content"]
    digest = hashlib.sha256(content).hexdigest()
    if exists:
        current = _hash_of(path)
        if current == digest:  # what this run would write (also after a run killed before its list was saved)
            report.unchanged += 1
            return {"kind": "sidecar", "sha256": digest}
        if previous is None:
            report.kept[rel] = "exists and was not made by lorastack link"
            return None
        if current != previous.get("sha256"):
            report.kept[rel] = "edited since lorastack wrote it (kept; remove it to have it rewritten)"
            return {"kind": "sidecar", "sha256": previous.get("sha256"), "edited": True}
    atomic_write_bytes(path, content)
    (report.updated if exists else report.created).append(rel)
    return {"kind": "sidecar", "sha256": digest}


def _remove(folder: Path, rel: str, entry: dict, report: LinkReport) -> None:
    path = folder / rel
    if not os.path.lexists(path):
        return
    if entry.get("kind") == "link":
        if path.is_symlink() and os.readlink(path) == entry.get("target"):
            path.unlink()
            report.removed.append(rel)
        else:
            report.kept[rel] = "no longer in the registry, but changed since lorastack made it (kept)"
        return
    if _hash_of(path) == entry.get("sha256") and not entry.get("edited"):
        path.unlink()
        report.removed.append(rel)
    else:
        report.kept[rel] = "no longer in the registry, but edited since lorastack wrote it (kept)"


def _hash_of(path: Path) -> str | None:
    try:
        if not path.is_file() or path.stat().st_size > MAX_MANIFEST_BYTES:
            return None
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def _read_manifest(folder: Path) -> dict[str, dict]:
    """What an earlier run made (``{}`` when the list is missing, unreadable or not lorastack's: then nothing there
    counts as lorastack's, and nothing is removed)."""
    file = folder / MANIFEST
    try:
        if not file.is_file() or file.stat().st_size > MAX_MANIFEST_BYTES:
            return {}
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return {}
    files = data.get("files") if isinstance(data, dict) else None
    if not isinstance(files, dict):
        return {}
    out = {}
    for rel, entry in files.items():
        # only plain relative paths inside the folder: the list is a file anyone can edit
        parts = Path(rel).parts if isinstance(rel, str) else ()
        if not parts or Path(rel).is_absolute() or ".." in parts or not isinstance(entry, dict):
            continue
        out[rel] = entry
    return out
