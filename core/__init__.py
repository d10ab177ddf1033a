"""The runtime: load a base model, stack named adapters on it at chosen scales, generate, reproduce.

>>> from lorastack.core import AdapterStack, load_base
>>> pipe = load_base("v1-5-pruned-emaonly.safetensors")   # a folder, a checkpoint, a Hub id or an alias
>>> stack = AdapterStack(pipe)
>>> stack.load("style", "style.safetensors")
>>> stack.activate({"style": 0.8})
>>> image = pipe("a photo of a cat").images[0]            # an ordinary diffusers pipeline

``configs/`` holds the diffusers configs (JSON only) of the full-size SD1.5, SD2.1 and SDXL models and CLIP's BPE
merges, so single-file checkpoints load offline.
"""

import importlib

# Exports load on first use, so importing lorastack.core.errors (as the CLI does at start-up) stays cheap.
_EXPORTS = {
    "BaseInfo": "base",
    "base_info": "base",
    "load_base": "base",
    "GeneratedImage": "generate",
    "GenerateOptions": "generate",
    "Generator": "generate",
    "pipeline_family": "modules",
    "Reproduction": "reproduce",
    "reproduce": "reproduce",
    "AdapterStack": "stack",
    "LoadedAdapter": "stack",
    "LoadReport": "stack",
    **{name: "errors" for name in (
        "BaseModelError", "ConfigError", "GenerationError", "IncompatibleAdapterError", "LorastackError",
        "ReproduceError", "ScaleError", "UnknownAdapterError",
    )},
}  # fmt: skip


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AdapterStack",
    "BaseInfo",
    "BaseModelError",
    "ConfigError",
    "GenerateOptions",
    "GeneratedImage",
    "GenerationError",
    "Generator",
    "IncompatibleAdapterError",
    "LoadReport",
    "LoadedAdapter",
    "LorastackError",
    "ReproduceError",
    "Reproduction",
    "ScaleError",
    "UnknownAdapterError",
    "base_info",
    "load_base",
    "pipeline_family",
    "reproduce",
]
