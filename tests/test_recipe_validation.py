"""Recipes read from PNGs are untrusted: every field is checked, and a bad one is one typed error naming the image,
the field, the value and what is valid. Nothing here loads a model."""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import threading
import time
from dataclasses import replace

import pytest
from cli_helpers import run_cli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from lorastack.core.errors import ReproduceError
from lorastack.core.recipe import RECIPE_KEY, read_recipe

DIGEST = "sha256:" + "0" * 64
SHA = "ab" * 32
VERSIONS = {"lorastack": "0.1.0", "torch": "2.13.0", "diffusers": "0.42.1", "python": "3.11.7"}
LBW = "1,0,0,0,0,0,0,0,1,1,1,1,1,1,1,1,1"

#: What ``Generator._recipe`` writes for a txt2img image with two adapters (one a prompt tag's scale dict) …
TXT2IMG = {
    "version": 1,
    "mode": "txt2img",
    "prompt": "a photo of a red cat",
    "negative_prompt": "",
    "seed": 5,
    "steps": 3,
    "guidance": 7.0,
    "width": 64,
    "height": 64,
    "scheduler": "default:DDIMScheduler",
    "strength": None,
    "base": {
        "source": "demo/tiny-sd1",
        "config": None,
        "kind": "folder",
        "location": "/tmp/demo/tiny-sd1",
        "family": "sd1",
        "revision": None,
        "dtype": "fp32",
        "digest": DIGEST,
    },
    "adapters": [
        {"name": "style", "source": "demo/style.safetensors", "tensor_sha256": SHA, "scale": 0.8},
        {
            "name": "subject",
            "source": "subject@1",
            "tensor_sha256": SHA,
            "scale": {"unet": 1.0, "text_encoder": 0.6, "text_encoder_2": 0.6, "lbw": LBW},
        },
    ],
    "device": "cpu",
    "versions": VERSIONS,
}
#: … a comparison grid (img2img, two rows) …
GRID = {
    **copy.deepcopy(TXT2IMG),
    "mode": "img2img",
    "scheduler": "euler_a",
    "strength": 0.6,
    "guidance": 2,  # a base's recommended guidance may be an integer
    "init_image": {"path": "/tmp/init.png", "sha256": SHA},
    "compare": {"columns": ["base", "style", "subject", "all"], "prompts": ["a cat"] * 4, "rows": 2},
}
#: … and an inpainting image on a single-file SDXL base.
INPAINT = {
    **copy.deepcopy(TXT2IMG),
    "mode": "inpaint",
    "strength": 0.9,
    "init_image": {"path": "/tmp/init.png", "sha256": SHA},
    "mask": {"path": "/tmp/mask.png", "sha256": SHA},
    "base": {**TXT2IMG["base"], "kind": "single_file", "family": "sdxl", "config": "/tmp/xl", "dtype": "bf16"},
    "adapters": [{"name": "a", "source": "a.safetensors", "tensor_sha256": None, "scale": {"lbw": [1.0] * 12}}],
}


def png(path, text: str):
    """A PNG whose lorastack chunk holds ``text`` as is (``save_png`` would refuse to format some bad recipes)."""
    info = PngInfo()
    info.add_text(RECIPE_KEY, text)
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)
    return path


def mutate(recipe: dict, dotted: str, value=...) -> dict:
    """A copy of ``recipe`` with the field at ``dotted`` (``base.dtype``, ``adapters.0.scale``) set, or deleted."""
    recipe = copy.deepcopy(recipe)
    *parents, last = dotted.split(".")
    node = recipe
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    key = int(last) if isinstance(node, list) else last
    if value is ...:
        del node[key]
    else:
        node[key] = value
    return recipe


@pytest.mark.parametrize("recipe", [TXT2IMG, GRID, INPAINT], ids=["txt2img", "grid", "inpaint"])
def test_what_lorastack_writes_is_read_back(tmp_path, recipe):
    path = png(tmp_path / "ok.png", json.dumps(recipe, sort_keys=True))
    assert read_recipe(path) == recipe


BAD = [
    # (field to change, new value (... = delete it), what the message must say besides the field)
    ("steps", ..., "missing"),
    ("steps", "25", "at least 1 and at most 1000"),
    ("steps", True, "at least 1 and at most 1000"),
    ("steps", 25.0, "at least 1 and at most 1000"),
    ("steps", 10**9, "at least 1 and at most 1000"),
    ("width", 10**6, "a positive multiple of 8, at most 8192"),
    ("height", 10**6, "a positive multiple of 8, at most 8192"),
    ("width", 65, "a positive multiple of 8, at most 8192"),
    ("scheduler", None, "ddim"),
    ("scheduler", "turbo", "dpm++2m"),
    ("guidance", math.nan, "a finite number, at least 0 and at most 100"),
    ("guidance", math.inf, "a finite number, at least 0 and at most 100"),
    ("guidance", "7", "a finite number, at least 0 and at most 100"),
    ("seed", 10**30, "at least 0 and at most"),
    ("seed", -1, "at least 0 and at most"),
    ("strength", 2.0, "strength"),
    ("prompt", 5, "a string"),
    ("prompt", "x" * 20_000, "at most 10000 characters"),
    ("negative_prompt", ["a"], "a string"),
    ("mode", "text2img", "txt2img, img2img, inpaint"),
    ("adapters", {"style": 0.8}, "a list"),
    ("adapters", [{"name": "a", "source": "a.safetensors", "tensor_sha256": None, "scale": 1.0}] * 65, "at most 64"),
    ("adapters.0.source", ..., "missing"),
    ("adapters.0.source", 3, "a path"),
    ("adapters.0.name", "../x y", "adapter name"),
    ("adapters.1.name", "style", "more than once"),
    ("adapters.0", "style", "an object"),
    ("adapters.0.scale", "loud", "-100 to 100"),
    ("adapters.0.scale", True, "-100 to 100"),
    ("adapters.0.scale", 1e30, "-100 to 100"),
    ("adapters.0.scale", -math.inf, "-100 to 100"),
    ("adapters.0.scale", {"unet": "x"}, "unet"),
    ("adapters.1.scale.lbw", "1,nan", "lbw"),
    ("adapters.0.tensor_sha256", 12, "or null"),
    ("base", ["tiny"], "an object"),
    ("base.location", ..., "missing"),
    ("base.dtype", "fp8", "fp32, fp16, bf16"),
    ("base.kind", "zip", "folder, single_file, hub"),
    ("base.family", "sd4", "sd1, sd2, sdxl, flux, sd3"),
    ("base.digest", None, "a string"),
    ("base.location", "/tmp/a\x00b", "a path"),
    ("version", 1.0, "this lorastack reads 1"),
    ("version", 2, "this lorastack reads 1"),
    ("init_image", "/tmp/init.png", "an object"),
]
BAD_GRID = [
    ("init_image.path", 5, "a path"),
    ("init_image.path", "x" * 5000, "at most 4096 characters"),
    ("init_image.sha256", "abc", "a sha256 (64 hex digits)"),
    ("mode", "txt2img", "img2img"),
    ("compare.prompts", "a cat", "a list"),
    ("compare.prompts", ["a cat"] * 3, "4 prompts"),
    ("compare.prompts", [1, 2, 3, 4], "a string"),
    ("compare.columns", ["base", "style"], "4 columns"),
    ("compare.rows", 10**9, "at least 1 and at most 100"),
    ("compare", [], "an object"),
]


@pytest.mark.parametrize(
    "recipe, field, value, expected", [(TXT2IMG, *b) for b in BAD] + [(GRID, *b) for b in BAD_GRID]
)
def test_a_bad_field_is_one_typed_error_naming_the_image_the_field_and_what_is_valid(
    tmp_path, recipe, field, value, expected
):
    path = png(tmp_path / "bad.png", json.dumps(mutate(recipe, field, value)))
    with pytest.raises(ReproduceError) as info:
        read_recipe(path)
    message = str(info.value)
    name = field.split(".")[-1] if not field.split(".")[-1].isdigit() else field.split(".")[0]
    assert str(path) in message and name in message and expected in message, message
    assert "\n" not in message and len(message) < 600, message


@pytest.mark.parametrize(
    "text, expected",
    [
        ("[1, 2]", "a list, not an object"),
        ('"a recipe"', "not an object"),
        ("{not json", "not valid JSON"),
        ("[" * 100_000 + "]" * 100_000, "not valid JSON"),  # nested deeper than the parser's recursion limit
        ('{"seed": ' + "9" * 5000 + "}", "not valid JSON"),  # past Python's int-from-string digit limit
        (json.dumps({**TXT2IMG, "prompt": "x" * 10_000_000}), "at most 1 MB"),
        (json.dumps({**TXT2IMG, "junk": "x" * 1_100_000}), "at most 1 MB"),
    ],
    ids=["list", "string", "broken", "deep", "digits", "10MB-prompt", "huge-chunk"],
)
def test_a_bad_recipe_text_is_one_typed_error(tmp_path, text, expected):
    path = png(tmp_path / "bad.png", text)
    started = time.perf_counter()
    with pytest.raises(ReproduceError) as info:
        read_recipe(path)
    assert str(path) in str(info.value) and expected in str(info.value), str(info.value)
    assert time.perf_counter() - started < 5


@contextlib.contextmanager
def unblocking(fifo, seconds: float = 10.0):
    """If the code under test blocks on ``fifo``, open its other end after ``seconds`` (so the test fails, not
    hangs), and fail if it took that long."""
    done = threading.Event()

    def release():
        if not done.wait(seconds):
            for flags in (os.O_WRONLY | os.O_NONBLOCK, os.O_RDONLY | os.O_NONBLOCK):
                with contextlib.suppress(OSError):
                    os.close(os.open(fifo, flags))

    thread = threading.Thread(target=release, daemon=True)
    thread.start()
    started = time.monotonic()
    try:
        yield
    finally:
        done.set()
        thread.join()
    assert time.monotonic() - started < seconds, f"blocked on the FIFO {fifo}"


def test_an_image_that_is_not_a_regular_file(tmp_path):
    fifo = tmp_path / "image.png"
    os.mkfifo(fifo)
    with unblocking(fifo), pytest.raises(ReproduceError, match="FIFO"):
        read_recipe(fifo)
    with pytest.raises(ReproduceError, match="is a folder"):
        read_recipe(tmp_path)
    with pytest.raises(ReproduceError, match="no such file"):
        read_recipe(tmp_path / "missing.png")


def test_the_cli_shows_one_line(tmp_path):
    path = png(tmp_path / "bad.png", json.dumps(mutate(TXT2IMG, "steps", True)))
    code, _, err = run_cli("reproduce", path)
    assert code == 1 and "Traceback" not in err and err.count("\n") == 1, err
    assert "steps" in err and "True" in err and str(path) in err


# --- property: any mutation of a valid recipe is a valid recipe or the typed error, never another exception --------


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _paths(value, (*prefix, i))


_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from([0, 1, -1, 8, 64, 1000, 1001, 8192, 8200, 2**63 - 1, 2**63, 10**30, -(10**30)]),
    st.floats(allow_nan=True, allow_infinity=True, allow_subnormal=False),
    st.text(max_size=30),
    st.sampled_from(["", "ddim", "default:X", "fp16", "sdxl", "hub", "inpaint", "1,0,1", "x" * 20_000]),
)
JSON = st.recursive(
    _SCALARS,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12), children, max_size=5),
    max_leaves=20,
)
BASES = [TXT2IMG, GRID, INPAINT]


@st.composite
def mutated(draw):
    recipe = copy.deepcopy(draw(st.sampled_from(BASES)))
    for _ in range(draw(st.integers(1, 4))):
        paths = list(_paths(recipe))
        path = draw(st.sampled_from(paths))
        if not path:  # the whole recipe
            if draw(st.booleans()):
                return draw(JSON)
            continue
        *parents, last = path
        node = recipe
        for key in parents:
            node = node[key]
        action = draw(st.sampled_from(["delete", "replace", "replace", "grow"]))
        if action == "delete":
            del node[last]
        elif action == "grow" and isinstance(node[last], (list, str)):
            factor = draw(st.sampled_from([2, 70, 20_000]))
            if len(node[last]) * factor <= 2_000_000:  # huge, but not past this machine's memory
                node[last] = node[last] * factor
        else:
            node[last] = draw(JSON)
    return recipe


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(mutated())
def test_any_mutation_is_a_valid_recipe_or_the_typed_error(recipe):
    from lorastack.core.generate import check_options, options_from_recipe
    from lorastack.core.recipe_schema import validate_recipe

    try:
        checked = validate_recipe(recipe, "mutated.png")
    except ReproduceError as e:
        message = str(e)
        assert message.startswith("mutated.png: ") and "\n" not in message and len(message) < 600, message
        return
    # a recipe the validator passes replays without surprises: its options pass generate's own checks
    options = options_from_recipe(checked)
    check_options(replace(options, init_image=None, mask=None), family=checked["base"]["family"])  # no such files
