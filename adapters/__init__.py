"""What is inside an adapter file: every common LoRA format read into one canonical form and written back out.

>>> from lorastack.adapters import read_adapter, write_adapter
>>> adapter = read_adapter("style.safetensors")            # diffusers, peft, kohya, LyCORIS, DoRA
>>> adapter.family, adapter.kinds(), adapter.ranks()
>>> write_adapter(adapter, "style-kohya.safetensors", format="kohya")

This package imports nothing else of lorastack's.
"""

import importlib

from .constants import FAMILIES, FAMILY_NAMES, FORMATS, LAYER_KINDS, UNKNOWN
from .errors import (
    AdapterError,
    AdapterFileError,
    InvalidAdapterError,
    NotAnAdapterError,
    OutputError,
    UnsupportedAdapterError,
)

# The rest loads on first use, so that importing the errors or constants (the CLI does at start-up) skips torch.
_EXPORTS = {
    "Adapter": "adapter",
    "autov2": "files",
    "autov3": "files",
    "file_and_tensor_sha256": "files",
    "file_sha256": "files",
    "load_weights": "files",
    "read_safetensors_header": "files",
    "tensor_sha256": "files",
    "convert_file": "operations",
    "inspect_file": "operations",
    "FullLayer": "layers",
    "Layer": "layers",
    "LoHaLayer": "layers",
    "LoKrLayer": "layers",
    "LoRALayer": "layers",
    "LORA_ADAPTER_METADATA_KEY": "metadata",
    "AdapterMetadata": "metadata",
    "parse_metadata": "metadata",
    "COMPONENTS": "naming",
    "canonical_to_kohya": "naming",
    "kohya_to_canonical": "naming",
    "Probe": "probe",
    "probe_family": "probe",
    "parse_state_dict": "reading",
    "read_adapter": "reading",
    "DIFFUSERS_WEIGHT_NAME": "writing",
    "write_adapter": "writing",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "COMPONENTS",
    "DIFFUSERS_WEIGHT_NAME",
    "FAMILIES",
    "FAMILY_NAMES",
    "FORMATS",
    "LAYER_KINDS",
    "LORA_ADAPTER_METADATA_KEY",
    "UNKNOWN",
    "Adapter",
    "AdapterError",
    "AdapterFileError",
    "AdapterMetadata",
    "FullLayer",
    "InvalidAdapterError",
    "Layer",
    "LoHaLayer",
    "LoKrLayer",
    "LoRALayer",
    "NotAnAdapterError",
    "OutputError",
    "Probe",
    "UnsupportedAdapterError",
    "autov2",
    "autov3",
    "canonical_to_kohya",
    "convert_file",
    "file_and_tensor_sha256",
    "file_sha256",
    "inspect_file",
    "kohya_to_canonical",
    "load_weights",
    "parse_metadata",
    "parse_state_dict",
    "probe_family",
    "read_adapter",
    "read_safetensors_header",
    "tensor_sha256",
    "write_adapter",
]
