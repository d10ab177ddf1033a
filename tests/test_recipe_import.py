"""``lorastack recipe import``: recipes from lorastack's own PNGs, A1111 infotext and ComfyUI workflows, adapters
resolved in the registry by hash (or by name where the image records none), the missing ones named."""

from __future__ import annotations

import json

import pytest
from cli_helpers import run_cli
from generate_helpers import one_line_error
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from lorastack.adapters.files import file_and_tensor_sha256
from lorastack.core.errors import RecipeError
from lorastack.core.recipe_import import import_recipe
from lorastack.registry.by_hash import versions_by_hash
from lorastack.testing.registry import small_adapter


def png(path, **chunks):
    info = PngInfo()
    for key, value in chunks.items():
        info.add_text(key, value)
    Image.new("RGB", (8, 8), "white").save(path, pnginfo=info)
    return path


@pytest.fixture
def library(registry, tmp_path):
    style = small_adapter(tmp_path / "style.safetensors", seed=1)
    detail = small_adapter(tmp_path / "add_detail.safetensors", seed=2)
    registry.import_file(style, "me/style", "v1")
    registry.import_file(detail, "add_detail")
    return {name: file_and_tensor_sha256(path) for name, path in (("style", style), ("detail", detail))}


def a1111_text(style_hash: str, detail_hash: str) -> str:
    return (
        "a castle <lora:stylev1:0.7>, <lora:add_detail:0.4:0.9>\n"
        "Negative prompt: blurry\n"
        "Steps: 24, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 6.5, Seed: 99, Size: 512x768, "
        f'Model hash: 67ab2fd8ec, Model: dreamshaper_8, Lora hashes: "stylev1: {style_hash}, add_detail: '
        f'{detail_hash}, gone: 0123456789ab", Version: v1.9.4'
    )


def test_by_hash_matches_full_autov3_and_autov2_prefixes(library, registry):
    file_hash, tensor_hash = library["style"]
    for prefix in (file_hash, tensor_hash, tensor_hash[:12], file_hash[:10]):
        assert [v.ref for v in versions_by_hash(registry, prefix)] == ["me/style@1"], prefix
    assert versions_by_hash(registry, "ffffffff") == []
    with pytest.raises(Exception, match="not a hash"):
        versions_by_hash(registry, "xyz")


def test_a1111_image_resolved_by_hash(library, registry, tmp_path):
    text = a1111_text(library["style"][1][:12], library["detail"][0][:10])  # AutoV3 and AutoV2
    imported = import_recipe(png(tmp_path / "a.png", parameters=text), registry)
    assert imported.made_by == "a1111" and imported.prompt == "a castle"
    assert (imported.seed, imported.steps, imported.guidance, imported.width, imported.height) == (
        99,
        24,
        6.5,
        512,
        768,
    )
    assert imported.scheduler == "dpm++2m_karras" and imported.negative_prompt == "blurry"
    assert imported.model_hash == "67ab2fd8ec" and imported.model == "dreamshaper_8"
    by_name = {a.name: a for a in imported.adapters}
    assert by_name["stylev1"].ref == "me/style@1" and by_name["stylev1"].scale == 0.7
    assert by_name["add_detail"].ref == "add_detail@1" and by_name["add_detail"].scale["unet"] == 0.9
    assert by_name["add_detail"].scale["text_encoder"] == 0.4
    assert [a.name for a in imported.missing] == ["gone"] and imported.missing[0].hash == "0123456789ab"


@pytest.mark.parametrize(("fmt", "order"), [("JPEG", "utf-16-be"), ("WEBP", "utf-16-be"), ("JPEG", "utf-16-le")])
def test_a1111_jpeg_and_webp_infotext_in_exif(library, registry, tmp_path, fmt, order):
    """A1111 and Forge write a JPEG's or WebP's infotext into EXIF UserComment (piexif's UNICODE code)."""
    from PIL import Image

    text = a1111_text(library["style"][1][:12], library["detail"][0][:10])
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0x9286] = b"UNICODE\x00" + text.encode(order)
    path = tmp_path / f"a.{fmt.lower()}"
    Image.new("RGB", (16, 16), "white").save(path, fmt, exif=exif)
    imported = import_recipe(path, registry)
    assert imported.made_by == "a1111" and imported.prompt == "a castle" and imported.seed == 99
    assert {a.name: a.ref for a in imported.adapters}["stylev1"] == "me/style@1"


def test_cli_prints_writes_and_names_missing(library, tmp_path):
    image = png(tmp_path / "a.png", parameters=a1111_text(library["style"][1][:12], "deadbeefdeadbeef"))
    code, out, err = run_cli("recipe", "import", image, "--json", "-o", tmp_path / "r.json")
    assert code == 0, err
    data = json.loads(out)
    assert data == json.loads((tmp_path / "r.json").read_text())
    assert data["missing"] == ["add_detail", "gone"] and data["base"]["model_hash"] == "67ab2fd8ec"
    code, out, err = run_cli("recipe", "import", image)
    assert code == 0 and "MISSING: look for hash deadbeefdeadbeef" in out and "found: me/style@1 (by hash)" in out
    code, _, err = run_cli("recipe", "import", image, "-o", tmp_path / "r.json")
    one_line_error(code, err, "r.json")  # exists: --force to overwrite


def comfy_api(lora_file: str) -> dict:
    return {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd15.safetensors"}},
        "10": {"class_type": "LoraLoader", "inputs": {"lora_name": lora_file, "strength_model": 0.8,
                                                       "strength_clip": 0.8, "model": ["4", 0], "clip": ["4", 1]}},
        "11": {"class_type": "LoraLoaderModelOnly", "inputs": {"lora_name": "missing_one.safetensors",
                                                                "strength_model": 0.5, "model": ["10", 0]}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a lighthouse", "clip": ["10", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "fog", "clip": ["10", 1]}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 640, "height": 512, "batch_size": 1}},
        "3": {"class_type": "KSampler", "inputs": {"seed": 7, "steps": 20, "cfg": 8, "sampler_name": "euler_ancestral",
              "scheduler": "normal", "denoise": 1, "model": ["11", 0], "positive": ["6", 0], "negative": ["7", 0],
              "latent_image": ["5", 0]}},
    }  # fmt: skip


def test_comfyui_prompt_graph(library, registry, tmp_path):
    image = png(tmp_path / "c.png", prompt=json.dumps(comfy_api("loras\\add_detail.safetensors")))
    imported = import_recipe(image, registry)
    assert imported.made_by == "comfyui" and (imported.prompt, imported.negative_prompt) == ("a lighthouse", "fog")
    assert (imported.seed, imported.steps, imported.guidance, imported.scheduler) == (7, 20, 8.0, "euler_a")
    assert (imported.width, imported.height, imported.model) == (640, 512, "sd15.safetensors")
    assert [(a.name, a.scale, a.ref) for a in imported.adapters] == [
        ("add_detail", 0.8, "add_detail@1"), ("missing_one", 0.5, None)
    ]  # fmt: skip


def test_comfyui_custom_multi_lora_nodes(library, registry, tmp_path):
    """rgthree's Power Lora Loader and ComfyUI-Lora-Manager's loader: the LoRAs switched on, in their order."""
    graph = comfy_api("add_detail.safetensors")
    graph["12"] = {"class_type": "Power Lora Loader (rgthree)", "inputs": {
        "model": ["11", 0], "clip": ["10", 1], "PowerLoraLoaderHeaderWidget": {"type": "PowerLoraLoaderHeaderWidget"},
        "lora_2": {"on": True, "lora": "sub\\add_detail.safetensors", "strength": 0.7, "strengthTwo": None},
        "lora_1": {"on": False, "lora": "off.safetensors", "strength": 1},
        "lora_10": {"on": True, "lora": "last.safetensors", "strength": 0.2, "strengthTwo": 0.4},
        "➕ Add Lora": ""}}  # fmt: skip
    graph["13"] = {"class_type": "Lora Loader (LoraManager)", "inputs": {
        "model": ["12", 0], "text": "<lora:mgr:0.6>", "loras": {"__value__": [
            {"name": "mgr", "strength": 0.6, "clipStrength": 0.6, "active": True},
            {"name": "inactive", "strength": 1, "active": False}]}}}  # fmt: skip
    graph["3"]["inputs"]["model"] = ["13", 0]
    imported = import_recipe(png(tmp_path / "c.png", prompt=json.dumps(graph)), registry)
    assert [(a.name, a.scale) for a in imported.adapters] == [
        ("add_detail", 0.8), ("missing_one", 0.5), ("add_detail", 0.7),
        ("last", {"unet": 0.2, "text_encoder": 0.4}), ("mgr", 0.6),
    ]  # fmt: skip
    assert imported.adapters[2].ref == "add_detail@1"  # found by its file name in the registry
    graph["12"]["inputs"]["lora_2"]["strength"] = "lots"
    with pytest.raises(RecipeError, match="Power Lora Loader .rgthree. strength_model"):
        import_recipe(png(tmp_path / "d.png", prompt=json.dumps(graph)), registry)


def test_comfyui_workflow_graph(library, registry, tmp_path):
    workflow = {
        "nodes": [
            {"id": 1, "type": "CheckpointLoaderSimple", "widgets_values": ["base.safetensors"]},
            {"id": 2, "type": "LoraLoader", "widgets_values": ["add_detail.safetensors", 0.6, 1.0],
             "inputs": [{"name": "model", "link": 1}]},
            {"id": 3, "type": "CLIPTextEncode", "widgets_values": ["a bridge"]},
            {"id": 4, "type": "KSampler", "widgets_values": [5, "fixed", 12, 7, "dpmpp_2m", "karras", 1],
             "inputs": [{"name": "model", "link": 2}, {"name": "positive", "link": 3}]},
        ],
        "links": [[1, 1, 0, 2, 0, "MODEL"], [2, 2, 0, 4, 0, "MODEL"], [3, 3, 0, 4, 1, "CONDITIONING"]],
    }  # fmt: skip
    imported = import_recipe(png(tmp_path / "w.png", workflow=json.dumps(workflow)), registry)
    assert (imported.prompt, imported.seed, imported.steps, imported.scheduler) == (
        "a bridge",
        5,
        12,
        "dpm++2m_karras",
    )
    assert [(a.ref, a.scale) for a in imported.adapters] == [("add_detail@1", {"unet": 0.6, "text_encoder": 1.0})]


def test_cyclic_and_hostile_graphs_end_in_one_line(registry, tmp_path):
    cyclic = {
        "1": {"class_type": "LoraLoader", "inputs": {"lora_name": "a.safetensors", "model": ["2", 0]}},
        "2": {"class_type": "LoraLoader", "inputs": {"lora_name": "b.safetensors", "model": ["1", 0]}},
        "3": {"class_type": "KSampler", "inputs": {"seed": 1, "model": ["1", 0]}},
    }
    imported = import_recipe(png(tmp_path / "cyc.png", prompt=json.dumps(cyclic)), registry)
    assert sorted(a.name for a in imported.adapters) == ["a", "b"]  # each once: the cycle ended the walk
    bad_cases = {
        "seed.png": {"3": {"class_type": "KSampler", "inputs": {"seed": "x"}}},
        "scale.png": {"1": {"class_type": "LoraLoaderModelOnly", "inputs": {"lora_name": "a", "strength_model": 1e9}},
                      "3": {"class_type": "KSampler", "inputs": {"model": ["1", 0]}}},
        "nosampler.png": {"1": {"class_type": "SaveImage", "inputs": {}}},
    }  # fmt: skip
    for name, graph in bad_cases.items():
        code, _, err = run_cli("recipe", "import", png(tmp_path / name, prompt=json.dumps(graph)))
        one_line_error(code, err, name)
    deep = "[" * 100_000 + "]" * 100_000
    code, _, err = run_cli("recipe", "import", png(tmp_path / "deep.png", prompt=deep))
    one_line_error(code, err, "not valid JSON")
    code, _, err = run_cli("recipe", "import", png(tmp_path / "none.png", Title="x"))
    one_line_error(code, err, "has no lorastack recipe, nor an A1111")
    (tmp_path / "junk.png").write_bytes(b"not a png")
    code, _, err = run_cli("recipe", "import", tmp_path / "junk.png")
    one_line_error(code, err, "not a readable image")
    with pytest.raises(RecipeError, match="at most"):
        import_recipe(png(tmp_path / "big.png", parameters="x" * 400_000), registry)


def test_lorastack_image_round_trips_through_its_infotext(registry, tiny_sd1_dir, tmp_path):
    """A lorastack PNG: its own recipe, and its A1111 infotext alone (another tool keeps only that) resolves too."""
    from adapter_cases import make_case

    from lorastack.testing.models import load_pipeline

    style = make_case(load_pipeline(tiny_sd1_dir), "kohya", tmp_path / "style.safetensors", seed=1)
    registry.import_file(style, "me/style", "v1")
    tensor_hash = file_and_tensor_sha256(style)[1]
    code, out, err = run_cli("generate", "a cat", "--base", tiny_sd1_dir, "--lora", "me/style:v1:0.6", "--steps", "1",
                             "--seed", "3", "-o", tmp_path / "out", "--json")  # fmt: skip
    assert code == 0, err
    path = json.loads(out)["images"][0]["path"]
    own = import_recipe(path, registry)
    assert (
        own.made_by == "lorastack"
        and own.seed == 3
        and [(a.source, a.scale) for a in own.adapters] == [("me/style@1", 0.6)]
    )
    with Image.open(path) as image:
        parameters = image.info["parameters"]
    assert "<lora:me/stylev1:0.6>" in parameters and f"me/stylev1: {tensor_hash[:12]}" in parameters
    foreign = import_recipe(png(tmp_path / "only-infotext.png", parameters=parameters), registry)
    assert foreign.made_by == "a1111" and foreign.prompt == "a cat" and foreign.seed == 3
    assert [(a.ref, a.scale, a.matched_by) for a in foreign.adapters] == [("me/style@1", 0.6, "hash")]


def test_reproduce_a_foreign_image(registry, tiny_sd1_dir, tmp_path):
    """An image with only A1111 infotext: --base is asked for in one line, then it is made again with lorastack."""
    from adapter_cases import make_case

    from lorastack.core.recipe import read_recipe
    from lorastack.testing.models import load_pipeline

    style = make_case(load_pipeline(tiny_sd1_dir), "kohya", tmp_path / "style.safetensors", seed=1)
    registry.import_file(style, "me/style", "v1")
    code, out, err = run_cli("generate", "a cat", "--base", tiny_sd1_dir, "--lora", "me/style:0.6", "--steps", "2",
                             "--seed", "3", "--scheduler", "euler", "-o", tmp_path / "out", "--json")  # fmt: skip
    assert code == 0, err
    original = json.loads(out)["images"][0]["path"]
    with Image.open(original) as image:
        parameters, pixels = image.info["parameters"], image.copy()
    foreign = tmp_path / "a1111.png"
    info = PngInfo()
    info.add_text("parameters", parameters)
    pixels.save(foreign, pnginfo=info)
    code, _, err = run_cli("reproduce", foreign)
    one_line_error(code, err, "a1111", "model hash", "pass --base")
    code, out, err = run_cli("reproduce", foreign, "--base", tiny_sd1_dir, "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["identical"] is True  # the same sampler, seed and adapters: lorastack makes the same pixels
    remade = read_recipe(result["output"])
    assert (remade["seed"], remade["steps"], remade["scheduler"]) == (3, 2, "euler")
    assert [(a["source"], a["scale"]) for a in remade["adapters"]] == [("me/style@1", 0.6)]
    missing = png(tmp_path / "missing.png", parameters=parameters.replace("me/style: ", "me/style: 00"))
    code, _, err = run_cli("reproduce", missing, "--base", tiny_sd1_dir)
    one_line_error(code, err, "not in the registry", "me/style (hash 00")
