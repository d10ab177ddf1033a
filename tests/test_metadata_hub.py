"""The built-in `hub` metadata source: a pulled version's model card (instance prompt, base model, widget images),
through the real huggingface_hub client against the Hub-API server on 127.0.0.1."""

from __future__ import annotations

import io

from PIL import Image

from lorastack.core.enrich import enrich
from lorastack.registry import Registry
from lorastack.registry.hub import pull, push
from lorastack.registry.metadata import get_metadata
from lorastack.registry.previews import list_previews
from lorastack.testing.registry import small_adapter

CARD = """---
base_model: John6666/pony-diffusion-v6-xl
instance_prompt: qwx dog, sitting
license: openrail++
tags:
- lora
widget:
- text: qwx dog on a sofa
  output:
    url: images/sofa.png
- text: not a repo file
  output:
    url: ../../etc/passwd
---
# A card
"""


def test_a_pulled_version_gets_its_cards_values_and_widget_images(tmp_path, hub_server, plugin_manager):
    local = Registry(tmp_path / "local")
    local.import_file(small_adapter(tmp_path / "dog.safetensors"), "me/dog")
    push(local, "me/dog", "alice/dog")
    out = io.BytesIO()
    Image.new("RGB", (64, 64), (9, 99, 199)).save(out, "PNG")
    hub_server.commit_outside("alice/dog", "images/sofa.png", out.getvalue())
    hub_server.commit_outside("alice/dog", "README.md", CARD.encode())
    other = Registry(tmp_path / "other")
    imported = pull(other, "alice/dog").versions[0][0].version
    local_only = other.import_file(small_adapter(tmp_path / "cat.safetensors", seed=5), "me/cat").version

    summary = enrich(other, sources=["hub"]).sources[0]
    assert (summary.found, summary.skipped, summary.failed) == (1, 1, 0), summary.errors
    values = get_metadata(other, imported.ref)
    assert values["trigger_groups"].value == [["qwx dog", "sitting"]] and values["trigger_groups"].source == "hub"
    assert (values["lineage"].value, values["license"].value) == ("Pony", "openrail++")
    assert values["hub_repo"].value == "alice/dog"
    (preview,) = list_previews(other, imported.ref)  # the traversal URL is never fetched
    assert preview.source == "hub" and preview.url.endswith("/images/sofa.png") and preview.width == 64
    assert "hub_repo" not in get_metadata(other, local_only.ref)
