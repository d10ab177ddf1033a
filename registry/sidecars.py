"""The files other tools keep beside an adapter, and the adapter's own header, as metadata values.

For ``NAME.safetensors`` (any adapter suffix) these are read when present:

* ``NAME.json`` — A1111 / Forge user metadata: ``activation text``, ``preferred weight``, ``negative text``,
  ``notes``, ``description``, ``sd version``;
* ``NAME.metadata.json`` — ComfyUI-Lora-Manager: ``model_name``, ``base_model``, ``notes``, ``tags``,
  ``modelDescription``, ``usage_tips`` (its ``strength``) and the Civitai record it keeps under ``civitai``;
* ``NAME.civitai.info`` — Civitai Helper: the Civitai model-version record;
* previews ``NAME.preview.png|jpg|jpeg|webp`` and ``NAME.png``;
* the safetensors header: modelspec and kohya ``ss_*`` values. ``ss_tag_frequency`` (the training captions' tags)
  becomes ``training_tags``, shown, never taken as trigger words.

When several sidecars give a field, the first in that order wins (the A1111 file is the one users edit by hand).
Everything is untrusted: each file is read only if it is a regular file of at most :data:`MAX_SIDECAR_BYTES`, must be
UTF-8 JSON holding an object, and each value is checked by :func:`lorastack.registry.metadata.validate_value`; what
fails is reported in :attr:`Sidecars.problems` (file and reason) and skipped, never raised.
"""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Container
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import InvalidValueError
from .metadata import validate_value

MAX_SIDECAR_BYTES = 4 << 20
MAX_TRAINING_TAGS = 20
MAX_PREVIEW_URLS = 8
PREVIEW_SUFFIXES = (".preview.png", ".preview.jpg", ".preview.jpeg", ".preview.webp", ".png")

#: Lineage labels, found in a base-model name or label (first match wins: Pony and Illustrious are SDXL models)
_LINEAGES = (
    (re.compile(r"pony", re.I), "Pony"),
    (re.compile(r"illustrious", re.I), "Illustrious"),
    (re.compile(r"noob", re.I), "NoobAI"),
    (re.compile(r"flux[._ -]?1?[._ -]?(d\b|dev)", re.I), "FLUX.1-dev"),
    (re.compile(r"flux[._ -]?1?[._ -]?(s\b|schnell)", re.I), "FLUX.1-schnell"),
    (re.compile(r"\bflux", re.I), "FLUX.1"),
    (re.compile(r"sd[._ -]?3[._ ]5|stable-diffusion-3\.5", re.I), "SD 3.5"),
    (re.compile(r"sd[._ -]?3\b|stable-diffusion-3", re.I), "SD 3"),
    (re.compile(r"sdxl|stable-diffusion-xl", re.I), "SDXL"),
    (re.compile(r"sd[._ -]?v?2|stable-diffusion-v2", re.I), "SD 2.x"),
    (re.compile(r"sd[._ -]?v?1|stable-diffusion-v1|v1-5", re.I), "SD 1.x"),
)
#: Civitai AIR ecosystems by lineage
_ECOSYSTEMS = {"Pony": "sdxl", "Illustrious": "sdxl", "NoobAI": "sdxl", "SDXL": "sdxl", "SD 1.x": "sd1",
               "SD 2.x": "sd2", "FLUX.1-dev": "flux1", "FLUX.1-schnell": "flux1", "FLUX.1": "flux1", "SD 3": "sd3",
               "SD 3.5": "sd3"}  # fmt: skip


@dataclass(frozen=True)
class SidecarProblem:
    path: str
    reason: str


@dataclass
class Sidecars:
    """What :func:`read_sidecars` found beside one adapter file."""

    adapter: Path
    values: dict[str, Any] = field(default_factory=dict)  # source "sidecar"
    origins: dict[str, str] = field(default_factory=dict)  # field → the sidecar file it came from
    header: dict[str, Any] = field(default_factory=dict)  # source "header"
    previews: list[Path] = field(default_factory=list)
    preview_urls: list[str] = field(default_factory=list)  # from a Civitai record, for enrich to fetch
    read: list[Path] = field(default_factory=list)
    problems: list[SidecarProblem] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "adapter": str(self.adapter), "values": self.values, "origins": self.origins, "header": self.header,
            "previews": [str(p) for p in self.previews], "preview_urls": self.preview_urls,
            "read": [str(p) for p in self.read],
            "problems": [{"path": p.path, "reason": p.reason} for p in self.problems],
        }  # fmt: skip


def lineage_label(text: Any) -> str | None:
    """The lineage label a base-model name or label names (``ponyDiffusionV6XL`` → Pony), else ``None``."""
    if not isinstance(text, str) or len(text) > 1000:
        return None
    return next((label for pattern, label in _LINEAGES if pattern.search(text)), None)


def _stem(path: Path) -> str:
    return path.name[: -len(path.suffix)] if path.suffix else path.name


def _regular(path: Path) -> os.stat_result | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st if stat.S_ISREG(st.st_mode) else None


def _read_json_file(path: Path, problems: list[SidecarProblem]) -> dict | None:
    st = _regular(path)
    if st is None:
        if os.path.lexists(path):
            problems.append(SidecarProblem(str(path), "is not a regular file (or a broken link); skipped"))
        return None
    if st.st_size > MAX_SIDECAR_BYTES:
        problems.append(SidecarProblem(str(path), f"is {st.st_size:,} bytes, over {MAX_SIDECAR_BYTES:,}; skipped"))
        return None
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_SIDECAR_BYTES + 1)
    except OSError as e:
        problems.append(SidecarProblem(str(path), f"cannot be read ({e.strerror or e}); skipped"))
        return None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        problems.append(SidecarProblem(str(path), f"is not UTF-8 text (byte {e.start}); skipped"))
        return None
    try:
        data = json.loads(text)
    except RecursionError:
        problems.append(SidecarProblem(str(path), "nests JSON too deeply; skipped"))
        return None
    except ValueError as e:
        problems.append(SidecarProblem(str(path), f"is not JSON ({getattr(e, 'msg', e)}, line "
                                                  f"{getattr(e, 'lineno', '?')}); skipped"))  # fmt: skip
        return None
    if not isinstance(data, dict):
        problems.append(SidecarProblem(str(path), f"holds a JSON {type(data).__name__}, not an object; skipped"))
        return None
    return data


def _put(found: Sidecars, path: Path, key: str, name: str, value: Any) -> None:
    """Check one value and keep it unless an earlier sidecar gave the field; report a wrong one."""
    if value is None or value == "" or value == [] or name in found.values:
        return
    try:
        found.values[name] = validate_value(name, value)
        found.origins[name] = path.name
    except InvalidValueError as e:
        found.problems.append(SidecarProblem(str(path), f"{key!r}: {e}; skipped"))


def _weight(value: Any) -> Any:
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return value  # refused, with its text, by validate_value
    return None if value == 0 else value  # A1111 writes 0 for "not set"


def _words_of(value: Any) -> Any:
    from lorastack.adapters.metadata import split_words

    return split_words(value) if isinstance(value, str) else value


def civitai_version_values(data: dict) -> tuple[dict[str, Any], list[str]]:
    """Metadata values and preview image URLs from a Civitai model-version record (the API's ``by-hash`` answer,
    Civitai Helper's ``.civitai.info``). Values are not checked here; the caller checks each one."""
    model = data.get("model") if isinstance(data.get("model"), dict) else {}
    words = data.get("trainedWords")
    values: dict[str, Any] = {}
    if isinstance(words, list):
        values["trigger_groups"] = [_words_of(w) for w in words]
    base = data.get("baseModel")
    values["base_model"] = base
    values["lineage"] = lineage_label(base) or (base if isinstance(base, str) and base.strip() else None)
    values["title"] = model.get("name")
    description = data.get("description") or model.get("description")
    if isinstance(description, str):
        values["description"] = re.sub(r"<[^>]{0,2000}>", " ", description[:200_000]).strip()
    values["tags"] = model.get("tags") if isinstance(model.get("tags"), list) else None
    model_id, version_id = data.get("modelId"), data.get("id")
    ids = [i if isinstance(i, int) and not isinstance(i, bool) and i > 0 else None for i in (model_id, version_id)]
    values["civitai_model_id"], values["civitai_version_id"] = ids
    if None not in ids:
        ecosystem = _ECOSYSTEMS.get(lineage_label(base) or "", "other")
        values["air"] = f"urn:air:{ecosystem}:lora:civitai:{model_id}@{version_id}"
        values["url"] = f"https://civitai.com/models/{model_id}?modelVersionId={version_id}"
    urls = []
    for image in data.get("images") or [] if isinstance(data.get("images"), list) else []:
        url = image.get("url") if isinstance(image, dict) else None
        if isinstance(url, str) and re.match(r"^https?://\S{1,2000}$", url) and image.get("type", "image") == "image":
            urls.append(url)
    return {k: v for k, v in values.items() if v is not None}, urls[:MAX_PREVIEW_URLS]


def header_values(header: dict[str, str]) -> dict[str, Any]:
    """Metadata values a safetensors header holds (modelspec, kohya ``ss_*``); invalid ones are left out."""
    from lorastack.adapters.metadata import _tag_frequency_words, parse_metadata

    meta = parse_metadata({k: v for k, v in header.items() if isinstance(v, str)})
    raw = meta.raw
    base_label = raw.get("ss_base_model_version") or meta.architecture or meta.base_model
    candidates = {
        "trigger_groups": [meta.trigger_words] if meta.trigger_words else None,
        "title": meta.title,
        "description": meta.description,
        "license": meta.license,
        "tags": meta.tags or None,
        "base_model": meta.base_model,
        "lineage": lineage_label(meta.base_model) or lineage_label(base_label),
        "training_tags": _tag_frequency_words(raw.get("ss_tag_frequency"), limit=MAX_TRAINING_TAGS) or None,
    }
    out = {}
    for name, value in candidates.items():
        if value is None:
            continue
        try:
            out[name] = validate_value(name, value)
        except InvalidValueError:
            continue
    return out


def read_sidecars(
    adapter_path: str | Path, header: bool | dict = True, present: Container[str] | None = None
) -> Sidecars:
    """Everything the sidecars beside ``adapter_path`` (and, with ``header``, its safetensors header) say.

    ``header`` may be the header's ``__metadata__`` already read (a scan has it from its one read of the file).
    ``present``: the paths known to exist (a scan's walk found them), so that absent sidecars cost no ``stat``.
    Never raises for what the files hold: problems are listed, the rest is kept.
    """
    adapter = Path(adapter_path)
    found = Sidecars(adapter)
    folder, stem = adapter.parent, _stem(adapter)

    def _read_json(path: Path, problems: list[SidecarProblem]) -> dict | None:
        return None if present is not None and str(path) not in present else _read_json_file(path, problems)

    a1111 = folder / f"{stem}.json"
    if (data := _read_json(a1111, found.problems)) is not None:
        found.read.append(a1111)
        text = data.get("activation text")
        _put(found, a1111, "activation text", "trigger_groups", [_words_of(text)] if isinstance(text, str) else text)
        _put(found, a1111, "preferred weight", "weight", _weight(data.get("preferred weight")))
        _put(found, a1111, "negative text", "negative", data.get("negative text"))
        _put(found, a1111, "notes", "notes", data.get("notes"))
        _put(found, a1111, "description", "description", data.get("description"))
        sd_version = data.get("sd version")
        if sd_version not in ("Unknown", ""):
            _put(found, a1111, "sd version", "sd_version", sd_version)

    manager = folder / f"{stem}.metadata.json"
    if (data := _read_json(manager, found.problems)) is not None:
        found.read.append(manager)
        _put(found, manager, "model_name", "title", data.get("model_name"))
        _put(found, manager, "base_model", "base_model", data.get("base_model"))
        _put(found, manager, "base_model", "lineage", lineage_label(data.get("base_model")))
        _put(found, manager, "notes", "notes", data.get("notes"))
        _put(found, manager, "tags", "tags", data.get("tags"))
        _put(found, manager, "modelDescription", "description", data.get("modelDescription"))
        tips = data.get("usage_tips")
        if isinstance(tips, str) and tips.strip():
            try:
                tips = json.loads(tips) if len(tips) < 10_000 else None
            except (ValueError, RecursionError):
                found.problems.append(SidecarProblem(str(manager), "'usage_tips' is not JSON; skipped"))
                tips = None
        if isinstance(tips, dict):
            _put(found, manager, "usage_tips.strength", "weight", _weight(tips.get("strength")))
        if isinstance(data.get("civitai"), dict):
            _civitai(found, manager, data["civitai"], "civitai.")

    helper = folder / f"{stem}.civitai.info"
    if (data := _read_json(helper, found.problems)) is not None:
        found.read.append(helper)
        _civitai(found, helper, data, "")

    for suffix in PREVIEW_SUFFIXES:
        candidate = folder / f"{stem}{suffix}"
        if candidate == adapter or (present is not None and str(candidate) not in present):
            continue
        if _regular(candidate) is not None:
            found.previews.append(candidate)

    if isinstance(header, dict):
        found.header = header_values(header)
    elif header and adapter.suffix.lower() == ".safetensors":
        from lorastack.adapters.errors import AdapterError
        from lorastack.adapters.files import read_safetensors_header

        try:
            found.header = header_values(read_safetensors_header(adapter).metadata)
        except (AdapterError, OSError) as e:
            found.problems.append(SidecarProblem(str(adapter), f"its header cannot be read ({e}); skipped"))
    return found


def _civitai(found: Sidecars, path: Path, data: dict, prefix: str) -> None:
    values, urls = civitai_version_values(data)
    for name, value in values.items():
        _put(found, path, prefix + name, name, value)
    found.preview_urls += [u for u in urls if u not in found.preview_urls][
        : MAX_PREVIEW_URLS - len(found.preview_urls)
    ]


def apply_sidecars(registry, ref: str, found: Sidecars) -> dict[str, Any]:
    """Record what :func:`read_sidecars` found as the metadata of the version ``ref`` names.

    Sidecar values are stored as source ``sidecar``, header values as ``header``, previews as blobs; a value the user
    wrote is never replaced. An image that is not a usable preview is reported, not raised. Running it again changes
    nothing (the same values and images are already there).
    """
    return apply_sidecars_many(registry, [(ref, found)])[0]


def apply_sidecars_many(registry, items: list[tuple[str, Sidecars]]) -> list[dict[str, Any]]:
    """:func:`apply_sidecars` for several versions: their values in one transaction each for sidecar and header
    values (a scan's batch at once), previews one by one (each image is its own blob)."""
    from .metadata import set_metadata_many
    from .previews import PreviewItem, add_previews_many, read_preview_file

    try:
        reports = set_metadata_many(registry, [(ref, found.values) for ref, found in items], "sidecar")
        headers = set_metadata_many(registry, [(ref, found.header) for ref, found in items if found.header], "header")
    except InvalidValueError:
        if len(items) == 1:
            raise
        # one file's value is refused: record the others one by one, and that one's refusal as its problem
        out = []
        for ref, found in items:
            try:
                out += apply_sidecars_many(registry, [(ref, found)])
            except InvalidValueError as e:
                out.append({"ref": ref, "changed": [], "kept": {}, "previews": 0,
                            "problems": [{"path": ref, "reason": f"{e}; skipped"}]})  # fmt: skip
        return out
    by_ref = {h.ref: h for h in headers}
    problems = {ref: list(found.problems) for ref, found in items}
    images, added = [], dict.fromkeys(problems, 0)
    for ref, found in items:
        for path in found.previews:
            try:
                images.append((path, PreviewItem(ref, read_preview_file(path), "sidecar")))
            except InvalidValueError as e:
                problems[ref].append(SidecarProblem(str(path), f"{str(e).removeprefix(str(path) + ': ')}; skipped"))
    # the batch's previews: their blobs under one lock, their records in one transaction
    for (path, item), result in zip(images, add_previews_many(registry, [i for _, i in images]), strict=True):
        if isinstance(result, InvalidValueError):
            reason = str(result).removeprefix(f"preview of {item.ref}: ").removeprefix(str(path) + ": ")
            problems[item.ref].append(SidecarProblem(str(path), f"{reason}; skipped"))
        else:
            added[item.ref] += 1
    out = []
    for (ref, _), report in zip(items, reports, strict=True):
        header = by_ref.get(report.ref)
        header_changed = header.changed if header is not None else []
        header_kept = header.kept if header is not None else {}
        out.append({
            "ref": report.ref,
            "changed": report.changed + [n for n in header_changed if n not in report.changed],
            # a header value under a sidecar's is expected, not news; under the user's it is worth saying
            "kept": {**{k: v for k, v in header_kept.items() if v == "user"}, **report.kept},
            "previews": added[ref],
            "problems": [{"path": p.path, "reason": p.reason} for p in problems[ref]],
        })  # fmt: skip
    return out
