"""Training: each trainer end to end on the tiny SD1.x and SDXL pipelines, adapters that load everywhere, learning,
resume equality, the latent cache, validation, recipes, and bad input."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from cli_helpers import run_cli
from PIL import Image

from lorastack.adapters import read_adapter
from lorastack.core.training.api import train
from lorastack.core.training.options import TrainingError

FAST = {"steps": 2, "resolution": 32, "sample_steps": 2, "seed": 0}
COLOURS = [(220, 40, 40), (40, 200, 60), (40, 60, 220), (230, 210, 40)]


def _folder(root: Path, count: int = 4, captions: bool = True, size=(48, 40)) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        image = Image.new("RGB", size, COLOURS[i % len(COLOURS)])
        image.paste((255, 255, 255), (8, 8, 24, 24))
        image.save(root / f"img{i}.png")
        if captions:
            (root / f"img{i}.txt").write_text(f"a square, colour {i}")
    return root


@pytest.fixture
def data(tmp_path):
    return _folder(tmp_path / "data")


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    adapter = read_adapter(path)
    return {name: torch.cat([layer.down.flatten(), layer.up.flatten()]) for name, layer in adapter.layers.items()}


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
@pytest.mark.parametrize("trainer", ["lora", "dreambooth", "pivotal"])
def test_each_trainer_runs_end_to_end(trainer, family, tiny_pipe_dir, data, tmp_path, lorastack_home):
    from lorastack.adapters.embeddings import diffusers_parts
    from lorastack.core import AdapterStack, load_base

    base = tiny_pipe_dir(family)
    extra = {
        "lora": {},
        "dreambooth": {"token": "aawxbc", "class_name": "figurine", "class_images": 2},
        "pivotal": {"token": "aawxbc", "class_name": "figurine", "ti_steps": 1, "steps": 3},
    }[trainer]
    options = {**FAST, "text_encoder_lr": 1e-4, "targets": "attention-ff", **extra}
    pipe = load_base(base)
    vocab = len(pipe.tokenizer)
    embeddings_before = pipe.text_encoder.get_input_embeddings().weight.detach().clone()
    result = train(trainer, base, data, name=f"t-{trainer}-{family}", output=tmp_path / "run", options=options,
                   progress=False, pipe=pipe)  # fmt: skip
    assert result.registered == f"t-{trainer}-{family}@1" and len(result.losses) == options["steps"]
    # the training pipeline is the base again: LoRA layers and new tokens gone, embeddings untouched
    assert len(pipe.tokenizer) == vocab and not getattr(pipe.unet, "peft_config", None)
    assert torch.equal(pipe.text_encoder.get_input_embeddings().weight, embeddings_before)
    adapter = read_adapter(result.adapter_path)
    assert adapter.family == family and {"unet", "text_encoder"} <= set(adapter.components())
    if family == "sdxl":
        assert "text_encoder_2" in adapter.components()
    assert adapter.metadata.raw["lorastack.trainer"] == trainer
    if trainer != "lora":
        assert adapter.metadata.trigger_words == ["aawxbc"]
    if trainer == "pivotal":
        encoders = {"text_encoder", "text_encoder_2"} if family == "sdxl" else {"text_encoder"}
        assert set(adapter.embeddings) == {"aawxbc"} and set(adapter.embeddings["aawxbc"]) == encoders
        assert all(t.shape[0] == 2 for t in adapter.embeddings["aawxbc"].values())
    # loads in the runtime (new tokens and all)...
    stack = AdapterStack(pipe)
    report = stack.load("trained", result.adapter_path)
    assert not report.unmatched
    if trainer == "pivotal":
        assert pipe.maybe_convert_prompt("a photo of aawxbc", pipe.tokenizer) == "a photo of aawxbc aawxbc_1"
        stack.unload("trained")
        assert len(pipe.tokenizer) == vocab
    # ...and in plain diffusers
    plain = load_base(base)
    lora, embeddings = diffusers_parts(result.adapter_path)
    plain.load_lora_weights(lora)
    for token, parts in embeddings.items():
        for component, tensor in parts.items():
            suffix = "" if component == "text_encoder" else "_2"
            plain.load_textual_inversion(tensor, token=token, tokenizer=getattr(plain, f"tokenizer{suffix}"),
                                         text_encoder=getattr(plain, f"text_encoder{suffix}"))  # fmt: skip
    assert plain.unet.peft_config


def test_pivotal_trains_embeddings_first_then_lora(tiny_sd1_dir, data, tmp_path, lorastack_home):
    options = {**FAST, "steps": 4, "checkpoint_every": 1, "token": "aawxbc", "class_name": "square", "ti_steps": 2,
               "learning_rate": 1e-2, "ti_learning_rate": 1e-2}  # fmt: skip
    train("pivotal", tiny_sd1_dir, data, output=tmp_path / "run", progress=False, options=options)
    steps = [read_adapter(tmp_path / "run" / "checkpoints" / f"step-{i:06d}" / "adapter.safetensors")
             for i in range(1, 5)]  # fmt: skip

    def ups(adapter):
        return torch.cat([layer.up.flatten() for layer in adapter.layers.values()])

    def vectors(adapter):
        return adapter.embeddings["aawxbc"]["text_encoder"]

    assert torch.count_nonzero(ups(steps[1])) == 0  # LoRA's B starts at zero and stays there while only TI trains
    assert not torch.equal(vectors(steps[0]), vectors(steps[1]))  # the embeddings move from the start
    assert torch.count_nonzero(ups(steps[3])) > 0  # then LoRA joins


@pytest.mark.slow
def test_learning_is_real(tiny_sd1_dir, tmp_path, lorastack_home):
    """Overfit one image: the loss falls well below its start, and the adapter's images move toward the image."""
    from lorastack.core import AdapterStack, load_base

    folder = tmp_path / "one"
    folder.mkdir()
    target = Image.new("RGB", (32, 32), (230, 30, 30))
    target.save(folder / "red.png")
    (folder / "red.txt").write_text("aawxbc")
    result = train("lora", tiny_sd1_dir, folder, output=tmp_path / "run", progress=False, options={
        "steps": 200, "resolution": 32, "learning_rate": 3e-3, "rank": 8, "targets": "all",
        "lr_scheduler": "constant", "latents": "mean",  # the tiny random VAE's posterior is mostly noise
    })  # fmt: skip
    start = sum(result.losses[:20]) / 20
    end = sum(result.losses[-20:]) / 20
    assert end < 0.6 * start, (start, end)

    pipe = load_base(tiny_sd1_dir)
    pipe.set_progress_bar_config(disable=True)
    pixels = torch.tensor([230, 30, 30], dtype=torch.float32).div(127.5).sub(1).view(1, 3, 1, 1).expand(1, 3, 32, 32)
    with torch.no_grad():  # the tiny VAE's decoder is random, so compare where the model works: latents
        target = pipe.vae.encode(pixels).latent_dist.mean * pipe.vae.config.scaling_factor

    def distance() -> float:
        g = torch.Generator().manual_seed(3)
        latents = pipe("aawxbc", num_inference_steps=20, height=32, width=32, generator=g, output_type="latent")
        return float(((latents.images - target) ** 2).mean())

    base_distance = distance()
    stack = AdapterStack(pipe)
    stack.load("red", result.adapter_path)
    stack.activate({"red": 1.0})
    adapter_distance = distance()
    assert adapter_distance < 0.5 * base_distance, (base_distance, adapter_distance)


def _train_cli(base, data, output, steps, extra=()):
    # the same number of CPU threads as this process: float sums split differently across threads round differently
    env = {**os.environ, "LORASTACK_RAISE_ERRORS": "", "OMP_NUM_THREADS": str(torch.get_num_threads())}
    args = [sys.executable, "-m", "lorastack.cli.main", "train", "--trainer", "lora", "--base", str(base), "--data",
            str(data), "--output", str(output), "--quiet", "--steps", str(steps), "--resolution", "32",
            "--checkpoint-every", "1", "--learning-rate", "1e-3", *extra]  # fmt: skip
    return subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture
def one_thread():
    """One CPU thread here and in the CLI runs, and subnormals kept as the CLI keeps them: a float sum split across
    threads may round differently from one run to the next (OpenMP shares the work by load), and the resume test
    compares this process's results with a child's bit for bit."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.set_flush_denormal(False)
    yield
    torch.set_flush_denormal(True)
    torch.set_num_threads(threads)


def test_a_killed_run_resumes_to_the_same_adapter(tiny_sd1_dir, data, tmp_path, lorastack_home, one_thread):
    whole = train("lora", tiny_sd1_dir, data, output=tmp_path / "whole", progress=False,
                  options={"steps": 6, "resolution": 32, "checkpoint_every": 1, "learning_rate": 1e-3})  # fmt: skip
    proc = _train_cli(tiny_sd1_dir, data, tmp_path / "killed", 6)
    marker = tmp_path / "killed" / "checkpoints" / "step-000003" / "complete"
    deadline = time.time() + 300
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "killed" / "adapter.safetensors").exists()
    resumed = train("lora", tiny_sd1_dir, data, output=tmp_path / "killed", resume=True, progress=False,
                    options={"steps": 6, "resolution": 32, "checkpoint_every": 1, "learning_rate": 1e-3})  # fmt: skip
    a, b = _tensors(whole.adapter_path), _tensors(resumed.adapter_path)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.losses == whole.losses


def test_the_latent_cache_hits_and_misses(tiny_sd1_dir, data, tmp_path, lorastack_home):
    from lorastack.core import load_base

    pipe = load_base(tiny_sd1_dir)
    options = {**FAST, "cache_latents": True}

    def run(name):
        return train("lora", tiny_sd1_dir, data, output=tmp_path / name, options=options, progress=False, pipe=pipe)

    first = run("r1")
    assert first.encodes >= 1
    second = run("r2")  # another run over the same images: every latent comes from the cache
    assert second.encodes == 0
    Image.new("RGB", (48, 40), (10, 10, 10)).save(data / "img2.png")  # one image changes
    third = run("r3")
    assert third.encodes == 1
    # the cached distribution gives the losses an uncached run computes
    uncached = train("lora", tiny_sd1_dir, data, output=tmp_path / "r4", progress=False, pipe=pipe,
                     options={**options, "cache_latents": False})  # fmt: skip
    assert uncached.losses == pytest.approx(third.losses, rel=1e-4)


def test_validation_samples_and_the_loss_curve(tiny_sd1_dir, data, tmp_path, lorastack_home):
    result = train("lora", tiny_sd1_dir, data, output=tmp_path / "run", progress=False, options={
        **FAST, "steps": 4, "checkpoint_every": 2, "validation_images": 1, "validation_prompts": "a square|a circle",
    })  # fmt: skip
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert set(result.validation_losses) == {2, 4} and run["status"] == "done"
    best = min(result.validation_losses, key=result.validation_losses.get)
    assert result.best_checkpoint == run["best"] == f"step-{best:06d}"
    grid = Image.open(tmp_path / "run" / "samples" / "step-000004.png")
    # two prompts side by side, 32 px tiles upscaled 8x to be seen, a label strip above and a row label on the left
    assert grid.width > 2 * 256 and grid.height > 256
    sample = json.loads(grid.text["lorastack-sample"])
    assert sample["prompts"] == ["a square", "a circle"] and sample["step"] == 4 and sample["width"] == 32
    assert sample["seeds"] == [0, 1] and sample["adapter"] == "checkpoints/step-000004/adapter.safetensors"
    assert Image.open(tmp_path / "run" / "loss.png").size == (800, 400)  # matplotlib's figure, 8 x 4 in at 100 dpi
    assert json.loads((tmp_path / "run" / "losses.json").read_text()) == result.losses
    recipe = (tmp_path / "run" / "recipe.toml").read_text()
    assert 'trainer = "lora"' in recipe and "validation_images = 1" in recipe
    assert read_adapter(result.adapter_path).metadata.raw["lorastack.recipe"] == recipe


def test_recipes_and_cli_flags(tiny_sd1_dir, data, tmp_path, lorastack_home):
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(f'trainer = "lora"\nbase = "{tiny_sd1_dir}"\ndata = "{data}"\n'
                      '[training]\nsteps = 5\nrank = 8\nresolution = 32\n')  # fmt: skip
    code, out, err = run_cli("train", "lora", "--recipe", recipe, "--steps", "2", "-o", tmp_path / "run", "--quiet",
                             "--name", "cli-run")  # fmt: skip
    assert code == 0, err
    assert "registered: cli-run@1" in out
    adapter = read_adapter(tmp_path / "run" / "adapter.safetensors")
    assert adapter.rank == 8  # from the recipe
    assert len(json.loads((tmp_path / "run" / "losses.json").read_text())) == 2  # the flag overrode the recipe
    # the older spelling: --config, and the trainer taken from the recipe
    code, out, err = run_cli("train", "--config", recipe, "--steps", "1", "--output", tmp_path / "old", "--quiet")
    assert code == 0, err
    assert len(json.loads((tmp_path / "old" / "losses.json").read_text())) == 1
    assert read_adapter(tmp_path / "old" / "adapter.safetensors").rank == 8
    code, out, _ = run_cli("train", "--trainer", "dreambooth", "--help")
    assert code == 0 and "--token" in out and "--prior-loss-weight" in out and "--learning-rate" in out


@pytest.mark.parametrize(
    "options, message",
    [
        ({"rank": 0}, "--rank 0 must be ≥ 1"),
        ({"learning_rate": 0}, "--learning-rate 0 must be > 0"),
        ({"resolution": 100}, "--resolution 100 is not divisible by 8; try 96"),
        ({"caption_dropout": 1.5}, "--caption-dropout 1.5 must be in [0, 1)"),
        ({"targets": "everything"}, "--targets 'everything' is not one of: attention, attention-ff, all"),
        ({"mixed_precision": "fp16", "device": "cpu"}, "fp16 needs a GPU"),
        ({"bogus": 1}, "trainer 'lora' has no option 'bogus'"),
    ],
)
def test_bad_options_fail_before_any_work(options, message, tiny_sd1_dir, data, tmp_path, lorastack_home):
    with pytest.raises(ValueError, match=re.escape(message)):
        train("lora", tiny_sd1_dir, data, output=tmp_path / "run", options={**FAST, **options}, progress=False)


def test_bad_datasets_and_tokens(tiny_sd1_dir, tmp_path, lorastack_home, caplog):
    from lorastack.core.data import DatasetError

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "broken.png").write_text("not an image")
    with pytest.raises(DatasetError, match=r"has no usable image; skipped 1: broken.png"):
        train("lora", "/nonexistent/base", empty, options=FAST, progress=False)  # before the base is even looked at
    data = _folder(tmp_path / "data", 2)
    with pytest.raises(TrainingError, match="dreambooth needs --token"):
        train("dreambooth", tiny_sd1_dir, data, options={**FAST, "class_name": "figurine", "token": " "})
    with caplog.at_level(logging.WARNING, logger="lorastack.train"):
        train("dreambooth", tiny_sd1_dir, data, output=tmp_path / "r", progress=False,
              options={**FAST, "steps": 1, "token": "photo", "prior_preservation": False})  # fmt: skip
    assert "'photo' is already a word the text encoder knows" in caplog.text


def test_run_folders_are_guarded(tiny_sd1_dir, tiny_sdxl_dir, data, tmp_path, lorastack_home):
    train("lora", tiny_sd1_dir, data, output=tmp_path / "run", options=FAST, progress=False)
    with pytest.raises(TrainingError, match="already holds a run; pass --resume"):
        train("lora", tiny_sd1_dir, data, output=tmp_path / "run", options=FAST, progress=False)
    with pytest.raises(TrainingError, match=r"belongs to another recipe \(differs in: recipe\)"):
        train("lora", tiny_sd1_dir, data, output=tmp_path / "run", options={**FAST, "rank": 8}, resume=True)
    with pytest.raises(TrainingError, match=r"belongs to another recipe \(differs in: base\)"):
        train("lora", tiny_sdxl_dir, data, output=tmp_path / "run", options=FAST, resume=True)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tiny_sd1_dir, data, tmp_path, lorastack_home):
    from lorastack.core.training import engine

    calls = {"n": 0}
    original = engine.Engine._micro_loss

    def poisoned(self, micro):
        calls["n"] += 1
        loss = original(self, micro)
        return loss * float("nan") if calls["n"] == 3 else loss

    engine.Engine._micro_loss = poisoned
    try:
        with pytest.raises(TrainingError, match=r"loss became nan at step 3; .*step-000002"):
            train("lora", tiny_sd1_dir, data, output=tmp_path / "run", progress=False,
                  options={**FAST, "steps": 4, "checkpoint_every": 1})  # fmt: skip
    finally:
        engine.Engine._micro_loss = original
    checkpoints = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert checkpoints == ["step-000001", "step-000002"]
    assert (tmp_path / "run" / "checkpoints" / "step-000002" / "complete").exists()


def test_dreambooth_class_images_are_generated_once(tiny_sd1_dir, data, lorastack_home, tmp_path):
    options = {**FAST, "steps": 1, "token": "aawxbc", "class_name": "figurine", "class_images": 2}
    train("dreambooth", tiny_sd1_dir, data, output=tmp_path / "r1", options=options, progress=False)
    folders = list((lorastack_home / "cache" / "class-images").iterdir())
    assert len(folders) == 1 and sorted(p.name for p in folders[0].iterdir()) == ["00000.png", "00001.png"]
    stamps = {p.name: p.stat().st_mtime_ns for p in folders[0].iterdir()}
    train("dreambooth", tiny_sd1_dir, data, output=tmp_path / "r2", options=options, progress=False)
    assert {p.name: p.stat().st_mtime_ns for p in folders[0].iterdir()} == stamps  # reused, not generated again
    train("dreambooth", tiny_sd1_dir, data, output=tmp_path / "r3", progress=False,
          options={**options, "class_name": "vase"})  # fmt: skip
    assert len(list((lorastack_home / "cache" / "class-images").iterdir())) == 2


def test_class_data_images_keep_their_own_captions(tmp_path):
    """Like kohya's regularisation folders: a captioned class image is trained on its caption, others on the class
    prompt; without a class there is no prompt for an uncaptioned one, which is an error naming it."""
    from lorastack.core.training.options import resolve
    from lorastack.plugins.trainers import DreamBoothTrainer, class_images

    folder = _folder(tmp_path / "class", count=3)
    (folder / "img2.txt").unlink()
    options = resolve(DreamBoothTrainer.options, {"token": "aawxbc", "class_data": folder, "class_images": 10},
                      "dreambooth")  # fmt: skip
    items = class_images(None, "a photo of figurine", options)
    assert sorted(i.caption for i in items) == ["a photo of figurine", "a square, colour 0", "a square, colour 1"]
    with pytest.raises(TrainingError, match=r"img2\.png has no caption.*--class"):
        class_images(None, None, options)


def test_frozen_text_encoder_outputs_are_cached(tiny_sd1_dir, data, tmp_path, lorastack_home):
    from lorastack.core import load_base

    pipe = load_base(tiny_sd1_dir)
    options = {**FAST, "steps": 3}
    first = train("lora", tiny_sd1_dir, data, output=tmp_path / "r1", options=options, progress=False, pipe=pipe)
    assert first.text_encodes >= 1
    second = train("lora", tiny_sd1_dir, data, output=tmp_path / "r2", options=options, progress=False, pipe=pipe)
    assert second.text_encodes == 0  # every caption came from the cache
    uncached = train("lora", tiny_sd1_dir, data, output=tmp_path / "r3", progress=False, pipe=pipe,
                     options={**options, "cache_text": False})  # fmt: skip
    assert uncached.text_encodes == 0 and uncached.losses == pytest.approx(second.losses, rel=1e-4)
    trains_text = train("lora", tiny_sd1_dir, data, output=tmp_path / "r4", progress=False, pipe=pipe,
                        options={**options, "text_encoder_lr": 1e-4})  # fmt: skip
    assert trains_text.text_encodes == 0  # a text encoder that trains is never cached
