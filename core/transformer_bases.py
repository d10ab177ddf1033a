"""FLUX.1 and SD3.x bases from single files: a transformer alone plus its parts, or a bundled checkpoint.

Everything is checked from headers before a weight is read: which parts there are and where each comes from (a
component file given by the caller wins over the part bundled in the checkpoint), that each is the right kind and
width, and that every converted key and shape is the one the model built from the config expects. Weights stored
as fp8 (or fp16/bf16) are upcast to the compute dtype as they are read.

Parts come from (``slot`` is the pipeline attribute and the keyword of :func:`~lorastack.core.base.load_base`)::

    flux: text_encoder  CLIP-L   text_encoder_2  T5 v1.1 XXL                          vae
    sd3:  text_encoder  CLIP-L   text_encoder_2  CLIP-G   text_encoder_3  T5 v1.1 XXL  vae
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from .checkpoint_parts import KIND_NAMES, Part, bundled_role, read_parts, transformer_part, variant
from .errors import BaseModelError
from .gguf_parts import is_gguf
from .quantized import load_gguf_denoiser
from .tokenizers import load_t5_tokenizer

#: family → slot → (kind, role in bundled checkpoints, what people call it, a typical file name)
SLOTS: dict[str, dict[str, tuple[str, str, str, str]]] = {
    "flux": {
        "text_encoder": ("clip", "clip_l", "CLIP-L", "clip_l.safetensors"),
        "text_encoder_2": ("t5", "t5xxl", "T5 v1.1 XXL", "t5xxl_fp16.safetensors"),
        "vae": ("vae", "vae", "the VAE", "ae.safetensors"),
    },
    "sd3": {
        "text_encoder": ("clip", "clip_l", "CLIP-L", "clip_l.safetensors"),
        "text_encoder_2": ("clip", "clip_g", "CLIP-G", "clip_g.safetensors"),
        "text_encoder_3": ("t5", "t5xxl", "T5 v1.1 XXL", "t5xxl_fp16.safetensors"),
        "vae": ("vae", "vae", "the VAE", "sd3 vae.safetensors"),
    },
}
COMPONENT_SLOTS = ("text_encoder", "text_encoder_2", "text_encoder_3", "vae")
FAMILY_LABELS = {"flux": "FLUX.1", "sd3": "SD3"}
_ERRORS_SHOWN = 3  # keys named in a mismatch message


def flag(slot: str) -> str:
    """The CLI option that supplies a slot (``--text-encoder-2``)."""
    return "--" + slot.replace("_", "-")


def load_transformer_base(
    path: Path,
    parts: list[Part],
    *,
    torch_dtype: torch.dtype,
    config: Path | None,
    components: dict[str, str | Path],
    t5_tokenizer: str | Path | None,
    hf_cache_dir: str | Path | None,
):
    """The pipeline of a FLUX.1 / SD3 single file and what to record about it (variant, component files)."""
    transformer = transformer_part(parts)
    assert transformer is not None
    family = "flux" if transformer.kind == "flux" else "sd3"
    name = variant(transformer)
    config_dir = Path(config) if config is not None else shipped_transformer_config(name)
    if not (config_dir / "model_index.json").is_file():
        raise BaseModelError(f"{config_dir}: not a diffusers config folder (no model_index.json)")
    slots = SLOTS[family]
    for slot, file in components.items():
        if slot not in slots:
            t5 = next(s for s, v in slots.items() if v[0] == "t5")
            raise BaseModelError(
                f"{flag(slot)} {file}: a {FAMILY_LABELS[family]} base has no {slot} "
                f"(its parts: {', '.join(flag(s) for s in slots)}; its T5 is {flag(t5)})"
            )
    sources = {slot: _source(path, parts, family, slot, components.get(slot)) for slot in slots}
    missing = [slot for slot, part in sources.items() if part is None]
    if missing:
        what = ", ".join(f"{flag(s)} {slots[s][2]} (e.g. {slots[s][3]})" for s in missing)
        raise BaseModelError(
            f"{path}: {transformer.label} without {_names([slots[s][2] for s in missing])}; give {what}, "
            "or load a checkpoint that bundles them"
        )
    configs = {"transformer": _config(config_dir, "transformer")}
    configs.update({slot: _config(config_dir, slot) for slot in slots})
    _check_widths(family, sources, configs, slots)
    tokenizers = _tokenizers(family, config_dir, t5_tokenizer, hf_cache_dir, configs[_t5_slot(family)])
    index = json.loads((config_dir / "model_index.json").read_text())
    plan = {"transformer": transformer, **sources}
    models = {slot: _empty_model(index, slot, configs[slot], config_dir) for slot in plan}
    for slot, part in plan.items():  # every key and shape, from the headers, before any weight is read
        _check_keys(slot, part, models[slot], configs[slot])
    for slot, part in plan.items():
        if is_gguf(part.path):  # diffusers' GGUF loader keeps the quantized tensors quantized (GGUFLinear)
            models[slot] = load_gguf_denoiser(part.path, config_dir, torch_dtype, slot).eval()
        else:
            _load_weights(models[slot], part, configs[slot], torch_dtype, slot)
    pipe = _pipeline(family, index, config_dir, models, tokenizers)
    record: dict[str, Any] = {"variant": name}
    given = {slot: Path(file).resolve() for slot, file in components.items()}
    if given:
        record["components"] = {slot: {"path": str(p), "size": p.stat().st_size} for slot, p in given.items()}
    if t5_tokenizer is not None:
        record["t5_tokenizer"] = str(Path(t5_tokenizer).resolve())
    return pipe, record


def shipped_transformer_config(name: str) -> Path:
    """The shipped config folder of ``flux1-dev``, ``flux1-schnell``, ``sd3-medium``, ``sd3.5-medium`` or
    ``sd3.5-large`` (JSON only: the published diffusers configs)."""
    from importlib import resources

    return Path(str(resources.files("lorastack.core") / "configs" / name))


def _names(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _source(path: Path, parts: list[Part], family: str, slot: str, file: str | Path | None) -> Part | None:
    kind, role, label, _ = SLOTS[family][slot]
    if file is None:  # the part bundled in the checkpoint, if any
        for part in parts:
            if part.kind == kind and (kind == "vae" or bundled_role(part) == role):
                return part
        return None
    file = Path(file).expanduser()
    if not file.is_file():
        raise BaseModelError(f"{flag(slot)} {file}: no such file")
    found = read_parts(file)
    matching = [p for p in found if p.kind == kind]
    if kind == "clip" and len(matching) > 1:  # a bundle given as a component: the part its prefix names
        matching = [p for p in matching if bundled_role(p) == role] or matching
    if not matching:
        held = _names(sorted({KIND_NAMES.get(p.kind, "unrecognised weights") for p in found}))
        hint = ""
        for other, spec in SLOTS[family].items():
            if other != slot and any(p.kind == spec[0] for p in found):
                hint = f"; that is {flag(other)} of a {FAMILY_LABELS[family]} base"
                break
        raise BaseModelError(f"{flag(slot)} {file}: holds {held}, but {flag(slot)} takes {label}{hint}")
    return matching[0]


def _config(config_dir: Path, slot: str) -> dict[str, Any]:
    file = config_dir / slot / "config.json"
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise BaseModelError(f"{file}: cannot read the {slot} config ({e})") from None


def _t5_slot(family: str) -> str:
    return "text_encoder_2" if family == "flux" else "text_encoder_3"


def _check_widths(family, sources, configs, slots) -> None:
    """The text encoders' widths against the configs: a CLIP-G given as CLIP-L, a T5 of another size."""
    joint = configs["transformer"].get("joint_attention_dim")
    for slot, part in sources.items():
        kind, _, label, _ = slots[slot]
        if kind == "clip":
            want = configs[slot].get("hidden_size")
            if part.width != want:
                raise BaseModelError(
                    f"{part.path}: a CLIP text encoder of width {part.width}, but {flag(slot)} of this "
                    f"{FAMILY_LABELS[family]} base is {label} of width {want}"
                )
        elif kind == "t5":
            if part.width != joint:
                raise BaseModelError(
                    f"{part.path}: a T5 encoder of width {part.width}, but the transformer takes T5 features of width "
                    f"{joint} (its joint_attention_dim); {flag(slot)} needs {label}"
                )
            if part.width != configs[slot].get("d_model"):
                raise BaseModelError(
                    f"{part.path}: a T5 encoder of width {part.width}, but the {slot} config's is "
                    f"{configs[slot].get('d_model')}"
                )


def _tokenizers(family, config_dir: Path, t5_tokenizer, hf_cache_dir, t5_config) -> dict[str, Any]:
    from transformers import CLIPTokenizer

    from .tokenizers import clip_tokenizer

    def clip(sub: str, pad: str):
        folder = config_dir / sub
        if (folder / "vocab.json").is_file() or (folder / "tokenizer.json").is_file():
            return CLIPTokenizer.from_pretrained(str(folder))
        return clip_tokenizer(pad)

    t5_sub = "tokenizer_2" if family == "flux" else "tokenizer_3"
    local = config_dir / t5_sub
    t5 = load_t5_tokenizer(
        t5_tokenizer if t5_tokenizer is not None else (local if local.is_dir() else None),
        family,
        hf_cache_dir,
        vocab_size=t5_config.get("vocab_size"),
    )
    out = {"tokenizer": clip("tokenizer", "<|endoftext|>"), t5_sub: t5}
    if family == "sd3":
        out["tokenizer_2"] = clip("tokenizer_2", "!")  # OpenCLIP bigG pads with "!", as SDXL's second tokenizer
    return out


def _empty_model(index: dict, slot: str, config: dict[str, Any], config_dir: Path):
    """The slot's model with its parameters on the meta device (buffers real), from the config."""
    import diffusers
    import transformers
    from accelerate import init_empty_weights

    library, class_name = index.get(slot, [None, None])
    cls = getattr(diffusers if library == "diffusers" else transformers, str(class_name), None)
    if cls is None:
        raise BaseModelError(f"{config_dir}/model_index.json: {slot} names no known class ({class_name!r})")
    with init_empty_weights():
        if library == "diffusers":
            return cls.from_config(cls.load_config(str(config_dir), subfolder=slot))
        model_config = cls.config_class.from_pretrained(str(config_dir), subfolder=slot, local_files_only=True)
        return cls(model_config)


def _converted(model, part: Part, config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> dict:
    from .transformer_layouts import clip_to_model, flux_to_diffusers, sd3_to_diffusers, t5_to_model, vae_to_diffusers

    if part.kind == "flux":
        return flux_to_diffusers(tensors, config)
    if part.kind == "sd3":
        return sd3_to_diffusers(tensors, config)
    if part.kind == "vae":
        return tensors if part.layout == "diffusers" else vae_to_diffusers(tensors, config)
    if part.kind == "clip":
        return clip_to_model(tensors, hasattr(model, "text_model"), hasattr(model, "text_projection"))
    return t5_to_model(tensors)


def _check_keys(slot: str, part: Part, model, config: dict[str, Any]) -> None:
    meta = {k: torch.empty(s, device="meta") for k, s in part.shapes.items()}
    try:
        converted = _converted(model, part, config, meta)
    except (KeyError, IndexError, RuntimeError, ValueError) as e:
        raise BaseModelError(f"{part.path}: {part.label} with an unexpected layout for {slot} ({e})") from None
    expected = model.state_dict()
    where = f"{part.path}{f' ({part.prefix}*)' if part.prefix else ''}"
    absent = [k for k in expected if k not in converted]
    if absent:
        raise BaseModelError(
            f"{where}: {len(absent)} {slot} weight(s) missing, e.g. {', '.join(absent[:_ERRORS_SHOWN])}; "
            "the file does not match the config (pass config= / --config for a pruned or resized model)"
        )
    extra = [k for k in converted if k not in expected]
    if extra:
        raise BaseModelError(f"{where}: {len(extra)} tensor(s) {slot} has no place for, e.g. {', '.join(extra[:3])}")
    for key, tensor in converted.items():
        if tuple(tensor.shape) != tuple(expected[key].shape):
            raise BaseModelError(
                f"{where}: {key} has shape {list(tensor.shape)} but the {slot} config makes "
                f"{list(expected[key].shape)}; the file is another size than the config"
            )


def _load_weights(model, part: Part, config: dict[str, Any], torch_dtype: torch.dtype, slot: str) -> None:
    from safetensors import safe_open

    tensors = {}
    try:
        with safe_open(str(part.path), framework="pt", device="cpu") as f:
            for key in part.shapes:
                tensors[key] = f.get_tensor(part.prefix + key)
    except Exception as e:  # the header was valid a moment ago: the file changed or the disk failed
        raise BaseModelError(f"{part.path}: cannot read the {slot} weights ({str(e)[:120]})") from e
    keep_fp32 = tuple(getattr(model, "_keep_in_fp32_modules", None) or ()) if torch_dtype == torch.float16 else ()
    state = {}
    for key, value in _converted(model, part, config, tensors).items():
        dtype = torch.float32 if any(m in key.split(".") for m in keep_fp32) else torch_dtype
        state[key] = value.to(dtype) if value.is_floating_point() else value
    model.load_state_dict(state, strict=True, assign=True)
    if hasattr(model, "shared") and hasattr(model, "encoder"):  # T5: one embedding, as from_pretrained ties it
        model.encoder.embed_tokens = model.shared
    model.eval()


def _pipeline(family: str, index: dict, config_dir: Path, models: dict, tokenizers: dict):
    import diffusers

    scheduler_name = index.get("scheduler", [None, "FlowMatchEulerDiscreteScheduler"])[1]
    scheduler_cls = getattr(diffusers, str(scheduler_name), diffusers.FlowMatchEulerDiscreteScheduler)
    scheduler = scheduler_cls.from_pretrained(str(config_dir), subfolder="scheduler")
    if family == "flux":
        return diffusers.FluxPipeline(scheduler=scheduler, **models, **tokenizers)
    return diffusers.StableDiffusion3Pipeline(
        scheduler=scheduler, **models, **tokenizers, image_encoder=None, feature_extractor=None
    )
