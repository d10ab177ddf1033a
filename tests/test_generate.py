"""Generation with the stack: seeds, modes, schedulers, comparison grids, recipes in PNGs, reproduction."""

import json
import shutil

import numpy as np
import pytest
from adapter_cases import make_case
from PIL import Image

from lorastack.adapters import tensor_sha256
from lorastack.core.base import load_base
from lorastack.core.errors import GenerationError, ReproduceError, UnknownAdapterError
from lorastack.core.generate import GenerateOptions, Generator
from lorastack.core.recipe import read_recipe, save_png
from lorastack.core.reproduce import reproduce
from lorastack.testing.models import load_pipeline
from lorastack.testing.single_file import save_single_file


def px(image):
    return np.asarray(image.convert("RGB"), dtype=np.int16)


@pytest.fixture
def generator(tiny_sd1_dir, tmp_path):
    pipe = load_base(tiny_sd1_dir)
    gen = Generator(pipe)
    reference = load_pipeline(tiny_sd1_dir)
    style = make_case(reference, "peft", tmp_path / "style.safetensors", seed=1)
    subject = make_case(reference, "kohya", tmp_path / "subject.safetensors", seed=2)
    gen.stack.load("style", style)
    gen.stack.load("subject", subject)
    gen.stack.get("subject").adapter.metadata.trigger_words = ["aawxbc figurine"]
    return gen


def options(**kw):
    return GenerateOptions(**{"prompt": "a photo of a red cat", "steps": 3, "seed": 5, **kw})


@pytest.mark.slow
def test_batch_images_reproduce_one_by_one(generator):
    two = generator.generate(options(num_images=2, adapters={"style": 0.8}))
    one = generator.generate(options(seed=6, adapters={"style": 0.8}))
    assert [r.recipe["seed"] for r in two] == [5, 6]
    assert np.array_equal(px(two[1].image), px(one[0].image))
    assert not np.array_equal(px(two[0].image), px(two[1].image))


def test_recipe_records_everything(generator, tmp_path):
    (result,) = generator.generate(options(prompt="a cat <lora:subject:0.5>", adapters={"style": 0.8}, trigger=True))
    recipe = result.recipe
    assert recipe["prompt"] == "a cat, aawxbc figurine" and recipe["seed"] == 5 and recipe["steps"] == 3
    assert (recipe["width"], recipe["height"], recipe["mode"]) == (64, 64, "txt2img")
    assert {a["name"]: a["scale"] for a in recipe["adapters"]} == {"style": 0.8, "subject": 0.5}
    style = next(a for a in recipe["adapters"] if a["name"] == "style")
    assert style["tensor_sha256"] == tensor_sha256(tmp_path / "style.safetensors")
    assert recipe["base"]["kind"] == "folder" and recipe["base"]["digest"].startswith("sha256:")
    path = save_png(result.image, tmp_path / "x.png", recipe)
    assert read_recipe(path) == json.loads(json.dumps(recipe))
    infotext = Image.open(path).info["parameters"]
    assert "Seed: 5" in infotext and "Lora hashes:" in infotext and style["tensor_sha256"][:12] in infotext
    assert generator.stack.active == {}  # the stack is back to what it was


def test_adapters_and_schedulers_change_the_image(generator):
    plain = px(generator.generate(options())[0].image)
    styled = generator.generate(options(adapters={"style": 1.0}))[0]
    assert not np.array_equal(plain, px(styled.image))
    euler = generator.generate(options(scheduler="euler_a"))[0]
    assert euler.recipe["scheduler"] == "euler_a" and not np.array_equal(plain, px(euler.image))
    assert generator.generate(options())[0].recipe["scheduler"] == "default:DDIMScheduler"
    assert np.array_equal(plain, px(generator.generate(options())[0].image))  # the scheduler swap was undone


def test_img2img_and_inpainting(generator, tmp_path):
    init = tmp_path / "init.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(init)
    mask = tmp_path / "mask.png"
    mask_array = np.zeros((64, 64), dtype=np.uint8)
    mask_array[16:48, 16:48] = 255
    Image.fromarray(mask_array).save(mask)
    i2i = generator.generate(options(init_image=init, strength=0.6, adapters={"style": 0.5}))[0]
    inpaint = generator.generate(options(init_image=init, mask=mask, strength=0.9))[0]
    assert i2i.recipe["mode"] == "img2img" and i2i.recipe["strength"] == 0.6
    assert inpaint.recipe["mode"] == "inpaint" and inpaint.recipe["mask"]["sha256"]
    assert i2i.image.size == inpaint.image.size == (64, 64)
    again = generator.generate(options(init_image=init, strength=0.6, adapters={"style": 0.5}))[0]
    assert np.array_equal(px(i2i.image), px(again.image))


@pytest.mark.slow
def test_compare_grid(generator):
    result = generator.compare(options(num_images=2, adapters={"style": 0.8, "subject": 0.5}))
    assert result.recipe["compare"]["columns"] == ["base", "style", "subject", "all"]
    # the tiles, enlarged 4x (nearest), fill the bottom right; labels and the caption sit above and to the left
    left, top = result.image.width - 4 * 256, result.image.height - 2 * 256
    assert left > 0 and top > 0

    def shown(image):
        return px(image.resize((256, 256), Image.NEAREST))

    base_cell = result.image.crop((left, top, left + 256, top + 256))
    assert np.array_equal(px(base_cell), shown(generator.generate(options())[0].image))
    all_cell = result.image.crop((left + 3 * 256, top, left + 4 * 256, top + 256))
    both = generator.generate(options(adapters={"style": 0.8, "subject": 0.5}))[0].image
    assert np.array_equal(px(all_cell), shown(both))


@pytest.mark.parametrize(
    "kw, error, message",
    [
        ({"width": 65}, GenerationError, "width must be a positive multiple of 8"),
        ({"steps": 0}, GenerationError, "steps must be at least 1"),
        ({"mask": "m.png"}, GenerationError, "a mask needs an init image"),
        ({"init_image": "missing.png"}, GenerationError, "init image missing.png: no such file"),
        ({"scheduler": "fastest"}, GenerationError, "unknown scheduler 'fastest'; choose one of ddim"),
        ({"prompt": "x <lora:ghost:1>"}, UnknownAdapterError, "'ghost' not loaded; loaded adapters: style, subject"),
        ({"strength": 1.5}, GenerationError, r"strength must be in \(0, 1\]"),
    ],
)
def test_bad_options(generator, kw, error, message):
    with pytest.raises(error, match=message):
        generator.generate(options(**kw))


def test_mask_of_the_wrong_size(generator, tmp_path):
    Image.new("RGB", (64, 64)).save(tmp_path / "init.png")
    Image.new("L", (32, 64)).save(tmp_path / "mask.png")
    with pytest.raises(GenerationError, match="mask .* is 32x64 but the init image is 64x64"):
        generator.generate(options(init_image=tmp_path / "init.png", mask=tmp_path / "mask.png"))


@pytest.mark.slow
def test_reproduce_is_bit_identical(generator, tmp_path):
    (result,) = generator.generate(options(prompt="a cat <lora:style:0.7>", adapters={"subject": 0.4}))
    path = save_png(result.image, tmp_path / "image.png", result.recipe)
    again = reproduce(path)
    assert again.identical and again.max_difference == 0
    grid = generator.compare(options(adapters={"style": 0.8, "subject": 0.5}, trigger=True))
    grid_path = save_png(grid.image, tmp_path / "grid.png", grid.recipe)
    assert reproduce(grid_path).identical


def test_reproduce_single_file_and_sdxl(tiny_sdxl_dir, tmp_path):
    path = save_single_file(load_pipeline(tiny_sdxl_dir), tmp_path / "xl.safetensors")
    gen = Generator(load_base(path, config=tiny_sdxl_dir))
    (result,) = gen.generate(options(guidance=5.0))
    assert result.recipe["base"]["kind"] == "single_file"
    assert result.recipe["base"]["config"] == str(tiny_sdxl_dir.resolve())
    image = save_png(result.image, tmp_path / "xl.png", result.recipe)
    assert reproduce(image).identical
    # the same weights as a diffusers folder: another base, so no digest check, and the same pixels
    assert reproduce(image, base=str(tiny_sdxl_dir)).identical


def test_reproduce_refuses_changed_inputs(generator, tiny_sd1_dir, tmp_path):
    folder = shutil.copytree(tiny_sd1_dir, tmp_path / "base")
    gen = Generator(load_base(folder))
    adapter = shutil.copy(tmp_path / "style.safetensors", tmp_path / "mine.safetensors")
    gen.stack.load("mine", adapter)
    (result,) = gen.generate(options(adapters={"mine": 1.0}))
    image = save_png(result.image, tmp_path / "image.png", result.recipe)
    assert reproduce(image).identical
    shutil.copy(tmp_path / "subject.safetensors", adapter)
    with pytest.raises(ReproduceError, match="adapter 'mine' .* has changed"):
        reproduce(image)
    shutil.copy(tmp_path / "style.safetensors", adapter)
    (folder / "scheduler" / "scheduler_config.json").write_text(
        (folder / "scheduler" / "scheduler_config.json").read_text().replace("0.012", "0.0121")
    )
    with pytest.raises(ReproduceError, match="the base .* has changed"):
        reproduce(image)
    with pytest.raises(ReproduceError, match="no lorastack recipe"):
        Image.new("RGB", (8, 8)).save(tmp_path / "plain.png")
        reproduce(tmp_path / "plain.png")


def test_grids_enlarge_small_tiles_and_wrap_long_labels():
    """64 px tiles are shown at 256 px (nearest: each pixel a 4x4 square); a long label is wrapped, never cut."""
    from PIL import Image, ImageDraw, ImageFont

    from lorastack.core.grids import labelled_grid, wrap

    tile = Image.new("RGB", (64, 64), "red")
    tile.putpixel((0, 0), (0, 0, 255))
    long = "me/a-very-long-adapter-name:v12 @ 0.8"
    grid = labelled_grid([[tile, tile]], ["base", long], ["seed 7"], "a red circle | steps 20, guidance 1.5")
    assert grid.width > 2 * 256
    font = ImageFont.load_default(size=14)
    lines = wrap(long, 256 - 8, ImageDraw.Draw(grid), font)
    assert "".join(lines).replace(" ", "") == long.replace(" ", "")  # every character is kept
    # the enlarged tile sits bottom-right: its first pixel became a 4x4 blue square
    left = grid.width - 2 * 256
    top = grid.height - 256
    assert grid.getpixel((left + 3, top + 3)) == (0, 0, 255) and grid.getpixel((left + 4, top + 4)) == (255, 0, 0)


def test_compare_grid_is_enlarged_with_a_row_per_seed(tiny_sd1_pipe, tmp_path):
    """Two seeds of 64 px tiles: two enlarged rows, under the labels; a column's label shows its scale."""
    from lorastack.core.generate import _scale_text

    assert _scale_text(0.8) == "0.8" and _scale_text({"unet": 1.0, "text_encoder": 0.5}) == "unet 1, text_encoder 0.5"
    gen = Generator(tiny_sd1_pipe)
    gen.stack.load("style", make_case(tiny_sd1_pipe, "peft", tmp_path / "s.safetensors", seed=1))
    grid = gen.compare(GenerateOptions(prompt="a cat", steps=1, seed=5, num_images=2, adapters={"style": 0.8}))
    assert grid.image.width > 2 * 256 and grid.image.height > 2 * 256
    assert grid.recipe["compare"]["columns"] == ["base", "style"]


@pytest.mark.parametrize("progress", [True, False])
def test_progress_bar_only_when_asked(tiny_sd1_pipe, capsys, progress):
    """diffusers' own bar, per image, when the caller asks (the CLI: stderr is a terminal); else nothing at all."""
    Generator(tiny_sd1_pipe, progress=progress).generate(GenerateOptions(prompt="a cat", steps=2, seed=1))
    err = capsys.readouterr().err
    assert ("image 1/1" in err) is progress and ("/2 [" in err) is progress  # the bar counts the 2 steps
