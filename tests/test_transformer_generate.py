"""Generation on transformer bases: txt2img, img2img and inpainting through diffusers' Flux and SD3 pipelines,
comparison grids, recipes and bit-exact reproduction, and one adapter in three dialects giving one image."""

import numpy as np
import pytest
from PIL import Image
from transformer_helpers import peft_lora_file

from lorastack.adapters import read_adapter, write_adapter
from lorastack.core.base import load_base
from lorastack.core.errors import GenerationError
from lorastack.core.generate import GenerateOptions, Generator
from lorastack.core.recipe import read_recipe
from lorastack.core.reproduce import reproduce
from lorastack.core.runs import BaseChoice, generate_to_folder


@pytest.fixture(params=["flux", "sd3"])
def base(request, tiny_pipe_dir):
    return request.param, tiny_pipe_dir("flux" if request.param == "flux" else "sd3.5")


def _options(**kw):
    return GenerateOptions(**{"prompt": "a photo of a cat", "steps": 2, "width": 64, "height": 64, "seed": 3, **kw})


def _images(tmp_path):
    Image.new("RGB", (64, 64), (200, 30, 30)).save(tmp_path / "init.png")
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    mask.save(tmp_path / "mask.png")
    return tmp_path / "init.png", tmp_path / "mask.png"


def test_every_mode_runs_through_the_familys_pipelines_and_reproduces(base, tmp_path):
    family, folder = base
    pipe = load_base(folder)
    style = peft_lora_file(pipe, tmp_path / "style.safetensors", seed=1)
    generator = Generator(pipe)
    generator.stack.load("style", style)
    init, mask = _images(tmp_path)
    expected = {"flux": ("FluxPipeline", "FluxImg2ImgPipeline", "FluxInpaintPipeline"),
                "sd3": ("StableDiffusion3Pipeline", "StableDiffusion3Img2ImgPipeline",
                        "StableDiffusion3InpaintPipeline")}[family]  # fmt: skip
    inputs = ({}, {"init_image": init}, {"init_image": init, "mask": mask})
    for mode, extra, cls in zip(("txt2img", "img2img", "inpaint"), inputs, expected, strict=True):
        (plain,) = generator.generate(_options(**extra))
        (styled,) = generator.generate(_options(adapters={"style": 0.8}, **extra))
        assert type(generator._pipeline(mode)).__name__ == cls
        assert styled.recipe["mode"] == mode and styled.recipe["base"]["family"] == family
        assert styled.recipe["guidance"] == {"flux": 3.5, "sd3": 7.0}[family]  # the family's own default
        assert not np.array_equal(np.asarray(plain.image), np.asarray(styled.image))
    # an image with an adapter at block scales, saved with its recipe, reproduces bit for bit
    group = "single" if family == "flux" else "joint.1"
    run = generate_to_folder(
        _options(prompt=f"a photo of a cat <lora:style:0.7:te=0.5:{group}=0>"),
        tmp_path / "images",
        base=BaseChoice(str(folder), device="cpu"),
        loras=[f"style={style}"],
    )
    recipe = read_recipe(run.images[0].path)
    assert recipe["base"]["family"] == family
    assert recipe["adapters"][0]["scale"]["transformer"] == {"scale": 0.7, group: 0.0}
    again = reproduce(run.images[0].path)
    assert again.identical and again.max_difference == 0


def test_one_adapter_in_three_dialects_gives_one_image(tmp_path, tiny_flux_dir):
    pipe = load_base(tiny_flux_dir)
    peft_file = peft_lora_file(pipe, tmp_path / "style.safetensors", seed=2, text_encoder=True)
    adapter = read_adapter(peft_file)
    kohya = write_adapter(adapter, tmp_path / "style-kohya.safetensors", "kohya")
    bfl = write_adapter(adapter, tmp_path / "style-bfl.safetensors", "bfl")
    assert read_adapter(kohya).source_format == "kohya" and read_adapter(bfl).source_format == "bfl"
    generator = Generator(pipe)
    pixels = []
    for path in (peft_file, kohya, bfl):
        name = path.stem
        generator.stack.load(name, path)
        (result,) = generator.generate(_options(adapters={name: 0.8}))
        pixels.append(np.asarray(result.image))
    base = np.asarray(generator.generate(_options())[0].image)
    assert not np.array_equal(pixels[0], base)
    assert all(np.abs(p.astype(int) - pixels[0].astype(int)).max() <= 1 for p in pixels[1:])


def test_compare_grid_labels_block_scales_readably(tmp_path, tiny_flux_dir):
    pipe = load_base(tiny_flux_dir)
    style = peft_lora_file(pipe, tmp_path / "style.safetensors", seed=1)
    generator = Generator(pipe)
    generator.stack.load("style", style)
    result = generator.compare(_options(prompt="a cat <lora:style:0.8:single=0>"))
    assert result.recipe["compare"]["columns"] == ["base", "style"]
    assert result.image.size[0] > 2 * 64  # two cells and the label margin
    from lorastack.core.generate import _scale_text

    label = _scale_text(result.recipe["adapters"][0]["scale"], "flux")
    assert label == "transformer scale 0.8, single 0, te 0.8"


@pytest.mark.parametrize(
    "family, options, message",
    [
        ("flux", {"negative_prompt": "blurry"}, "FLUX.1 is guidance-distilled and takes no negative prompt"),
        ("flux", {"scheduler": "euler"}, "scheduler 'euler' does not fit a FLUX.1 base; choose one of flow_euler"),
        ("sd3", {"scheduler": "ddim"}, "scheduler 'ddim' does not fit a SD 3.x base"),
        ("flux", {"width": 72}, "width 72 is not a multiple of 16, which this base's latents need; try 64 or 80"),
        ("sd3", {"height": 40}, "height 40 is not a multiple of 16"),
    ],
)
def test_what_a_family_cannot_do_is_refused_in_one_line(tiny_pipe_dir, family, options, message):
    pipe = load_base(tiny_pipe_dir("flux" if family == "flux" else "sd3.5"))
    with pytest.raises(GenerationError, match=message):
        Generator(pipe).generate(_options(**options))


def test_unet_bases_refuse_flow_schedulers(tiny_sd1_dir):
    with pytest.raises(GenerationError, match="'flow_euler' does not fit a SD 1.x base; choose one of ddim"):
        Generator(load_base(tiny_sd1_dir)).generate(_options(scheduler="flow_euler"))
