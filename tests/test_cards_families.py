"""Model cards name each family the way the Hub's filters know it."""

import pytest
import yaml

from lorastack.registry.cards import model_card
from lorastack.registry.records import Version


def _version(family, base_model, metadata=None):
    return Version(name="me/style", number=1, created_at=0.0, format="diffusers", family=family, kind="lora", rank=4,
                   alpha=4.0, trigger_words=["aawxbc"], base_model=base_model, description=None, provenance={},
                   metadata=metadata or {})  # fmt: skip


@pytest.mark.parametrize(
    "family, base, tags, absent, words",
    [
        ("flux", "black-forest-labs/FLUX.1-dev", {"flux", "flux-diffusers"}, "stable-diffusion", "FLUX.1"),
        ("sd3", "stabilityai/stable-diffusion-3.5-medium", {"sd3", "sd3-diffusers"}, "stable-diffusion-xl", "3.x"),
        ("sdxl", "stabilityai/stable-diffusion-xl-base-1.0", {"stable-diffusion-xl"}, "flux", "SDXL"),
    ],
)
def test_family_tags_and_base_model(family, base, tags, absent, words):
    card = model_card(_version(family, base), "me/style", ["pytorch_lora_weights.safetensors"])
    data = yaml.safe_load(card.split("---")[1])
    assert data["base_model"] == base and tags <= set(data["tags"]) and absent not in data["tags"]
    assert words in card and "pipe.load_lora_weights(" in card
    if family == "flux":  # the family alone cannot tell dev (non-commercial) from schnell (Apache 2.0)
        assert "license" not in data


@pytest.mark.parametrize(
    "architecture, license, name",
    [
        ("flux-1-dev/lora", "other", "flux-1-dev-non-commercial-license"),
        ("flux-1-schnell/lora", "apache-2.0", None),
        ("stable-diffusion-v3-medium/lora", "other", "stabilityai-ai-community"),
    ],
)
def test_the_bases_license_follows_the_files_architecture(architecture, license, name):
    family = "sd3" if "v3" in architecture else "flux"
    version = _version(family, None, {"modelspec.architecture": architecture})
    data = yaml.safe_load(model_card(version, "me/style", ["pytorch_lora_weights.safetensors"]).split("---")[1])
    assert data["license"] == license and data.get("license_name") == name
    given = _version(family, None, {"modelspec.architecture": architecture, "modelspec.license": "mit"})
    assert "license: mit" in model_card(given, "me/style", ["x.safetensors"])  # the file's own word wins
