"""Model cards name each family the way the Hub's filters know it."""

import pytest
import yaml

from lorastack.registry.cards import model_card
from lorastack.registry.records import Version


def _version(family, base_model):
    return Version(name="me/style", number=1, created_at=0.0, format="diffusers", family=family, kind="lora", rank=4,
                   alpha=4.0, trigger_words=["aawxbc"], base_model=base_model, description=None, provenance={},
                   metadata={})  # fmt: skip


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
    if family == "flux":  # FLUX.1 dev's license is its maker's own; the family cannot tell dev from schnell
        assert "license" not in data
