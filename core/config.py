"""User configuration and lorastack's folders.

* the config file: ``$LORASTACK_CONFIG`` or ``config.toml`` in click's app dir (``~/.config/lorastack`` on Linux);
* the data folder (registry, caches): ``$LORASTACK_HOME`` or the platform's user data dir.

Config keys used by the runtime::

    default_base = "sd15"               # what --base defaults to

    [aliases]
    sd15 = "/models/v1-5-pruned-emaonly.safetensors"
    xl = "stabilityai/stable-diffusion-xl-base-1.0"
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


def aliases() -> dict[str, str]:
    """Base-model aliases from the config's ``[aliases]`` table."""
    table = load_config().get("aliases", {})
    if not isinstance(table, dict) or not all(isinstance(v, str) for v in table.values()):
        raise ConfigError(f"{config_path()}: [aliases] must map names to strings")
    return dict(table)


def default_base() -> str | None:
    value = load_config().get("default_base")
    if value is not None and not isinstance(value, str):
        raise ConfigError(f"{config_path()}: default_base must be a string")
    return value
