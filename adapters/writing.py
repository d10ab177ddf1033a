"""Write an :class:`~lorastack.adapters.adapter.Adapter` as a diffusers/peft or a kohya file.

diffusers has a kohya exporter (``convert_state_dict_to_kohya``) but it writes alpha = rank whatever the real
alpha is, keeps diffusers block names for SDXL, and under transformers 5 drops the ``text_model_`` level that
A1111 and ComfyUI need in text-encoder keys; so both writers live here, and the tests load their output back
through diffusers.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import torch

from .adapter import Adapter
from .constants import FAMILIES, FORMATS
from .embeddings import embedding_tensors
from .errors import UnknownFormatError, UnsupportedAdapterError
from .files import _unshared, atomic_write_safetensors
from .layers import FullLayer, LoKrLayer, LoRALayer
from .metadata import LORA_ADAPTER_METADATA_KEY, build_header
from .naming import canonical_to_kohya, split_component
from .transformer_writing import bfl_tensors, kohya_tensors

TRANSFORMER_FAMILIES = ("flux", "sd3")
#: sd-scripts' network module and the reference implementation, per transformer family
_TRANSFORMER_MODULES = {"flux": "networks.lora_flux", "sd3": "networks.lora_sd3"}
_IMPLEMENTATIONS = {
    "sdxl": "https://github.com/Stability-AI/generative-models",
    "flux": "https://github.com/black-forest-labs/flux",
    "sd3": "https://github.com/Stability-AI/sd3.5",
}

# layer field → kohya / LyCORIS key suffix
KOHYA_FIELD_SUFFIX = {
    "down": "lora_down.weight",
    "up": "lora_up.weight",
    "mid": "lora_mid.weight",
    "dora_scale": "dora_scale",
    "w1_a": "hada_w1_a",
    "w1_b": "hada_w1_b",
    "w2_a": "hada_w2_a",
    "w2_b": "hada_w2_b",
    "t1": "hada_t1",
    "t2": "hada_t2",
    "diff": "diff",
    "diff_b": "diff_b",
}
LOKR_FIELD_SUFFIX = {f: f"lokr_{f}" for f in ("w1", "w1_a", "w1_b", "w2", "w2_a", "w2_b", "t2")}
DIFFUSERS_WEIGHT_NAME = "pytorch_lora_weights.safetensors"


def write_adapter(
    adapter: Adapter,
    path: str | Path,
    format: str = "diffusers",
    family: str | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write ``adapter`` to ``path`` atomically in ``format`` (``"diffusers"``, ``"kohya"`` or, for FLUX.1 and
    SD 3.x adapters, ``"bfl"``: the original layout under ``diffusion_model.``, ComfyUI's native keys).

    ``family`` picks family-specific key spellings (SDXL kohya files use SGM block names) and is declared in the
    header; by default the probed family, declared unless it is a guess from topology alone (the header then
    declares only what the source's header did). ``dtype`` casts the weights (alphas stay float32).
    """
    if format not in FORMATS:
        raise UnknownFormatError(f"Unknown format {format!r}; choose one of {', '.join(FORMATS)}.")
    declare = True if family else None
    family = family or adapter.family
    if format == "diffusers":
        tensors, header = diffusers_state_dict(adapter, family, dtype, declare=declare)
    else:
        tensors, header = kohya_state_dict(adapter, family, dtype, declare=declare, layout=format)
    tensors.update(embedding_tensors(adapter.embeddings, family))
    header["sshs_model_hash"] = tensor_data_sha256(tensors)
    return atomic_write_safetensors(tensors, path, header)


def tensor_data_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 of the data section the file will have (kohya's ``sshs_model_hash``; metadata does not change it)."""
    from safetensors.torch import save

    blob = save(_unshared(tensors))
    header_size = int.from_bytes(blob[:8], "little")
    return hashlib.sha256(memoryview(blob)[8 + header_size :]).hexdigest()


def _cast(t: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    return t.to(dtype) if dtype is not None and t.is_floating_point() else t


def _network_module(adapter: Adapter, family: str | None = None) -> str:
    plain = all(
        isinstance(layer, LoRALayer) and layer.mid is None and not layer.is_dora for layer in adapter.layers.values()
    )
    return _TRANSFORMER_MODULES.get(family or "", "networks.lora") if plain else "lycoris.kohya"


def _declared(adapter: Adapter, family: str | None, declare: bool | None) -> str | None:
    """The family a written header declares: ``family``, unless (``declare`` left ``None``) it is the probe's guess
    from topology, which a file must not turn into a declaration (the runtime refuses a declared family that is not
    the base's)."""
    if declare is None:
        declare = family != adapter.family or not adapter.probe.guessed
    return family if declare else None


def kohya_state_dict(
    adapter: Adapter,
    family: str | None,
    dtype: torch.dtype | None = None,
    *,
    declare: bool | None = None,
    layout: str = "kohya",
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and header of the kohya file: ``lora_unet_*``/``lora_te*_*`` keys, a real ``.alpha`` per module.

    Flux and SD3 adapters are written in the original layout (``layout``: ``"kohya"`` names or ``"bfl"`` keys),
    their fused projections joined (:mod:`~lorastack.adapters.transformer_writing`)."""
    transformer = any(name.startswith("transformer.") for name in adapter.layers)
    if family not in TRANSFORMER_FAMILIES and (transformer or layout == "bfl"):
        if family in FAMILIES and not transformer:
            raise UnsupportedAdapterError(
                f"the bfl layout names FLUX.1 and SD 3.x modules, and this adapter is for {family}; "
                "write it with --format diffusers or kohya"
            )
        if family in FAMILIES:
            raise UnsupportedAdapterError(
                f"this adapter has transformer layers, which a {family} base does not have; "
                "pass --family flux or --family sd3"
            )
        raise UnsupportedAdapterError(
            f"cannot tell whether this adapter is for FLUX.1 or SD 3.x ({family}); pass --family flux or --family sd3"
        )
    sdxl = family == "sdxl"
    tensors: dict[str, torch.Tensor] = {}
    if family in TRANSFORMER_FAMILIES:
        write = kohya_tensors if layout == "kohya" else bfl_tensors
        tensors = write(adapter, family, lambda t: _cast(t, dtype))
    for name, layer in adapter.layers.items() if family not in TRANSFORMER_FAMILIES else ():
        base = canonical_to_kohya(name, sgm=sdxl, te_numbered=sdxl)
        suffixes = LOKR_FIELD_SUFFIX if isinstance(layer, LoKrLayer) else KOHYA_FIELD_SUFFIX
        for fld, t in layer.tensors().items():
            tensors[f"{base}.{suffixes.get(fld, KOHYA_FIELD_SUFFIX.get(fld))}"] = _cast(t, dtype)
        if not isinstance(layer, FullLayer):
            # No stored alpha means scale 1, which kohya spells alpha = rank; write it so no reader has to guess.
            alpha = layer.alpha if layer.alpha is not None else (layer.rank or 1)
            tensors[f"{base}.alpha"] = torch.tensor(float(alpha), dtype=torch.float32)
    header = build_header(
        adapter.metadata,
        family=_declared(adapter, family, declare),
        rank=adapter.rank,
        alpha=adapter.alpha if adapter.alpha is not None else adapter.rank,
        network_module=_network_module(adapter, family),
        implementation=_IMPLEMENTATIONS.get(family or "", "diffusers"),
    )
    if header["ss_network_module"] == "lycoris.kohya" and "ss_network_args" not in header:
        algos = {layer.kind for layer in adapter.layers.values()}
        algo = "loha" if "loha" in algos else "lokr" if "lokr" in algos else "full" if algos == {"full"} else "locon"
        args = {"algo": algo}
        if any(layer.is_dora for layer in adapter.layers.values()):
            args["dora_wd"] = "True"
        header["ss_network_args"] = json.dumps(args)
    return tensors, header


def diffusers_state_dict(
    adapter: Adapter, family: str | None, dtype: torch.dtype | None = None, *, declare: bool | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and header of the diffusers/peft file, with the ``lora_adapter_metadata`` diffusers reads.

    Only LoRA/LoCon layers (optionally DoRA with one magnitude per output) exist in this format.
    """
    bad = sorted(
        {
            layer.kind_label
            for layer in adapter.layers.values()
            if not isinstance(layer, LoRALayer) or layer.mid is not None or not _peft_dora_ok(layer)
        }
    )
    if bad:
        raise UnsupportedAdapterError(
            f"the diffusers/peft format holds only LoRA layers, and this adapter has {', '.join(bad)} layers; "
            "write it with --format kohya"
        )
    tensors: dict[str, torch.Tensor] = {}
    per_component: dict[str, dict[str, LoRALayer]] = {}
    for name, layer in adapter.layers.items():
        component, path = split_component(name)
        per_component.setdefault(component, {})[path] = layer
        tensors[f"{name}.lora_A.weight"] = _cast(layer.down, dtype)
        tensors[f"{name}.lora_B.weight"] = _cast(layer.up, dtype)
        if layer.is_dora:
            # diffusers maps a UNet's "lora_magnitude_vector" but loads a text encoder's only when spelled
            # "lora_magnitude_vector.weight" (otherwise transformers re-initialises the magnitudes).
            suffix = "lora_magnitude_vector" if component == "unet" else "lora_magnitude_vector.weight"
            tensors[f"{name}.{suffix}"] = _cast(layer.dora_scale.reshape(-1), dtype)
    header = build_header(
        adapter.metadata,
        family=_declared(adapter, family, declare),
        rank=adapter.rank,
        alpha=adapter.alpha if adapter.alpha is not None else adapter.rank,
        network_module="networks.lora",
        implementation="diffusers",
    )
    peft_meta = {}
    for component, layers in per_component.items():
        for key, value in peft_lora_config(layers).items():
            peft_meta[f"{component}.{key}"] = value
    header[LORA_ADAPTER_METADATA_KEY] = json.dumps(peft_meta, indent=2, sort_keys=True)
    header["format"] = "pt"
    return tensors, header


def _peft_dora_ok(layer) -> bool:
    return not layer.is_dora or layer.dora_scale.numel() == layer.out_features


def _peft_path(path: str) -> str:
    # peft matches target names as suffixes at a dot boundary; dropping "text_model." matches CLIP modules under
    # transformers 4 (which have that level) and 5 (whose CLIPTextModel does not).
    return path[len("text_model.") :] if path.startswith("text_model.") else path


def peft_lora_config(layers: dict[str, LoRALayer]) -> dict:
    """A peft ``LoraConfig`` (as a dict) that reproduces each layer's rank and alpha exactly."""
    from peft import LoraConfig

    ranks = Counter(layer.rank for layer in layers.values())
    r = ranks.most_common(1)[0][0]
    alphas = Counter(float(layer.alpha if layer.alpha is not None else layer.rank) for layer in layers.values())
    lora_alpha = alphas.most_common(1)[0][0]
    rank_pattern = {_peft_path(p): layer.rank for p, layer in layers.items() if layer.rank != r}
    alpha_pattern = {
        _peft_path(p): float(layer.alpha if layer.alpha is not None else layer.rank)
        for p, layer in layers.items()
        if float(layer.alpha if layer.alpha is not None else layer.rank) != lora_alpha
    }
    config = LoraConfig(
        r=r,
        lora_alpha=lora_alpha,
        target_modules=sorted(_peft_path(p) for p in layers),
        rank_pattern=rank_pattern,
        alpha_pattern=alpha_pattern,
        use_dora=any(layer.is_dora for layer in layers.values()),
        init_lora_weights=True,
    ).to_dict()
    return {k: sorted(v) if isinstance(v, set) else v for k, v in config.items()}


__all__ = ["DIFFUSERS_WEIGHT_NAME", "diffusers_state_dict", "kohya_state_dict", "write_adapter"]
