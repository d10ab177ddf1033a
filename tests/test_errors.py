"""One error root: every exception class lorastack defines derives from ``lorastack.LorastackError``."""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path

import lorastack
from lorastack.errors import LorastackError

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

#: Every package the distribution installs (new ones are covered without editing this test).
PACKAGES = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())["tool"][
    "setuptools"
]["packages"]


def _import_everything() -> list[str]:
    names = []
    for package_name in PACKAGES:
        package = importlib.import_module(package_name)
        for module in pkgutil.walk_packages(package.__path__, package_name + "."):
            if module.name.rsplit(".", 1)[-1] == "__main__":
                continue  # running it is its import
            importlib.import_module(module.name)
            names.append(module.name)
    return names


def _subclasses(cls: type) -> set[type]:
    found = set()
    for sub in cls.__subclasses__():
        found |= {sub} | _subclasses(sub)
    return found


def test_every_lorastack_exception_derives_from_the_root():
    modules = _import_everything()
    assert "lorastack.registry.hub_client" in modules and "lorastack.plugins.manager" in modules
    defined = {
        cls
        for cls in _subclasses(BaseException)
        if cls.__module__.split(".")[0] == "lorastack"
        # private classes (``_Refused``) are control flow inside one module, caught where they are raised
        and not cls.__name__.startswith("_")
    }
    names = {f"{cls.__module__}.{cls.__qualname__}" for cls in defined}
    # the walk reaches every kind of error: adapter, registry, hub, plugin, runtime, training
    for expected in (
        "lorastack.adapters.errors.AdapterError",
        "lorastack.registry.errors.RegistryError",
        "lorastack.registry.hub_client.HubError",
        "lorastack.plugins.manager.PluginError",
        "lorastack.core.errors.GenerationError",
        "lorastack.core.training.options.TrainingError",
    ):
        assert expected in names
    outside = sorted(f"{cls.__module__}.{cls.__qualname__}" for cls in defined if not issubclass(cls, LorastackError))
    assert outside == []


def test_the_root_is_one_class_under_its_names():
    from lorastack.core import errors as core_errors

    assert lorastack.LorastackError is LorastackError is core_errors.LorastackError
