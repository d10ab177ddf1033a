"""Read any supported adapter file into an :class:`~lorastack.adapters.adapter.Adapter`.

diffusers ships converters for kohya keys (``_convert_non_diffusers_lora_to_diffusers``), but they reject LoHa,
LoKr and LoCon-Tucker, drop DoRA scales, and convert into peft loading arguments rather than per-module records;
so the key grammar is parsed here, once, for every format, and diffusers serves as the oracle in the tests.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .adapter import Adapter
from .embeddings import split_embeddings
from .errors import AdapterError, AdapterFileError, InvalidAdapterError, NotAnAdapterError, quoted, shown
from .files import check_torch_dtypes, library_error, load_weights, read_safetensors_header, torch_dtype
from .fused import split
from .layers import FullLayer, Layer, LoHaLayer, LoKrLayer, LoRALayer, all_finite
from .metadata import LORA_ADAPTER_METADATA_KEY, parse_metadata, peft_alpha_configs
from .naming import KOHYA_PREFIXES, kohya_to_canonical, normalize_text_encoder_path
from .patterns import first_matches
from .probe import declaration
from .transformer_keys import ORIGINAL, T5, UNPREFIXED_TOPS
from .transformer_keys import locate as locate_transformer

# kohya / LyCORIS key suffix → layer field.
KOHYA_SUFFIXES = {
    "lora_down.weight": "down",
    "lora_up.weight": "up",
    "lora_mid.weight": "mid",
    "alpha": "alpha",
    "dora_scale": "dora_scale",
    "hada_w1_a": "w1_a",
    "hada_w1_b": "w1_b",
    "hada_w2_a": "w2_a",
    "hada_w2_b": "w2_b",
    "hada_t1": "t1",
    "hada_t2": "t2",
    "lokr_w1": "lokr.w1",
    "lokr_w1_a": "lokr.w1_a",
    "lokr_w1_b": "lokr.w1_b",
    "lokr_w2": "lokr.w2",
    "lokr_w2_a": "lokr.w2_a",
    "lokr_w2_b": "lokr.w2_b",
    "lokr_t2": "lokr.t2",
    "diff": "diff",
    "diff_b": "diff_b",
}
# diffusers / peft key suffix → (layer field, key style). Longest suffixes first.
DIFFUSERS_SUFFIXES = (
    (".lora_linear_layer.down.weight", "down", "diffusers-old"),
    (".lora_linear_layer.up.weight", "up", "diffusers-old"),
    (".lora_magnitude_vector.weight", "dora_scale", "peft"),
    (".lora_magnitude_vector", "dora_scale", "peft"),
    (".lora.down.weight", "down", "diffusers"),
    (".lora.up.weight", "up", "diffusers"),
    (".lora_A.weight", "down", "peft"),
    (".lora_B.weight", "up", "peft"),
    (".alpha", "alpha", "diffusers"),
)
# peft state dicts that still carry the adapter name: "….lora_A.<name>.weight".
_PEFT_NAMED = re.compile(r"^(?P<module>.+)\.lora_(?P<ab>[AB])\.[^.]+\.weight$")
# The attention-processor format of diffusers < 0.21: "….processor.to_q_lora.down.weight".
_OLD_PROCESSOR = re.compile(
    r"^(?P<module>.+?)(?:\.processor)?\.(?P<proj>to_q|to_k|to_v|to_out)_lora\.(?P<ud>down|up)\.weight$"
)
_OLD_UNET_PROJ = {"to_q": "to_q", "to_k": "to_k", "to_v": "to_v", "to_out": "to_out.0"}
_OLD_TE_PROJ = {"to_q": "q_proj", "to_k": "k_proj", "to_v": "v_proj", "to_out": "out_proj"}

_DIFFUSERS_COMPONENT_PREFIXES = ("unet.", "transformer.", "text_encoder_3.", "text_encoder_2.", "text_encoder.")
_KOHYA_STYLE_PREFIXES = (*(p for p, _ in KOHYA_PREFIXES), "lora_te3_", "lora_transformer_")
# key styles whose files store no alpha and take it from lora_adapter_metadata (or assume alpha = rank)
_PEFT_STYLES = ("peft", "diffusers", "diffusers-old")
_UNET_TOPS = ("down_blocks.", "up_blocks.", "mid_block.", "conv_in", "conv_out", "time_embedding.", "add_embedding.")
_FULL_CHECKPOINT_PREFIXES = ("model.diffusion_model.", "first_stage_model.", "cond_stage_model.", "conditioner.")
_EMBEDDING_KEYS = ("emb_params", "string_to_param", "clip_l", "clip_g")


@dataclass
class _Parts:
    """Tensors and alpha gathered for one module before they become a layer record."""

    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    keys: list[str] = field(default_factory=list)


def read_adapter(path: str | Path, allow_pickle: bool = False, tensors: bool = True) -> Adapter:
    """Read an adapter file (safetensors; pickle only with ``allow_pickle``) into canonical form.

    ``tensors=False`` reads a safetensors file's structure only: layers hold shape-only ("meta") tensors, alphas
    their real values, and the numbers themselves are neither loaded nor checked. Enough to know the format,
    family, kinds, ranks and metadata of a large file without reading it.
    """
    path = Path(path)
    if not tensors and path.suffix.lower() == ".safetensors":
        state, header = _structure(path)
        values = False
    else:
        state, header = load_weights(path, allow_pickle=allow_pickle)
        values = True
    try:
        adapter = parse_state_dict(state, header, check_values=values)
    except AdapterError as e:
        raise e.with_path(path) from None
    adapter.path = path
    return adapter


def _structure(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import SafetensorError, safe_open

    header = read_safetensors_header(path)
    check_torch_dtypes(header, path)
    # shapes only: meta tensors allocate nothing (the header's shapes are bounded, so torch can hold them)
    state = {
        name: torch.empty(info.shape, dtype=torch_dtype(info.dtype), device="meta")
        for name, info in header.tensors.items()
    }
    scalars = [name for name, info in header.tensors.items() if name.endswith(".alpha") and math.prod(info.shape) == 1]
    try:  # the library parses the header too (as a full read would), and reads the alphas' values
        with safe_open(str(path), framework="pt") as f:
            for name in scalars:
                state[name] = f.get_tensor(name)
    except (SafetensorError, OSError, RuntimeError, ValueError, TypeError, OverflowError) as e:
        raise AdapterFileError(f"cannot read the file: {library_error(e)}", path) from e
    return state, header.metadata


def parse_state_dict(
    tensors: dict[str, torch.Tensor], header: dict[str, str] | None = None, check_values: bool = True
) -> Adapter:
    """Parse a state dict (and its header metadata) into an :class:`Adapter`.

    ``check_values=False`` skips the NaN/infinity check (for shape-only tensors).
    """
    header = header or {}
    if not tensors:
        raise NotAnAdapterError("holds no tensors")
    tensors, embeddings = split_embeddings(tensors)
    for token, parts in embeddings.items():
        for component, vectors in parts.items():
            if check_values and not all_finite(vectors):
                raise InvalidAdapterError(
                    f"the embedding of {shown(token)} for {component} holds NaN or infinite values"
                )
    if not tensors:
        raise NotAnAdapterError("holds only textual-inversion embeddings, no LoRA layers")
    kohya = any(k.startswith(_KOHYA_STYLE_PREFIXES) for k in tensors)
    grouped: dict[str, _Parts] = {}
    group_style: dict[str, str] = {}
    sources: dict = {}
    styles: set[str] = set()
    unrecognized: list[str] = []
    for key, value in tensors.items():
        located = locate_transformer(key, KOHYA_SUFFIXES, sources)
        if located is None:
            located = _locate_kohya(key) if kohya else _locate_diffusers(key)
        if located is None:
            unrecognized.append(key)
            continue
        module, fld, style = located
        styles.add(style)
        group_style[module] = style
        parts = grouped.setdefault(module, _Parts())
        if fld in parts.tensors:
            raise InvalidAdapterError(f"{quoted(key, 120)} duplicates another key for module {shown(module, 120)}")
        parts.tensors[fld] = value
        parts.keys.append(key)
    if not grouped:
        raise NotAnAdapterError(_not_an_adapter_reason(tensors))
    metadata = parse_metadata(header)
    t5 = _t5_component(grouped, sources, header)
    layers: dict[str, Layer] = {}
    first_key: dict[str, str] = {}
    for group, parts in sorted(grouped.items()):
        layer = _build_layer(group, parts)
        try:
            layer.validate(values=check_values)
            if group.startswith(ORIGINAL):
                pieces = {f"transformer.{p}": piece for p, piece in split(sources[group], layer).items()}
            else:
                pieces = {f"{t5}.{group[len(T5) :]}" if group.startswith(T5) else group: layer}
        except InvalidAdapterError as e:
            raise InvalidAdapterError(f"{shown(parts.keys[0], 120)}: {e.problem}") from None
        for module, piece in pieces.items():
            if module in layers:
                raise InvalidAdapterError(
                    f"{shown(parts.keys[0], 120)} and {shown(first_key[module], 120)} both hold module {module}"
                )
            layers[module], first_key[module] = piece, parts.keys[0]
            group_style[module] = group_style[group]
    alpha_source = "file"
    needing = [m for m, layer in layers.items() if layer.alpha is None and group_style[m] in _PEFT_STYLES]
    if needing:
        alphas = _peft_alphas(needing, layers, header.get(LORA_ADAPTER_METADATA_KEY))
        for module in needing:
            alpha = layers[module].alpha = alphas[module]
            if alpha is not None and not math.isfinite(alpha):
                raise InvalidAdapterError(f"{shown(first_key[module], 120)}: alpha is {alpha}")
        alpha_source = "assumed" if alphas[needing[-1]] is None else "metadata"
    return Adapter(
        layers=layers,
        metadata=metadata,
        source_format=_source_format(styles),
        key_styles=tuple(sorted(styles)),
        unrecognized_keys=tuple(sorted(unrecognized)),
        alpha_source=alpha_source,
        embeddings=embeddings,
        layout_family=_layout_family(sources),
    )


def _layout_family(sources: dict) -> str | None:
    families = {s.family for s in sources.values()}
    return families.pop() if len(families) == 1 else None


def _source_format(styles: set[str]) -> str:
    if styles & {"kohya", "kohya-sgm", "onetrainer"}:
        return "kohya"
    if styles & {"bfl", "xlabs"}:
        return "bfl"
    return "diffusers"


def _t5_component(grouped: dict, sources: dict, header: dict[str, str]) -> str:
    """Where T5 layers read from kohya names go: ``text_encoder_3`` in an SD3 adapter, ``text_encoder_2`` in Flux."""
    if not any(g.startswith(T5) for g in grouped):
        return "text_encoder_2"
    found = declaration(header)
    if found is not None and found[0] in ("flux", "sd3"):
        return "text_encoder_3" if found[0] == "sd3" else "text_encoder_2"
    sd3 = any(s.family == "sd3" for s in sources.values()) or any(
        g.startswith(("text_encoder_2.", "text_encoder_3.")) for g in grouped
    )
    return "text_encoder_3" if sd3 else "text_encoder_2"


def _locate_kohya(key: str) -> tuple[str, str, str] | None:
    lora_name, _, suffix = key.partition(".")
    fld = KOHYA_SUFFIXES.get(suffix)
    if fld is None:
        return None
    module = kohya_to_canonical(lora_name)
    if module is None:
        return None
    sgm = lora_name.startswith("lora_unet_") and lora_name[len("lora_unet_") :].startswith(
        ("input_blocks", "middle_block", "output_blocks", "time_embed_", "label_emb", "out_")
    )
    return module, fld, "kohya-sgm" if sgm else "kohya"


def _locate_diffusers(key: str) -> tuple[str, str, str] | None:
    k = key[len("base_model.model.") :] if key.startswith("base_model.model.") else key
    component = next((p[:-1] for p in _DIFFUSERS_COMPONENT_PREFIXES if k.startswith(p)), None)
    if component is not None:
        k = k[len(component) + 1 :]
    located = _diffusers_suffix(k)
    if located is None:
        return None
    path, fld, style = located
    if component is None:  # un-prefixed files (peft/unet-only saves): tell the component by the path
        if path.startswith(_UNET_TOPS):
            component = "unet"
        elif path.startswith(UNPREFIXED_TOPS) or path in ("proj_out", "x_embedder", "context_embedder"):
            component = "transformer"
        elif path.startswith(("text_model.", "encoder.layers.")):
            component = "text_encoder"
        else:
            return None
    if component.startswith("text_encoder"):
        path = normalize_text_encoder_path(path)
    return f"{component}.{path}", fld, "diffusers-old" if style == "diffusers-old-processor" else style


def _diffusers_suffix(k: str) -> tuple[str, str, str] | None:
    for suffix, fld, style in DIFFUSERS_SUFFIXES:
        if k.endswith(suffix):
            return k[: -len(suffix)], fld, style
    m = _OLD_PROCESSOR.match(k)
    if m:
        module, proj = m.group("module"), m.group("proj")
        te = module.endswith("self_attn")
        path = f"{module}.{(_OLD_TE_PROJ if te else _OLD_UNET_PROJ)[proj]}"
        return path, "down" if m.group("ud") == "down" else "up", "diffusers-old-processor"
    m = _PEFT_NAMED.match(k)
    if m:
        return m.group("module"), "down" if m.group("ab") == "A" else "up", "peft"
    return None


def _build_layer(module: str, parts: _Parts) -> Layer:
    t = dict(parts.tensors)
    alpha_t = t.pop("alpha", None)
    alpha = None
    name = shown(module, 120)
    if alpha_t is not None:
        if alpha_t.numel() != 1:
            raise InvalidAdapterError(f"{name}: alpha must be a single number, got shape {tuple(alpha_t.shape)}")
        if alpha_t.dtype == torch.bool or alpha_t.is_complex():
            raise InvalidAdapterError(f"{name}: alpha must be a real number, got a {alpha_t.dtype} value")
        alpha = float(alpha_t.reshape(()).item())
        if not math.isfinite(alpha):
            raise InvalidAdapterError(f"{name}: alpha is {alpha}")
    dora = t.pop("dora_scale", None)
    lokr = {k.split(".", 1)[1]: v for k, v in t.items() if k.startswith("lokr.")}
    fields_ = set(t)
    if lokr and fields_ == {f"lokr.{k}" for k in lokr}:
        return LoKrLayer(**lokr, alpha=alpha, dora_scale=dora)
    if fields_ in ({"down", "up"}, {"down", "up", "mid"}):
        return LoRALayer(t["down"], t["up"], t.get("mid"), alpha=alpha, dora_scale=dora)
    if {"w1_a", "w1_b", "w2_a", "w2_b"} <= fields_ <= {"w1_a", "w1_b", "w2_a", "w2_b", "t1", "t2"}:
        return LoHaLayer(**t, alpha=alpha, dora_scale=dora)
    if fields_ in ({"diff"}, {"diff", "diff_b"}):
        return FullLayer(t["diff"], t.get("diff_b"), alpha=alpha, dora_scale=dora)
    present = shown(", ".join(sorted(parts.keys)), 200)
    if fields_ == {"down"} or fields_ == {"up"}:
        missing = "lora_up" if fields_ == {"down"} else "lora_down"
        raise InvalidAdapterError(f"{name}: has {present} but no {missing}")
    raise InvalidAdapterError(f"{name}: keys {present} do not form a known layer type")


def _peft_alphas(modules: list[str], layers: dict[str, Layer], raw: str | None) -> dict[str, float | None]:
    """Alphas of diffusers-format layers from ``lora_adapter_metadata``; ``None`` (alpha = rank) without it, as
    diffusers does.

    Per component, the first ``alpha_pattern`` key that matches the module under peft's rule wins, else
    ``lora_alpha`` (:func:`~lorastack.adapters.patterns.first_matches` evaluates the file's keys in linear time);
    rsLoRA's alpha/sqrt(r) is kept as an exact alpha/r scale.
    """
    configs = peft_alpha_configs(raw) if raw else {}
    by_component: dict[str, list[str]] = {}
    for module in modules:
        by_component.setdefault(module.partition(".")[0], []).append(module)
    alphas: dict[str, float | None] = {}
    for component, group in by_component.items():
        config = configs.get(component) or configs.get("")
        if config is None:
            alphas.update(dict.fromkeys(group, None))
            continue
        keys = list(config.alpha_pattern)
        prefix = f"{component}." if component in configs else ""
        what = f"{LORA_ADAPTER_METADATA_KEY} {prefix}alpha_pattern key"
        found = first_matches(keys, [m.partition(".")[2] for m in group], what) if keys else [None] * len(group)
        for module, index in zip(group, found, strict=True):
            alpha = config.alpha_pattern[keys[index]] if index is not None else config.lora_alpha
            rank = layers[module].rank
            if alpha is not None and config.use_rslora and rank:
                alpha = alpha * math.sqrt(rank)  # rsLoRA scales by alpha/sqrt(r); keep scale = alpha/r exact
            alphas[module] = alpha
    return alphas


def _not_an_adapter_reason(tensors: dict[str, torch.Tensor]) -> str:
    keys = list(tensors)
    if any(k.startswith(_FULL_CHECKPOINT_PREFIXES) for k in keys):
        return "is a full Stable Diffusion checkpoint (original layout), not an adapter; use it as a base model"
    if any(k.endswith((".conv1.weight", ".to_q.weight", ".q_proj.weight")) for k in keys):
        return "holds full model weights, not an adapter; use it as a base model"
    if any(k in _EMBEDDING_KEYS or k.startswith("string_to_param") for k in keys):
        return "is a textual-inversion embedding, not a LoRA adapter"
    sample = ", ".join(quoted(k) for k in keys[:3])
    return f"holds no LoRA/LyCORIS keys lorastack knows (first keys: {sample})"
