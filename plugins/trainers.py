"""Built-in trainers: ``lora`` (captioned images) and ``dreambooth`` (a token + class, prior preservation).

Written like any third-party plugin: only lorastack's public API (``lorastack.core.training``,
``lorastack.core.interfaces``) is used.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re

from lorastack.plugins.api import (
    MAX_LEARNING_RATE,
    MAX_STEPS,
    DatasetItem,
    Option,
    TrainingError,
    hookimpl,
    one_line,
    open_image,
)

log = logging.getLogger("lorastack.train")


class LoraTrainer:
    name = "lora"
    description = "Text-to-image LoRA on captioned images (a style or a subject)."
    options = (Option("trigger", "str", "", "Trigger words recorded in the adapter (comma-separated)."),)

    def train(self, context, options):
        context.trigger_words = [w.strip() for w in options.trigger.split(",") if w.strip()]
        missing = [item.source for item in context.dataset.items if not item.caption]
        if missing and not options.caption_prefix:
            first = one_line(missing[0])  # a file name: may hold control characters
            log.warning("%d images have no caption (%s, …): they train as unconditional", len(missing), first)
        return context.engine(context.dataset.items).train()


class DreamBoothTrainer:
    name = "dreambooth"
    description = "DreamBooth-LoRA: a rare token + a class ('a photo of aawxbc figurine'), with prior preservation."
    options = (
        Option("token", "str", None, "The rare token that names the subject, e.g. aawxbc.", required=True),
        Option("class_name", "str", "", "The subject's class, e.g. figurine (enables prior preservation)."),
        Option("instance_prompt", "str", "a photo of {token} {class_name}", "Prompt of the subject's images."),
        Option("class_prompt", "str", "a photo of {class_name}", "Prompt of the class images."),
        Option("prior_preservation", "bool", True, "Train on class images too, so the class keeps its meaning."),
        # 1 is the DreamBooth paper's weight; a class loss 100 times the subject's teaches nothing of the subject
        Option("prior_loss_weight", "float", 1.0, "Weight of the class images' loss.", minimum=0, maximum=100),
        # each is generated once with the base (a full sampling run); papers use 100–300, kohya users up to thousands
        Option(
            "class_images",
            "int",
            50,
            "How many class images (generated with the base when missing).",
            minimum=1,
            maximum=10_000,
        ),
        Option("class_data", "path", None, "Class images to use instead of generating them (captions kept)."),
        Option("use_captions", "bool", False, "Use the images' own captions, with the token prefixed."),
    )

    def check(self, options) -> None:
        token = (options.token or "").strip()
        if not token:
            raise TrainingError("dreambooth needs --token (a rare word such as aawxbc) to name the subject")
        if not re.fullmatch(r"[A-Za-z0-9_<>-]+", token):
            raise TrainingError(f"--token {token!r} must be one word of letters and digits, e.g. aawxbc")

    def train(self, context, options):
        self.check(options)
        token, class_name = options.token.strip(), options.class_name.strip()
        _warn_common_token(context.pipe, token)
        context.trigger_words = [token]
        items = _instance_items(context, options, token, class_name)
        prior = []
        if options.prior_preservation and (class_name or options.class_data is not None):
            class_prompt = _prompt(options.class_prompt, class_name=class_name)
            prior = class_images(context, class_prompt if class_name else None, options)
        return context.engine(items, prior_items=prior, prior_weight=options.prior_loss_weight).train()


class PivotalTrainer:
    name = "pivotal"
    description = "Pivotal tuning: new token embeddings (textual inversion) and a LoRA, trained and saved together."
    options = (
        Option("token", "str", None, "The new token, e.g. aawxbc (becomes --vectors vectors).", required=True),
        Option("class_name", "str", "", "The subject's class, e.g. figurine (also the embeddings' starting point)."),
        Option("instance_prompt", "str", "a photo of {token} {class_name}", "Prompt of the subject's images."),
        # CLIP reads 75 tokens: a token of more vectors than 64 leaves the prompt no room
        Option("vectors", "int", 2, "Embedding vectors per token.", minimum=1, maximum=64),
        Option("init_word", "str", "", "Word the embeddings start from (default: the class)."),
        Option("ti_steps", "int", None, "Steps that train only the embeddings before LoRA joins (default: a third).",
               minimum=0, maximum=MAX_STEPS),
        Option("ti_learning_rate", "float", 5e-4, "Learning rate of the embeddings.", minimum=0,
               exclusive_minimum=True, maximum=MAX_LEARNING_RATE),
        Option("use_captions", "bool", False, "Use the images' own captions, with the token prefixed."),
        Option("enable_t5_ti", "bool", False, "Train T5 embeddings too (diffusers' advanced Flux script): not "
               "supported, adapter files bundle CLIP embeddings only; T5 reads the token as a word."),
    )  # fmt: skip

    def check(self, options) -> None:
        DreamBoothTrainer.check(self, options)
        if options.enable_t5_ti:
            raise TrainingError("--enable-t5-ti is not supported: adapter files bundle CLIP embeddings only "
                                "(clip_l/clip_g), so pivotal tuning trains the CLIP token and T5 reads it as a word; "
                                "drop --enable-t5-ti")  # fmt: skip

    def train(self, context, options):
        from lorastack.plugins.api import NewTokens

        self.check(options)
        token, class_name = options.token.strip(), options.class_name.strip()
        ti_steps = options.steps // 3 if options.ti_steps is None else options.ti_steps
        tokens = NewTokens(context.pipe, token, options.vectors, options.init_word or class_name,
                           options.seed, options.ti_learning_rate, ti_steps)  # fmt: skip
        context.trigger_words = [token]
        # captions keep the token as a word: the engine writes it out as its vectors for the CLIP tokenizers only
        items = _instance_items(context, options, token, class_name)
        try:
            return context.engine(items, extras=tokens).train()
        finally:
            tokens.close()


def _prompt(template: str, **fields) -> str:
    return re.sub(r"\s+", " ", template.format(**fields)).strip()


def _instance_items(context, options, token: str, class_name: str) -> list:
    """The subject's images with their prompts: the instance prompt, or (``use_captions``) the token + caption."""
    prompt = _prompt(options.instance_prompt, token=token, class_name=class_name)
    return [
        DatasetItem(image=i.image, caption=f"{token} {i.caption}" if options.use_captions and i.caption else prompt,
                    source=i.source, mask=i.mask, concept=class_name or i.concept, key=i.key, path=i.path)
        for i in context.dataset.items
    ]  # fmt: skip


def _warn_common_token(pipe, token: str) -> None:
    vocab = getattr(pipe.tokenizer, "encoder", None) or pipe.tokenizer.get_vocab()
    if f"{token.lower()}</w>" in vocab and len(token) > 3:
        log.warning("--token %r is already a word the text encoder knows; a rare token (e.g. aawxbc) learns "
                    "faster and does not change that word's meaning", token)  # fmt: skip


def class_images(context, prompt: str | None, options) -> list[DatasetItem]:
    """Class images for prior preservation: the user's folder, or images the base generates once and reuses.

    In the user's folder an image's own caption (sidecar, metadata) is its prompt, as kohya's regularisation
    folders work; images without one take the class prompt (``prompt``; ``None`` without a class name).

    Generated images are cached under ``LORASTACK_HOME/cache/class-images/<key>``, keyed by the base's digest, the
    prompt, the resolution, the seed and the base's recommended guidance, so a second run (or a resumed one) does
    not generate them again.
    """
    count = options.class_images
    if options.class_data is not None:
        from lorastack.plugins.api import open_dataset

        folder = open_dataset(options.class_data, "folder")
        items = folder.items[:count]
        bare = [i.source for i in items if not i.caption]
        if bare and prompt is None:
            raise TrainingError(f"class image {bare[0]} has no caption: give it one, or give --class so it "
                                "takes the class prompt")  # fmt: skip
        return [DatasetItem(i.image, i.caption or prompt, i.source, key=i.key) for i in items]
    from lorastack.plugins.api import atomic_path, data_home, guidance_kwargs, image_key, model_digest

    size = options.resolution
    digest = model_digest(context.pipe)
    guidance = guidance_kwargs(context.pipe)
    extra = context.sample_kwargs()  # Flux's and SD3's T5 length
    key = hashlib.sha256(
        json.dumps([digest, prompt, size, options.seed, *guidance.values(), *extra.values()]).encode()
    )
    folder = data_home() / "cache" / "class-images" / key.hexdigest()[:24]
    folder.mkdir(parents=True, exist_ok=True)
    context.wait_for_everyone()  # every process lists the folder before any writes to it: the same list
    missing = [index for index in range(count) if not (folder / f"{index:05d}.png").exists()]
    # under several processes each generates its share of them (each image has its own seed), then all read all
    mine = context.share(missing)
    if missing:
        context.status(f"generating {len(missing)} class images ({prompt or 'unconditional'!r}) with the base; they "
                       f"are cached for later runs in {folder}")  # fmt: skip
        bar = context.progress_bar(len(mine), "class image")
        for index in mine:
            import torch

            g = torch.Generator().manual_seed(options.seed * 100_003 + index)
            image = context.pipe(prompt, num_inference_steps=options.sample_steps, generator=g, height=size,
                                 width=size, **guidance, **extra).images[0]  # fmt: skip
            with atomic_path(folder / f"{index:05d}.png", durable=False) as tmp:  # a cache: a torn file is redone
                image.save(tmp)
            bar.update(1)
        bar.close()
        context.wait_for_everyone()
    items = []
    for index in range(count):
        path = folder / f"{index:05d}.png"
        data = path.read_bytes()
        items.append(DatasetItem(open_image(data, path.name), prompt, f"class/{path.name}",
                                 key=image_key(data), path=path))  # fmt: skip
    return items


@hookimpl
def register_trainers(register):
    register(LoraTrainer())
    register(DreamBoothTrainer())
    register(PivotalTrainer())
