"""Training data: buckets, cover-resize and crop, flips, masks, captions, reproducible batches, the latent cache."""

from __future__ import annotations

import io
import math
import random

import numpy as np
import pytest
import torch
from PIL import Image

from lorastack.core.data import image_key
from lorastack.core.errors import LorastackError
from lorastack.core.interfaces import DatasetItem
from lorastack.core.training.cache import LatentCache, LatentCacheError
from lorastack.core.training.data import (
    DataOptions,
    TrainingData,
    TrainingDataError,
    collate,
    make_buckets,
    prepare,
    process_caption,
)

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def noise_image(seed: int, width: int, height: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")


def item(image: Image.Image, caption: str | None = "a thing", *, keyed: bool = True, mask=None) -> DatasetItem:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    key = image_key(buffer.getvalue()) if keyed else None
    return DatasetItem(image=image, caption=caption, source=f"{key}.png", mask=mask, key=key)


def striped(width: int = 64, height: int = 32):
    """Blue, a red vertical stripe at columns 20..27, a green band over rows 0..3; the mask marks the stripe."""
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    pixels[:] = BLUE
    pixels[:, 20:28] = RED
    pixels[:4] = GREEN
    mask = np.zeros((height, width), dtype=np.uint8)
    mask[:, 20:28] = 255
    return Image.fromarray(pixels, "RGB"), Image.fromarray(mask, "L")


def dominant(pixels: torch.Tensor, row: int, col: int) -> int:
    return int(pixels[:, row, col].argmax())  # 0 red, 1 green, 2 blue


# --- geometry ------------------------------------------------------------------------------------------------------


def test_buckets_are_multiples_of_the_step_with_area_near_resolution_squared():
    buckets = make_buckets(512, 64, 256, 1024)
    assert (512, 512) in buckets
    for h, w in buckets:
        assert h % 64 == 0 and w % 64 == 0 and min(h, w) >= 256 and max(h, w) <= 1024
        assert 0.8 <= h * w / 512**2 <= 1.0
    assert {(w, h) for h, w in buckets} == set(buckets)  # every wide bucket has its tall twin


def test_images_land_in_the_bucket_of_nearest_aspect_ratio():
    options = DataOptions(resolution=512, buckets=True)
    images = [noise_image(0, 200, 100), noise_image(1, 100, 200), noise_image(2, 150, 150)]
    data = TrainingData([item(i) for i in images], options)
    (wide_h, wide_w), (tall_h, tall_w), square = data.buckets
    assert wide_w > wide_h and abs(math.log(wide_w / wide_h / 2)) < 0.15
    assert (tall_h, tall_w) == (wide_w, wide_h)
    assert square == (512, 512)
    assert wide_h % 64 == 0 and wide_w % 64 == 0 and 0.8 <= wide_h * wide_w / 512**2 <= 1.0
    example = data.example(0, 0)
    assert tuple(example["pixels"].shape) == (3, wide_h, wide_w)
    assert example["target_size"] == (wide_h, wide_w) and example["original_size"] == (100, 200)
    assert data.bucket_counts() == {(wide_h, wide_w): 1, (tall_h, tall_w): 1, (512, 512): 1}


def test_cover_resize_then_minimal_center_crop():
    image, _ = striped()  # 64×32 into 16×16: scale 0.5 → 32×16, the 16 excess columns cut 8 per side, no row cut
    out = prepare(image, (16, 16), center_crop=True, flip=False)
    assert out.resized_size == (16, 32) and out.crop_top_left == (0, 8) and out.original_size == (32, 64)
    assert tuple(out.pixels.shape) == (3, 16, 16)
    assert float(out.pixels.min()) >= -1.0 and float(out.pixels.max()) <= 1.0
    reference = np.asarray(image.resize((32, 16), Image.Resampling.LANCZOS).crop((8, 0, 24, 16)), dtype=np.float32)
    assert torch.allclose(out.pixels, torch.from_numpy(reference).permute(2, 0, 1) / 127.5 - 1)
    # source columns 16..47 survive: the stripe (20..27) lands on columns 2..5, the top band is kept whole
    assert dominant(out.pixels, 8, 3) == 0 and dominant(out.pixels, 8, 4) == 0
    assert dominant(out.pixels, 8, 12) == 2 and dominant(out.pixels, 0, 12) == 1
    tall = prepare(image.transpose(Image.Transpose.ROTATE_90), (16, 16), center_crop=True, flip=False)
    assert tall.resized_size == (32, 16) and tall.crop_top_left == (8, 0)


def test_square_mode_resizes_the_shorter_side_to_the_resolution():
    data = TrainingData([item(noise_image(0, 300, 100))], DataOptions(resolution=64))
    example = data.example(0, 0)
    assert example["target_size"] == (64, 64) and example["resized_size"] == (64, 192)
    assert example["crop_top_left"] == (0, 64)


def test_flip_mirrors_the_crop_and_reports_mirrored_coordinates():
    image = noise_image(3, 66, 32)  # resized 33×16: an odd excess, so the mirrored crop starts one column later
    plain = prepare(image, (16, 16), center_crop=True, flip=False)
    flipped = prepare(image, (16, 16), center_crop=True, flip=True)
    assert torch.equal(flipped.pixels, plain.pixels.flip(-1))
    assert plain.crop_top_left == (0, 8) and flipped.crop_top_left == (0, 9)


def test_mask_gets_the_same_crop_and_flip():
    image, mask = striped()
    for flip in (False, True):
        out = prepare(image, (16, 16), center_crop=True, flip=flip, mask=mask)
        assert tuple(out.mask.shape) == (16, 16) and float(out.mask.min()) >= 0 and float(out.mask.max()) <= 1
        stripe, background = (12, 3) if flip else (3, 12)
        assert dominant(out.pixels, 8, stripe) == 0 and float(out.mask[8, stripe]) > 0.9
        assert dominant(out.pixels, 8, background) == 2 and float(out.mask[8, background]) < 0.1
    for seed in range(6):  # random crops too: the mask follows the image wherever the crop lands
        out = prepare(image, (16, 16), center_crop=False, flip=bool(seed % 2), rng=random.Random(seed), mask=mask)
        red = out.pixels[0, 8] - out.pixels[2, 8] > 0.5
        assert torch.equal(out.mask[8] > 0.5, red)
    with pytest.raises(TrainingDataError, match="mask"):
        TrainingData([item(image, mask=mask.resize((10, 10)))], DataOptions(resolution=16))


def test_random_crop_varies_with_the_generator_and_repeats_for_the_same_seed():
    image = noise_image(4, 96, 32)
    lefts = {prepare(image, (32, 32), False, False, random.Random(s)).crop_top_left[1] for s in range(30)}
    assert len(lefts) > 10 and min(lefts) >= 0 and max(lefts) <= 64
    first = prepare(image, (32, 32), False, False, torch.Generator().manual_seed(7))
    again = prepare(image, (32, 32), False, False, torch.Generator().manual_seed(7))
    assert first.crop_top_left == again.crop_top_left and torch.equal(first.pixels, again.pixels)


# --- captions ------------------------------------------------------------------------------------------------------


def test_caption_dropout_rate():
    options = DataOptions(caption_dropout=0.3, caption_prefix="a photo of aawxbc")
    rng = random.Random(0)
    captions = [process_caption("red, shiny", options, rng) for _ in range(4000)]
    assert 0.27 < captions.count("") / len(captions) < 0.33  # dropout empties the prefix too (unconditional)
    assert set(captions) == {"", "a photo of aawxbc, red, shiny"}


def test_tag_shuffle_keeps_the_first_tokens_and_the_prefix_leads():
    options = DataOptions(shuffle_tags=True, keep_tokens=2, caption_prefix="a photo of aawxbc,")
    rng = random.Random(1)
    captions = {process_caption("sks, dog, grass, sun, ball, tree", options, rng) for _ in range(60)}
    assert len(captions) > 10
    for caption in captions:
        assert caption.startswith("a photo of aawxbc, sks, dog, ")
        assert sorted(caption.split(", ")[3:]) == ["ball", "grass", "sun", "tree"]
    assert process_caption(None, options, rng) == "a photo of aawxbc"
    assert process_caption("one tag", DataOptions(shuffle_tags=True), rng) == "one tag"


# --- reproducibility -----------------------------------------------------------------------------------------------


def mixed_data(seed: int, **options) -> TrainingData:
    sizes = [(200, 100), (100, 200), (150, 150), (210, 100), (120, 240), (90, 90), (300, 150)]
    items = [item(noise_image(i, w, h), f"tag{i}, red, blue, green") for i, (w, h) in enumerate(sizes)]
    defaults = dict(resolution=128, buckets=True, random_flip=True, repeats=2, shuffle_tags=True, caption_dropout=0.3)
    return TrainingData(items, DataOptions(**{**defaults, **options}), seed)


def test_epoch_batches_share_a_bucket_cover_every_repeat_and_depend_only_on_seed_and_epoch():
    data = mixed_data(5)
    batches = data.epoch_batches(0, 2)
    assert sorted(i for batch in batches for i in batch) == list(range(len(data))) == list(range(14))
    for batch in batches:
        assert len({data.buckets[i % len(data.items)] for i in batch}) == 1
    assert batches == mixed_data(5).epoch_batches(0, 2)
    assert batches != data.epoch_batches(1, 2)
    assert batches != mixed_data(6).epoch_batches(0, 2)
    assert all(len(b) == 2 for b in data.epoch_batches(0, 2, drop_last=True))
    with pytest.raises(TrainingDataError, match="batch_size"):
        data.epoch_batches(0, 0)


def test_examples_are_reproducible_from_seed_epoch_and_index():
    def summary(data, index, rng):
        ex = data.example(index, rng)
        return ex["caption"], ex["flip"], ex["crop_top_left"], ex["pixels"].sum().item()

    one, two = mixed_data(5), mixed_data(5)
    forward = [summary(one, i, 3) for i in range(len(one))]
    backward = [summary(two, i, 3) for i in reversed(range(len(two)))][::-1]
    assert forward == backward  # independent of call order
    assert forward != [summary(mixed_data(6), i, 3) for i in range(14)]
    assert forward != [summary(one, i, 4) for i in range(14)]
    assert len({flip for _, flip, _, _ in forward}) == 2
    # an explicit generator (the engine's per-step one) gives the same choices for the same state
    seeded = [summary(one, i, torch.Generator().manual_seed(i)) for i in range(14)]
    assert seeded == [summary(two, i, torch.Generator().manual_seed(i)) for i in range(14)]
    assert one.caption(0, random.Random(9)) == two.caption(0, random.Random(9))
    batch = collate([one.example(i, 0) for i in one.epoch_batches(0, 2)[0]])
    assert batch["pixels"].dim() == 4 and batch["masks"] is None and tuple(batch["time_ids"].shape) == (2, 6)


@pytest.mark.parametrize(
    "options, match",
    [
        (dict(resolution=500), "resolution 500"),
        (dict(resolution=0), "resolution 0"),
        (dict(caption_dropout=1.5), "caption_dropout 1.5"),
        (dict(caption_dropout=-0.1), "caption_dropout -0.1"),
        (dict(keep_tokens=-1), "keep_tokens -1"),
        (dict(repeats=0), "repeats 0"),
        (dict(repeats=1.5), "repeats 1.5"),
        (dict(bucket_step=60), "bucket_step 60"),
        (dict(buckets=True, min_bucket=100), "min_bucket 100"),
        (dict(buckets=True, max_bucket=256), "resolution 512"),
    ],
)
def test_bad_options_raise_one_line_errors(options, match):
    with pytest.raises(TrainingDataError, match=match) as info:
        DataOptions(**options).validate()
    assert isinstance(info.value, LorastackError) and "\n" not in str(info.value)


def test_no_items_is_an_error():
    with pytest.raises(TrainingDataError, match="no items"):
        TrainingData([], DataOptions())


# --- latent cache --------------------------------------------------------------------------------------------------


def cache_items(count: int = 3):
    return [item(noise_image(10 + i, 80, 64)) for i in range(count)]


def run_cache(folder, vae, items, **options) -> LatentCache:
    data = TrainingData(items, DataOptions(**{"resolution": 64, **options}), seed=0)
    cache = LatentCache(folder, vae)
    cache.distributions([data.example(i, 0) for i in range(len(data.items))])
    return cache


def test_latent_cache_hits_unchanged_data_and_misses_what_changed(tiny_sd1_pipe, tmp_path):
    vae = tiny_sd1_pipe.vae
    items = cache_items()
    first = run_cache(tmp_path, vae, items)
    assert (first.misses, first.hits, first.encodes) == (3, 0, 1)  # one batched VAE call
    again = run_cache(tmp_path, vae, items)
    assert (again.misses, again.hits, again.encodes) == (0, 3, 0)
    edited = [*items[:1], item(noise_image(99, 80, 64)), *items[2:]]
    one = run_cache(tmp_path, vae, edited)
    assert (one.misses, one.hits, one.encodes) == (1, 2, 1)
    resized = run_cache(tmp_path, vae, items, resolution=128)
    assert (resized.misses, resized.hits) == (3, 0)
    assert not list(tmp_path.rglob("*.tmp"))


def test_latent_cache_misses_for_another_vae_and_keys_unkeyed_items_by_pixels(tiny_sd1_pipe, tmp_path):
    vae = tiny_sd1_pipe.vae
    unkeyed = [item(noise_image(20 + i, 64, 64), keyed=False) for i in range(2)]
    run_cache(tmp_path, vae, unkeyed)
    assert run_cache(tmp_path, vae, unkeyed).hits == 2
    changed = [item(noise_image(30, 64, 64), keyed=False), unkeyed[1]]
    assert run_cache(tmp_path, vae, changed).misses == 1
    with torch.no_grad():
        vae.quant_conv.weight.mul_(1.01)
    assert run_cache(tmp_path, vae, unkeyed).misses == 2


def test_corrupt_cache_file_is_re_encoded(tiny_sd1_pipe, tmp_path):
    vae = tiny_sd1_pipe.vae
    items = cache_items()
    run_cache(tmp_path, vae, items)
    files = sorted(tmp_path.rglob("*.safetensors"))
    assert len(files) == 3
    files[0].write_bytes(b"\x00garbage")
    files[1].write_bytes(files[1].read_bytes()[:40])  # truncated
    repaired = run_cache(tmp_path, vae, items)
    assert (repaired.corrupt, repaired.misses, repaired.hits, repaired.encodes) == (2, 2, 1, 1)
    assert run_cache(tmp_path, vae, items).hits == 3


def test_cached_latents_sample_like_a_direct_encode(tiny_sd1_pipe, tmp_path):
    vae = tiny_sd1_pipe.vae
    data = TrainingData(cache_items(2), DataOptions(resolution=64), seed=0)
    examples = [data.example(i, 0) for i in range(2)]
    with torch.no_grad():
        direct = vae.encode(torch.stack([ex["pixels"] for ex in examples])).latent_dist
    expected = direct.sample(torch.Generator().manual_seed(5)) * vae.config.scaling_factor
    for _ in range(2):  # a miss (encodes), then a hit (reads the file)
        cache = LatentCache(tmp_path, vae)
        got = cache.latents(examples, torch.Generator().manual_seed(5))
        assert torch.allclose(got, expected, atol=1e-5)
    assert (cache.hits, cache.encodes) == (2, 0)
    single = cache.get_or_encode(examples[0], torch.Generator().manual_seed(5))
    assert tuple(single.shape) == (4, 8, 8)
    other = cache.get_or_encode(examples[0], torch.Generator().manual_seed(6))
    assert not torch.allclose(single, other)  # the noise is drawn per call, not frozen in the cache


def test_random_flip_caches_both_orientations(tiny_sd1_pipe, tmp_path):
    data = TrainingData(cache_items(2), DataOptions(resolution=64, random_flip=True), seed=0)
    cache = LatentCache(tmp_path, tiny_sd1_pipe.vae)
    assert cache.fill(data, batch_size=2) == 1
    assert len(list(tmp_path.rglob("*.safetensors"))) == 4
    examples = [data.example(i, epoch) for epoch in range(6) for i in range(2)]
    assert {ex["flip"] for ex in examples} == {False, True}
    cache.distributions(examples)
    assert (cache.encodes, cache.misses) == (1, 2)  # fill's two misses; every later example was a hit
    flipped = next(ex for ex in examples if ex["flip"])
    plain = next(ex for ex in examples if not ex["flip"] and ex["item"] == flipped["item"])
    with torch.no_grad():
        mean = tiny_sd1_pipe.vae.encode(plain["pixels"].flip(-1)[None]).latent_dist.mean[0]
    assert torch.allclose(cache.distributions([flipped])[0][0], mean, atol=1e-5)


def test_random_crop_cannot_be_cached(tiny_sd1_pipe, tmp_path):
    data = TrainingData(cache_items(1), DataOptions(resolution=64, center_crop=False), seed=0)
    cache = LatentCache(tmp_path, tiny_sd1_pipe.vae)
    with pytest.raises(LatentCacheError, match="center_crop"):
        cache.latents(data.example(0, 0))
