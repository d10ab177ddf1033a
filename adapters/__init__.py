"""What is inside an adapter file: every common LoRA format read into one canonical form and written back out.

>>> from lorastack.adapters import read_adapter, write_adapter
>>> adapter = read_adapter("style.safetensors")            # diffusers, peft, kohya, LyCORIS, DoRA
>>> adapter.family, adapter.kinds(), adapter.ranks()
>>> write_adapter(adapter, "style-kohya.safetensors", format="kohya")

This package imports nothing else of lorastack's.
"""

from .adapter import FORMATS, Adapter
from .errors import (
    AdapterError,
    AdapterFileError,
    InvalidAdapterError,
    NotAnAdapterError,
    UnsupportedAdapterError,
)
from .files import (
    autov2,
    autov3,
    file_and_tensor_sha256,
    file_sha256,
    load_weights,
    read_safetensors_header,
    tensor_sha256,
)
from .layers import LAYER_KINDS, FullLayer, Layer, LoHaLayer, LoKrLayer, LoRALayer
from .metadata import LORA_ADAPTER_METADATA_KEY, AdapterMetadata, parse_metadata
from .naming import COMPONENTS, canonical_to_kohya, kohya_to_canonical
from .operations import convert_file, inspect_file
from .probe import FAMILIES, UNKNOWN, Probe, probe_family
from .reading import parse_state_dict, read_adapter
from .writing import DIFFUSERS_WEIGHT_NAME, write_adapter

__all__ = [
    "COMPONENTS",
    "DIFFUSERS_WEIGHT_NAME",
    "FAMILIES",
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
