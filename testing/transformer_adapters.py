"""Random Flux.1 / SD3.x adapters in the original layout, and their deltas computed without lorastack's reader.

:func:`make_original_lora` draws one layer per module of the original layout that the pipeline's transformer has
(fused ``qkv`` and ``linear1`` included), LoRA or LoKr; :func:`original_state_dict` spells it as kohya sd-scripts,
BFL/ComfyUI or XLabs files do; :func:`original_deltas` gives the ΔW of every diffusers module from the same
matrices: the fused delta's rows, split by the diffusers modules' own sizes, with the shift/scale halves of the
modulations diffusers keeps in an ``AdaLayerNormContinuous`` exchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lorastack.adapters.mmdit import BLOCKS, TOPS, Source, parse_original


@dataclass
class OriginalLayer:
    source: Source
    sizes: list[int]  # rows of each diffusers module
    swapped: bool  # the diffusers module keeps (scale, shift) where the original keeps (shift, scale)
    tensors: dict[str, torch.Tensor]  # kohya field names: lora_down.weight, lora_up.weight, alpha / lokr_w1 …

    def delta(self) -> torch.Tensor:
        t = self.tensors
        if "lokr_w1" in t:
            w2 = t["lokr_w2_a"] @ t["lokr_w2_b"]
            return torch.kron(t["lokr_w1"], w2) * (float(t["alpha"]) / t["lokr_w2_b"].shape[0])
        down, up = t["lora_down.weight"], t["lora_up.weight"]
        scale = float(t["alpha"]) / down.shape[0] if "alpha" in t else 1.0
        return (up.flatten(1) @ down.flatten(1)) * scale


def original_modules(pipe, family: str):
    """``(Source, diffusers modules)`` for every original-layout module the pipeline's transformer has."""
    transformer = pipe.transformer
    config = transformer.config
    counts = {"double_blocks": config.num_layers, "joint_blocks": config.num_layers}
    counts["single_blocks"] = getattr(config, "num_single_layers", 0)
    paths = [
        f"{group}.{i}.{local}" for group, _, table in BLOCKS[family] for i in range(counts[group]) for local in table
    ]
    paths += list(TOPS[family])
    for path in paths:
        source = parse_original(path, family)
        try:
            modules = [transformer.get_submodule(m) for m in source.modules]
        except AttributeError:
            continue
        if any(m is None or not isinstance(m, torch.nn.Linear | torch.nn.Conv2d) for m in modules):
            continue
        yield source, modules


def make_original_lora(
    pipe,
    family: str,
    rank: int = 4,
    alpha: float = 2.0,
    seed: int = 0,
    kind: str = "lora",
    std: float = 0.2,
    where=None,
) -> list[OriginalLayer]:
    """One random layer per original module (``where(source)`` filters them), fused where the original is."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for source, modules in original_modules(pipe, family):
        if where is not None and not where(source):
            continue
        first = modules[0]
        sizes = [m.weight.shape[0] for m in modules]
        rows = sum(sizes)
        parent = pipe.transformer.get_submodule(source.modules[0].rpartition(".")[0])
        swapped = type(parent).__name__ == "AdaLayerNormContinuous"
        if isinstance(first, torch.nn.Conv2d):
            down = torch.randn(rank, first.in_channels, *first.kernel_size, generator=g) * std
            up = torch.randn(rows, rank, 1, 1, generator=g) * std
            tensors = {"lora_down.weight": down, "lora_up.weight": up}
        elif kind == "lokr":
            tensors = _lokr(rows, first.in_features, rank, g, std)
        else:
            tensors = {
                "lora_down.weight": torch.randn(rank, first.in_features, generator=g) * std,
                "lora_up.weight": torch.randn(rows, rank, generator=g) * std,
            }
        tensors["alpha"] = torch.tensor(float(alpha))
        out.append(OriginalLayer(source, sizes, swapped, tensors))
    return out


def _lokr(rows: int, cols: int, rank: int, g, std: float) -> dict[str, torch.Tensor]:
    # kron(w1 (a×b), w2 (rows/a × cols/b)): the smallest factor > 1 of each side goes to w1
    a = next(f for f in range(2, rows + 1) if rows % f == 0)
    b = next(f for f in range(2, cols + 1) if cols % f == 0)
    return {
        "lokr_w1": torch.randn(a, b, generator=g) * std,
        "lokr_w2_a": torch.randn(rows // a, rank, generator=g) * std,
        "lokr_w2_b": torch.randn(rank, cols // b, generator=g) * std,
    }


_BFL_SUFFIX = {"lora_down.weight": "lora_A.weight", "lora_up.weight": "lora_B.weight"}
_XLABS = {"img_attn.qkv": "qkv_lora1", "txt_attn.qkv": "qkv_lora2", "img_attn.proj": "proj_lora1",
          "txt_attn.proj": "proj_lora2"}  # fmt: skip


def original_state_dict(layers: list[OriginalLayer], dialect: str = "kohya") -> dict[str, torch.Tensor]:
    """The layers as a ``kohya`` (sd-scripts), ``bfl`` (ComfyUI, ``diffusion_model.`` + peft suffixes),
    ``bfl-kohya`` (``diffusion_model.`` + kohya suffixes), ``bfl-bare`` or ``xlabs`` file spells them. XLabs holds
    only the double blocks' attention and stores no alpha (its scale is 1): pass ``alpha`` equal to the rank."""
    sd: dict[str, torch.Tensor] = {}
    for layer in layers:
        original = layer.source.original
        for field, t in layer.tensors.items():
            if dialect == "kohya":
                sd[f"{layer.source.kohya}.{field}"] = t
            elif dialect in ("bfl", "bfl-bare"):
                prefix = "diffusion_model." if dialect == "bfl" else ""
                sd[f"{prefix}{original}.{_BFL_SUFFIX.get(field, field)}"] = t
            elif dialect == "bfl-kohya":
                sd[f"diffusion_model.{original}.{field}"] = t
            elif dialect == "xlabs":
                group, i, local = original.split(".", 2)
                if group != "double_blocks" or local not in _XLABS or field == "alpha":
                    continue
                ud = "down" if field == "lora_down.weight" else "up"
                sd[f"double_blocks.{i}.processor.{_XLABS[local]}.{ud}.weight"] = t
            else:
                raise ValueError(f"unknown dialect {dialect!r}")
    return sd


def original_deltas(layers: list[OriginalLayer]) -> dict[str, torch.Tensor]:
    """``{canonical module name: ΔW}`` from the layers' matrices (the fused delta's rows per diffusers module)."""
    out = {}
    for layer in layers:
        d = layer.delta()
        start = 0
        for module, size in zip(layer.source.modules, layer.sizes, strict=True):
            rows = d[start : start + size]
            if layer.swapped:
                rows = torch.cat([rows[size // 2 :], rows[: size // 2]])
            out[f"transformer.{module}"] = rows
            start += size
    return out
