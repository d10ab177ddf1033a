"""Recipes of images made from a FLUX.1 single file with its parts as files: the parts are recorded, reproduce loads
them again bit for bit, and a changed part is caught by the digest."""

import json
import shutil

import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from lorastack.core.errors import RecipeError, ReproduceError
from lorastack.core.generate import GenerateOptions
from lorastack.core.recipe import read_recipe
from lorastack.core.reproduce import reproduce
from lorastack.core.runs import BaseChoice, generate_to_folder
from lorastack.testing.models import build_tiny_pipeline, load_pipeline
from lorastack.testing.transformer_files import save_transformer_files


@pytest.fixture
def image(tiny_flux_dir, tmp_path, lorastack_home):
    files = save_transformer_files(load_pipeline(tiny_flux_dir), tmp_path / "files")
    parts = {slot: str(p) for slot, p in files.items() if slot != "transformer"}
    choice = BaseChoice(str(files["transformer"]), device="cpu", config=str(tiny_flux_dir), components=parts)
    options = GenerateOptions("a photo of a cat", steps=2, width=64, height=64, seed=5)
    run = generate_to_folder(options, tmp_path / "out", base=choice)
    return run.images[0].path, files


def test_the_parts_are_recorded_and_reproduce_bit_for_bit(image):
    path, files = image
    recorded = read_recipe(path)["base"]
    assert recorded["kind"] == "single_file" and recorded["family"] == "flux"
    assert {slot: c["path"] for slot, c in recorded["components"].items()} == {
        slot: str(p.resolve()) for slot, p in files.items() if slot != "transformer"
    }
    again = reproduce(path)
    assert again.identical and again.max_difference == 0


def test_a_changed_part_is_caught(image):
    path, files = image
    other = save_transformer_files(build_tiny_pipeline("flux", seed=1), files["vae"].parent / "other")
    assert other["vae"].read_bytes() != files["vae"].read_bytes()
    shutil.copyfile(other["vae"], files["vae"])  # same size and layout, other weights
    with pytest.raises(ReproduceError, match="has changed since"):
        reproduce(path)


def test_a_recipe_naming_an_unknown_part_is_refused(image, tmp_path):
    path, _ = image
    with Image.open(path) as im:
        recipe = json.loads(im.info["lorastack"])
        recipe["base"]["components"]["unet"] = {"path": "/x", "size": 1}
        info = PngInfo()
        info.add_text("lorastack", json.dumps(recipe))
        im.save(tmp_path / "edited.png", pnginfo=info)
    with pytest.raises(RecipeError, match=r"base\.components' must be an object of text_encoder, text_encoder_2"):
        read_recipe(tmp_path / "edited.png")
