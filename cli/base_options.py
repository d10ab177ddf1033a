"""The options that complete a FLUX.1 / SD3 single-file base, for every command that takes ``--base``.

``@base_component_options`` adds ``--text-encoder``, ``--text-encoder-2``, ``--text-encoder-3``, ``--vae`` and
``--t5-tokenizer`` and hands the command one ``base_components`` dict (the given ones only, keyed by
:func:`~lorastack.core.base.load_base`'s keywords). :func:`component_params` gives the same options as
``click.Option`` objects for commands built from parameter lists (``lorastack train TRAINER``).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import click

#: keyword of load_base → (flag, help)
COMPONENT_OPTIONS: dict[str, tuple[str, str]] = {
    "text_encoder": ("--text-encoder", "CLIP-L file (clip_l.safetensors) for a FLUX.1 or SD3 single-file base."),
    "text_encoder_2": (
        "--text-encoder-2",
        "FLUX.1: the T5 v1.1 XXL file (t5xxl_fp16.safetensors); SD3: the CLIP-G file (clip_g.safetensors).",
    ),
    "text_encoder_3": ("--text-encoder-3", "SD3: the T5 v1.1 XXL file (t5xxl_fp16.safetensors)."),
    "vae": ("--vae", "VAE file (FLUX.1's ae.safetensors, SD3's VAE) for a single-file base."),
    "t5_tokenizer": (
        "--t5-tokenizer",
        "Folder with the T5 tokenizer (tokenizer.json or spiece.model) for a FLUX.1/SD3 single file [default: "
        "the Hugging Face cache's FLUX.1 / SD3 / google/t5-v1_1-xxl].",
    ),
}


def _option_args(name: str) -> tuple[tuple[str, str], dict[str, Any]]:
    flag, help_text = COMPONENT_OPTIONS[name]
    metavar = "FOLDER" if name == "t5_tokenizer" else "FILE"
    return (flag, name), {"type": click.Path(path_type=Path), "default": None, "metavar": metavar, "help": help_text}


def component_params() -> list[click.Option]:
    """The component options as ``click.Option`` objects (each value a path, or ``None``)."""
    params = []
    for name in COMPONENT_OPTIONS:
        decls, attrs = _option_args(name)
        params.append(click.Option(list(decls), **attrs))
    return params


def pop_components(values: dict[str, Any]) -> dict[str, Path]:
    """Remove the component options from a command's values; the given ones, for ``load_base(**…)``."""
    return {name: value for name in COMPONENT_OPTIONS if (value := values.pop(name, None)) is not None}


def base_component_options(f):
    """Add the component options to a click command; it receives them as ``base_components``."""

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any):
        kwargs["base_components"] = pop_components(kwargs)
        return f(*args, **kwargs)

    for name in reversed(COMPONENT_OPTIONS):
        decls, attrs = _option_args(name)
        wrapper = click.option(*decls, **attrs)(wrapper)
    return wrapper
