"""The built-in metadata source ``hub``: the model card of the Hub repo a version was pulled from.

Only versions with a Hub provenance (``lorastack pull``) are looked up; others are ``skipped``. The card is read at
the commit the version was pulled from (from the Hugging Face cache when it is there, so it works offline after a
pull): its YAML gives ``instance_prompt`` (the trigger words), ``base_model`` (and its lineage), ``license``, ``tags``
and the ``widget`` images (``output.url``, a file of the repo), which become previews.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from lorastack.plugins.api import LookupAnswer, LookupItem, PluginError, hookimpl, lineage_label

MAX_CARD_BYTES = 1 << 20
_REPO_FILE = re.compile(r"^hf://(?P<repo>[^/@]+/[^/@]+)@(?P<commit>[0-9a-f]{40})/(?P<path>[^\s]{1,500})$")


def _card(repo: str, commit: str | None) -> dict[str, Any]:
    from huggingface_hub import ModelCard, hf_hub_download

    path = Path(hf_hub_download(repo, "README.md", revision=commit or None))
    if path.stat().st_size > MAX_CARD_BYTES:
        raise PluginError(f"{repo}: its README.md is over {MAX_CARD_BYTES:,} bytes")
    data = ModelCard(path.read_text(encoding="utf-8", errors="replace")).data.to_dict()
    return data if isinstance(data, dict) else {}


def _values(repo: str, commit: str | None, data: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    values: dict[str, Any] = {"hub_repo": repo, "url": f"https://huggingface.co/{repo}"}
    prompt = data.get("instance_prompt")
    if isinstance(prompt, str) and prompt.strip():
        values["trigger_groups"] = [[w.strip() for w in prompt.split(",") if w.strip()]]
    base = data.get("base_model")
    base = base[0] if isinstance(base, list) and base else base
    if isinstance(base, str):
        values["base_model"] = base
        values["lineage"] = lineage_label(base)
    for key in ("license", "tags"):
        if data.get(key):
            values[key] = data[key]
    urls = []
    widget = data.get("widget")
    for entry in widget if isinstance(widget, list) else []:
        output = entry.get("output") if isinstance(entry, dict) else None
        url = output.get("url") if isinstance(output, dict) else None
        if not isinstance(url, str) or not url.strip() or len(url) > 500:
            continue
        if commit and "://" not in url and ".." not in url.split("/"):  # a file of the repo, at the pulled commit
            urls.append(f"hf://{repo}@{commit}/{url.lstrip('/')}")
    return {k: v for k, v in values.items() if v is not None}, urls


class HubCardSource:
    name = "hub"
    description = "The model card of the Hub repo a version was pulled from (instance prompt, base model, widget)."
    options = ()

    def lookup(self, items: Sequence[LookupItem], options: Mapping[str, Any]) -> Iterator[LookupAnswer]:
        for item in items:
            hub = item.provenance.get("hub") if isinstance(item.provenance, Mapping) else None
            repo = hub.get("repo") if isinstance(hub, Mapping) else None
            if not isinstance(repo, str):
                yield LookupAnswer(item.ref, "skipped")
                continue
            commit = hub.get("commit") if isinstance(hub.get("commit"), str) else None
            try:
                data = _card(repo, commit)
            except Exception as e:  # no card, offline and not cached, a broken card: this item only
                name = type(e).__name__
                status = "unknown" if "NotFound" in name else "failed"
                yield LookupAnswer(item.ref, status, error=f"{repo}: its model card cannot be read ({name})")
                continue
            values, urls = _values(repo, commit, data)
            yield LookupAnswer(item.ref, "found", values, urls)

    def fetch_preview(self, url: str, limit: int) -> bytes:
        match = _REPO_FILE.match(url)
        if match is None:
            raise PluginError(f"{url[:80]!r}: the hub source fetches only the files of a pulled repo")
        from huggingface_hub import hf_hub_download

        try:
            path = Path(hf_hub_download(match["repo"], match["path"], revision=match["commit"]))
        except Exception as e:
            raise PluginError(f"{match['repo']}: {match['path']} cannot be downloaded ({type(e).__name__})") from None
        if os.path.getsize(path) > limit:
            raise PluginError(f"{match['repo']}: {match['path']} is over {limit:,} bytes")
        return path.read_bytes()


@hookimpl
def register_metadata_sources(register):
    register(HubCardSource())
