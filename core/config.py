"""User configuration and lorastack's folders.

* the config file: ``$LORASTACK_CONFIG`` or ``config.toml`` in click's app dir (``~/.config/lorastack`` on Linux);
* the data folder (registry, caches): ``$LORASTACK_HOME`` or the platform's user data dir.

Config keys used by the runtime::

    default_base = "sd15"               # what --base defaults to

    [aliases]
    sd15 = "/models/v1-5-pruned-emaonly.safetensors"
    xl = "stabilityai/stable-diffusion-xl-base-1.0"

    [aliases.flux-dev]                  # a base with its parts, named once
    base = "/models/flux1-dev.safetensors"
    text_encoder = "/models/clip_l.safetensors"
    text_encoder_2 = "/models/t5xxl_fp16.safetensors"
    vae = "/models/ae.safetensors"
    t5_tokenizer = "/models/t5-tokenizer"   # a folder; else found in the Hugging Face cache
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from .errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from lorastack.paths import APP_NAME, HOME_ENV, data_home

CONFIG_ENV = "LORASTACK_CONFIG"
__all__ = ["APP_NAME", "CONFIG_ENV", "HOME_ENV", "aliases", "cache_dir", "config_path", "data_home", "load_config"]


def config_path() -> Path:
    if os.environ.get(CONFIG_ENV):
        return Path(os.environ[CONFIG_ENV]).expanduser()
    import click

    return Path(click.get_app_dir(APP_NAME)) / "config.toml"


def cache_dir() -> Path:
    return data_home() / "cache"


def load_config() -> dict[str, Any]:
    """The parsed config file, or ``{}`` when there is none."""
    path = config_path()
    if not path.exists():
        return {}
    if not path.is_file():  # a FIFO would block the read for ever
        raise ConfigError(f"{path}: the config file is not a regular file")
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"{path}: cannot read the config file: {e}") from None


#: the keys an alias table may hold: the base and the parts that complete a FLUX.1 / SD3 single file
ALIAS_KEYS = ("base", "text_encoder", "text_encoder_2", "text_encoder_3", "vae", "t5_tokenizer")


def _alias_table() -> dict[str, str | dict[str, str]]:
    table = load_config().get("aliases", {})
    if not isinstance(table, dict):
        raise ConfigError(f"{config_path()}: [aliases] must map names to strings or tables")
    for name, value in table.items():
        if isinstance(value, str):
            continue
        if not isinstance(value, dict):
            raise ConfigError(
                f"{config_path()}: alias {name!r} must be a string or a table, not {type(value).__name__}"
            )
        unknown = [k for k in value if k not in ALIAS_KEYS]
        if unknown:
            raise ConfigError(
                f"{config_path()}: [aliases.{name}] has unknown key {unknown[0]!r}; known: {', '.join(ALIAS_KEYS)}"
            )
        if not isinstance(value.get("base"), str):
            raise ConfigError(f'{config_path()}: [aliases.{name}] needs base = "PATH or repo id"')
        bad = [k for k, v in value.items() if not isinstance(v, str)]
        if bad:
            raise ConfigError(f"{config_path()}: [aliases.{name}] {bad[0]} must be a string (a path)")
    return table


def aliases() -> dict[str, str]:
    """Base-model aliases from the config's ``[aliases]`` table: name → the base (a table's ``base``)."""
    return {name: v if isinstance(v, str) else v["base"] for name, v in _alias_table().items()}


def alias_components(name: str) -> dict[str, str]:
    """The component files an alias table names (``text_encoder``, …, ``t5_tokenizer``); {} for plain aliases."""
    value = _alias_table().get(name)
    if not isinstance(value, dict):
        return {}
    return {k: v for k, v in value.items() if k != "base"}


def default_base() -> str | None:
    value = load_config().get("default_base")
    if value is not None and not isinstance(value, str):
        raise ConfigError(f"{config_path()}: default_base must be a string")
    return value
