"""Quantized bases: loading a denoiser through diffusers' own quantization configs, and telling which layers are
quantized or offloaded (the layers :class:`~lorastack.core.stack.AdapterStack` bypasses in ``auto`` mode).

Backends (each through diffusers, none re-implemented here):

* ``torchao-int8`` / ``torchao-fp8``: ``TorchAoConfig(Int8WeightOnlyConfig())`` / ``Float8WeightOnlyConfig()``;
  int8 runs on the CPU too (the tests use it), fp8 needs a GPU with fp8 support.
* ``bnb-nf4`` / ``bnb-int8``: ``BitsAndBytesConfig`` (4-bit NF4 / LLM.int8); diffusers refuses them without a GPU.
* ``gguf``: a ``.gguf`` single file (city96's Flux/SD3 files), ``GGUFQuantizationConfig``; dequantized per forward
  by diffusers' ``GGUFLinear``, on the CPU too.
* ``fp8-storage``: weights stored in ``float8_e4m3fn`` and upcast layer by layer for compute (diffusers'
  ``enable_layerwise_casting``), on any device.

Merging an adapter into any of these is lossy (the sum is rounded to the 4/8-bit grid) or impossible, so their layers
take adapters in bypass mode.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from .errors import BaseModelError

#: Quantization choices for ``--quantize`` (``gguf`` is chosen by a ``.gguf`` file instead).
QUANTIZATIONS = ("torchao-int8", "torchao-fp8", "bnb-nf4", "bnb-int8", "fp8-storage")
_BACKEND_PACKAGE = {"torchao": "torchao", "bnb": "bitsandbytes", "gguf": "gguf"}
_QUANTIZED_DTYPES = {torch.int8, torch.uint8, torch.float8_e4m3fn, torch.float8_e5m2}


def _require(package: str, what: str) -> None:
    if importlib.util.find_spec(package) is None:
        raise BaseModelError(f"{what} needs the '{package}' package; pip install 'lorastack[quantized]' or {package}")


def check_quantization(kind: str) -> None:
    """Refuse an unknown ``--quantize`` choice, or one whose backend package is missing, in one line."""
    if kind not in QUANTIZATIONS:
        raise BaseModelError(f"unknown quantization {kind!r}; choose one of {', '.join(QUANTIZATIONS)}")
    backend = kind.split("-")[0]
    if backend in _BACKEND_PACKAGE:
        _require(_BACKEND_PACKAGE[backend], f"--quantize {kind}")


def quantize_base(pipe, kind: str, folder: Path | None = None, device: str = "cpu"):
    """``pipe`` with its denoiser quantized as ``kind``: reloaded from ``folder`` (a diffusers folder base), else
    rebuilt from the loaded tensors (single files, Hub repos)."""
    check_quantization(kind)
    return quantize_pipeline(pipe, folder, kind) if folder is not None else quantize_loaded(pipe, kind, device)


def quantization_config(kind: str, compute_dtype: torch.dtype = torch.bfloat16):
    """The diffusers quantization config for ``kind`` (one of :data:`QUANTIZATIONS` but ``fp8-storage``)."""
    if kind not in QUANTIZATIONS or kind == "fp8-storage":
        choices = ", ".join(q for q in QUANTIZATIONS if q != "fp8-storage")
        raise BaseModelError(f"quantization {kind!r} has no diffusers config; choose one of {choices}")
    backend = kind.split("-")[0]
    _require(_BACKEND_PACKAGE[backend], f"--quantize {kind}")
    if backend == "torchao":
        from diffusers import TorchAoConfig
        from torchao.quantization import Float8WeightOnlyConfig, Int8WeightOnlyConfig

        return TorchAoConfig(Int8WeightOnlyConfig() if kind == "torchao-int8" else Float8WeightOnlyConfig())
    from diffusers import BitsAndBytesConfig

    if kind == "bnb-nf4":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute_dtype)
    return BitsAndBytesConfig(load_in_8bit=True)


def load_quantized_denoiser(folder: str | Path, kind: str, torch_dtype: torch.dtype, slot: str = "unet"):
    """The denoiser (``unet`` or ``transformer``) of a diffusers folder, loaded quantized as ``kind``."""
    from diffusers import FluxTransformer2DModel, SD3Transformer2DModel, UNet2DConditionModel

    folder = Path(folder)
    config = _read_json(folder / slot / "config.json")
    name = config.get("_class_name", "")
    classes = {c.__name__: c for c in (UNet2DConditionModel, FluxTransformer2DModel, SD3Transformer2DModel)}
    if name not in classes:
        raise BaseModelError(f"{folder / slot}: a {name or 'unknown'} denoiser cannot be loaded quantized")
    if kind == "fp8-storage":
        model = classes[name].from_pretrained(folder, subfolder=slot, torch_dtype=torch_dtype)
        return store_in_fp8(model, torch_dtype)
    try:
        return classes[name].from_pretrained(
            folder, subfolder=slot, torch_dtype=torch_dtype, quantization_config=quantization_config(kind, torch_dtype)
        )
    except (RuntimeError, ValueError, ImportError) as e:  # e.g. bitsandbytes on a machine without a GPU
        raise BaseModelError(f"cannot load {folder / slot} as {kind}: {str(e).splitlines()[0][:200]}") from None


def quantize_pipeline(pipe, folder: str | Path, kind: str):
    """Replace ``pipe``'s denoiser by the same one loaded quantized as ``kind``; returns ``pipe``."""
    slot = "transformer" if getattr(pipe, "transformer", None) is not None else "unet"
    current = getattr(pipe, slot)
    dtype = next(current.parameters()).dtype
    device = next(current.parameters()).device
    model = load_quantized_denoiser(folder, kind, dtype, slot)
    if kind.startswith("bnb"):
        pipe.register_modules(**{slot: model})  # bitsandbytes places its weights itself
    else:
        pipe.register_modules(**{slot: model.to(device)})
    return pipe


def store_in_fp8(model, compute_dtype: torch.dtype):
    """Keep ``model``'s weights in ``float8_e4m3fn``, upcast to ``compute_dtype`` layer by layer (diffusers'
    layerwise casting)."""
    model.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=compute_dtype)
    return model


def load_gguf_denoiser(
    path: str | Path, config_dir: str | Path, compute_dtype: torch.dtype, slot: str = "transformer"
):
    """A denoiser from a ``.gguf`` single file: its quantized tensors stay quantized (``GGUFLinear``).

    Files with the original (BFL / MMDiT) names are converted with lorastack's width-aware converters (diffusers'
    own assume the full-size models) before diffusers builds the model from the converted tensors.
    """
    _require("gguf", "a .gguf base")
    from diffusers import FluxTransformer2DModel, GGUFQuantizationConfig, SD3Transformer2DModel
    from diffusers.models.model_loading_utils import load_gguf_checkpoint

    from .transformer_layouts import flux_to_diffusers, sd3_to_diffusers

    config_dir = Path(config_dir)
    config = _read_json(config_dir / slot / "config.json")
    name = config.get("_class_name", "")
    classes = {c.__name__: c for c in (FluxTransformer2DModel, SD3Transformer2DModel)}
    if name not in classes:
        raise BaseModelError(f"{path}: a GGUF file for a {name or 'unknown'} denoiser is not supported")
    try:
        state = load_gguf_checkpoint(str(path), return_tensors=True)
    except (ValueError, OSError) as e:
        raise BaseModelError(f"{path}: cannot read the GGUF tensors ({str(e).splitlines()[0][:160]})") from None
    state = {k.removeprefix("model.diffusion_model."): v for k, v in state.items()}
    if name.startswith("Flux") and any(k.startswith("double_blocks.") for k in state):
        state = flux_to_diffusers(state, config)
    elif name.startswith("SD3") and any(k.startswith("joint_blocks.") for k in state):
        state = sd3_to_diffusers(state, config)
    return classes[name].from_single_file(
        state, quantization_config=GGUFQuantizationConfig(compute_dtype=compute_dtype), config=str(config_dir),
        subfolder=slot, torch_dtype=compute_dtype,
    )  # fmt: skip


def quantize_loaded(pipe, kind: str, device: str = "cpu"):
    """Rebuild ``pipe``'s loaded denoiser quantized as ``kind`` from its own tensors (a single-file or Hub base: the
    checkpoint is not read twice); returns ``pipe``. bitsandbytes quantizes as it places weights on ``device``."""
    from accelerate import init_empty_weights
    from diffusers.models.model_loading_utils import load_model_dict_into_meta
    from diffusers.quantizers import DiffusersAutoQuantizer

    slot = "transformer" if getattr(pipe, "transformer", None) is not None else "unet"
    model = getattr(pipe, slot)
    if any(quantized_kind(m) for m in model.modules()):
        raise BaseModelError(f"the {slot} is quantized already; --quantize applies to float bases")
    dtype = model.dtype
    if kind == "fp8-storage":
        store_in_fp8(model, dtype)
        return pipe
    # diffusers' from_single_file takes every quantization_config for a pre-quantized checkpoint (torchao then
    # quantizes nothing), so its loading steps run here with a quantizer that quantizes: the same diffusers calls
    try:
        quantizer = DiffusersAutoQuantizer.from_config(quantization_config(kind, dtype), pre_quantized=False)
        quantizer.validate_environment()
        dtype = quantizer.update_torch_dtype(dtype)
        state, config, cls = model.state_dict(), dict(model.config), type(model)
        pipe.register_modules(**{slot: None})
        del model
        with init_empty_weights():
            model = cls.from_config(config)
        quantizer.preprocess_model(model=model, device_map=None, keep_in_fp32_modules=[])
        target = torch.device(device if kind.startswith("bnb") else "cpu")
        load_model_dict_into_meta(
            model, state, dtype=dtype, device_map={"": target}, hf_quantizer=quantizer, unexpected_keys=[]
        )
        del state
        quantizer.postprocess_model(model)
    except (RuntimeError, ValueError, ImportError) as e:  # e.g. bitsandbytes on a machine without a GPU
        raise BaseModelError(f"cannot load the {slot} as {kind}: {str(e).splitlines()[0][:200]}") from None
    model.hf_quantizer = quantizer
    pipe.register_modules(**{slot: model.eval()})
    return pipe


def _read_json(path: Path) -> dict:
    import json

    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise BaseModelError(f"{path}: cannot read the model config ({e})") from None


# --- what a layer is --------------------------------------------------------------------------------------------
def quantized_kind(module: torch.nn.Module) -> str | None:
    """``"gguf"``, ``"bnb"``, ``"torchao"``, ``"fp8"`` or ``None`` for a plain float layer."""
    weight = getattr(module, "weight", None)
    cls = type(module).__name__
    if cls.startswith("GGUF") or hasattr(weight, "quant_type"):
        return "gguf"
    if cls in ("Linear4bit", "Linear8bitLt") or type(weight).__name__ in ("Params4bit", "Int8Params"):
        return "bnb"
    if weight is not None and type(weight) not in (torch.Tensor, torch.nn.Parameter):
        return "torchao" if type(weight).__module__.startswith("torchao") else type(weight).__name__
    if weight is not None and weight.dtype in _QUANTIZED_DTYPES:
        return "fp8" if weight.dtype.is_floating_point else str(weight.dtype).removeprefix("torch.")
    return None


def offloaded(module: torch.nn.Module) -> bool:
    """Weights kept elsewhere until the forward (accelerate's sequential offload, diffusers' group offload)."""
    weight = getattr(module, "weight", None)
    if weight is not None and weight.device.type == "meta":
        return True
    hook = getattr(module, "_hf_hook", None)
    if hook is not None and getattr(hook, "offload", False):
        return True
    registry = getattr(module, "_diffusers_hook", None)
    return registry is not None and registry.get_hook("group_offloading") is not None


def bypass_reason(module: torch.nn.Module) -> str | None:
    """Why ``auto`` mode bypasses this layer (``"quantized (gguf)"``, ``"offloaded"``), or ``None``: merge it."""
    kind = quantized_kind(module)
    if kind is not None:
        return f"quantized ({kind})"
    return "offloaded" if offloaded(module) else None


def weight_shape(module: torch.nn.Module) -> tuple[int, ...]:
    """The logical weight shape (a packed GGUF/NF4 tensor's storage shape is not it)."""
    if isinstance(module, torch.nn.Conv2d):
        return (module.out_channels, module.in_channels // module.groups, *module.kernel_size)
    if isinstance(module, torch.nn.Linear):
        return (module.out_features, module.in_features)
    return tuple(module.weight.shape)


def compute_dtype(module: torch.nn.Module) -> torch.dtype:
    """The dtype the layer computes in (what its bypass path uses)."""
    for name in ("compute_dtype",):  # GGUFLinear, bitsandbytes' Linear4bit
        value = getattr(module, name, None)
        if isinstance(value, torch.dtype):
            return value
    weight = module.weight
    if weight.dtype.is_floating_point and weight.dtype not in _QUANTIZED_DTYPES:
        return weight.dtype
    registry = getattr(module, "_diffusers_hook", None)
    hook = registry.get_hook("layerwise_casting") if registry is not None else None
    if hook is not None:
        return hook.compute_dtype
    bias = getattr(module, "bias", None)
    return bias.dtype if bias is not None and bias.dtype.is_floating_point else torch.float32


def execution_device(module: torch.nn.Module, default: torch.device) -> torch.device:
    hook = getattr(module, "_hf_hook", None)
    device = getattr(hook, "execution_device", None)
    if device is not None:
        return torch.device(device)
    weight = module.weight
    return default if weight.device.type == "meta" else weight.device


@torch.no_grad()
def dequantized_weight(module: torch.nn.Module) -> torch.Tensor:
    """The layer's weight in float32 at its logical shape (for DoRA, whose delta depends on it)."""
    weight = module.weight
    kind = quantized_kind(module)
    if kind == "gguf":
        from diffusers.quantizers.gguf.utils import dequantize_gguf_tensor

        return dequantize_gguf_tensor(weight).float().reshape(weight_shape(module))
    if kind == "bnb":
        import bitsandbytes.functional as bnbf

        if type(weight).__name__ == "Params4bit":
            return bnbf.dequantize_4bit(weight.data, weight.quant_state).float()
        return (weight.data.float() * module.state.SCB[:, None].float() / 127).reshape(weight_shape(module))
    if hasattr(weight, "dequantize") and type(weight) not in (torch.Tensor, torch.nn.Parameter):
        return weight.dequantize().float()
    return weight.float()


def weight_bytes(module: torch.nn.Module) -> bytes:
    """The stored bytes of the layer's weight (what bypass must leave identical)."""
    weight = module.weight
    kind = quantized_kind(module)
    if kind == "torchao":
        inner = [getattr(weight, n) for n in getattr(weight, "tensor_data_names", [])]
        if inner:
            return b"".join(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes() for t in inner)
    data = weight.detach()
    data = data.as_subclass(torch.Tensor) if type(data) is not torch.Tensor else data
    return data.cpu().contiguous().view(torch.uint8).numpy().tobytes()
