"""Finding, loading and asking plugins.

Every plugin, built-in or not, is an entry point in the ``lorastack`` group, loaded the same way. The built-ins are
entry points of the ``lorastack`` distribution itself and always load; ``LORASTACK_LOAD_PLUGINS`` (a comma list of
plugin or distribution names; empty: none) limits which other installed plugins do. A plugin that fails to import,
or whose hook raises, is reported by name and skipped. ``LORASTACK_TRACE_PLUGINS=1`` prints each hook call.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import pluggy

from lorastack.core.errors import LorastackError
from lorastack.core.interfaces import Option

from . import hookspecs

log = logging.getLogger("lorastack.plugins")

GROUP = "lorastack"
BUILTIN_DISTRIBUTION = "lorastack"
# kind → (hook name, what one object is called in messages, the methods an object of that kind must have)
KINDS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "dataset_sources": ("register_dataset_sources", "dataset source", ("detect", "open")),
    "captioners": ("register_captioners", "captioner", ("caption",)),
    "trainers": ("register_trainers", "trainer", ("train",)),
}
NAME_RULE = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")


class PluginError(LorastackError):
    """A plugin broke a rule: a name another plugin already registered, a malformed object."""


class UnknownNameError(LorastackError, KeyError):
    """No plugin registered that trainer/captioner/source name. The message lists the available ones."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


@dataclass
class Registered:
    obj: Any
    plugin: str


@dataclass
class Failure:
    plugin: str
    error: str


@dataclass
class PluginInfo:
    name: str
    distribution: str | None
    version: str | None
    builtin: bool
    hooks: list[str] = field(default_factory=list)


class PluginManager:
    """The loaded plugins and what they registered, per kind (``trainers``, ``captioners``, ``dataset_sources``)."""

    def __init__(self, *, entry_points: bool = True, allow: str | None = None):
        self.pm = pluggy.PluginManager("lorastack")
        self.pm.add_hookspecs(hookspecs)
        self.plugins: dict[str, PluginInfo] = {}
        self.failures: list[Failure] = []
        self.registered: dict[str, dict[str, Registered]] = {kind: {} for kind in KINDS}
        if entry_points:
            self._load_entry_points(os.environ.get("LORASTACK_LOAD_PLUGINS") if allow is None else allow)
        self._collect()

    # --- loading ----------------------------------------------------------------------------------------------

    def _load_entry_points(self, allow: str | None) -> None:
        wanted = None if allow is None else {n.strip().lower() for n in allow.split(",") if n.strip()}
        for ep in sorted(metadata.entry_points(group=GROUP), key=lambda e: e.name):
            dist = ep.dist.name if ep.dist is not None else None
            builtin = (dist or "").lower() == BUILTIN_DISTRIBUTION
            if not builtin and wanted is not None and not {ep.name.lower(), (dist or "").lower()} & wanted:
                continue
            if ep.name in self.plugins:
                continue  # the same distribution seen twice on sys.path
            try:
                module = ep.load()
            except Exception as e:  # a broken plugin must not take lorastack down
                self._fail(ep.name, f"cannot be imported: {type(e).__name__}: {e}")
                continue
            version = ep.dist.version if ep.dist is not None else None
            self._register(module, ep.name, PluginInfo(ep.name, dist, version, builtin))

    def _register(self, module: Any, name: str, info: PluginInfo) -> None:
        try:
            self.pm.register(module, name=name)
        except Exception as e:  # pluggy validates hook signatures here
            self._fail(name, f"is not a valid plugin: {e}")
            return
        info.hooks = sorted(
            impl_name for impl_name in (spec for spec, *_ in KINDS.values()) if self._impl(impl_name, name)
        )
        self.plugins[name] = info

    def _fail(self, plugin: str, error: str) -> None:
        self.failures.append(Failure(plugin, error))
        log.warning("plugin %s %s; skipped", plugin, error)

    def _impl(self, hook_name: str, plugin: str):
        hook = getattr(self.pm.hook, hook_name)
        return next((i for i in hook.get_hookimpls() if i.plugin_name == plugin), None)

    def register(self, module: Any, name: str, version: str | None = None) -> None:
        """Add a plugin object by hand (tests, applications embedding lorastack); its names register at once."""
        if name in self.plugins:
            raise PluginError(f"a plugin named {name!r} is already loaded")
        self._register(module, name, PluginInfo(name, None, version, False))
        self._collect()

    def unregister(self, name: str) -> None:
        self.pm.unregister(name=name)
        self.plugins.pop(name, None)
        self._collect()

    # --- registration -------------------------------------------------------------------------------------------

    def _collect(self) -> None:
        self.registered = {kind: {} for kind in KINDS}
        for kind, (hook_name, label, _methods) in KINDS.items():
            hook = getattr(self.pm.hook, hook_name)
            # get_hookimpls() lists plugins in load order, so on a duplicate the older plugin is named first
            for impl in hook.get_hookimpls():
                self._call(impl, kind, label)

    def _call(self, impl, kind: str, label: str) -> None:
        plugin = impl.plugin_name
        added: list[str] = []
        table = self.registered[kind]

        def register(obj: Any) -> None:
            name = self._check(obj, kind, label, plugin)
            if name in table:
                raise PluginError(
                    f"{label} {name!r} is registered by two plugins, {table[name].plugin!r} and {plugin!r}; "
                    "uninstall one, or limit LORASTACK_LOAD_PLUGINS"
                )
            table[name] = Registered(obj, plugin)
            added.append(name)

        if os.environ.get("LORASTACK_TRACE_PLUGINS"):
            sys.stderr.write(f"lorastack: calling {impl.function.__name__} of plugin {plugin}\n")
        try:
            impl.function(register=register)
        except PluginError:
            raise
        except Exception as e:
            for name in added:
                del table[name]
            self._fail(plugin, f"failed in {impl.function.__name__}: {type(e).__name__}: {e}")

    @staticmethod
    def _check(obj: Any, kind: str, label: str, plugin: str) -> str:
        name = getattr(obj, "name", None)
        if not isinstance(name, str) or not NAME_RULE.match(name):
            raise PluginError(
                f"plugin {plugin!r} registered a {label} with the name {name!r}; names are lower-case letters, "
                "digits, '-' and '_', starting with a letter"
            )
        missing = [m for m in KINDS[kind][2] if not callable(getattr(obj, m, None))]
        options = getattr(obj, "options", ())
        if missing or not all(isinstance(o, Option) for o in options):
            what = f"no {', '.join(missing)} method" if missing else "options that are not Option objects"
            raise PluginError(f"plugin {plugin!r}: {label} {name!r} has {what}")
        return name

    # --- lookup -------------------------------------------------------------------------------------------------

    def names(self, kind: str) -> list[str]:
        return sorted(self.registered[kind])

    def get(self, kind: str, name: str) -> Any:
        """The object registered as ``name``; an error listing the available names when there is none."""
        table = self.registered[kind]
        if name in table:
            return table[name].obj
        label = KINDS[kind][1]
        available = ", ".join(sorted(table)) or "none (no plugin registers one)"
        raise UnknownNameError(f"unknown {label} {name!r}; available: {available}")

    def describe(self) -> dict[str, Any]:
        """Plugins, their versions and what each registers per hook (for ``lorastack plugins --json``)."""
        plugins = []
        for name, info in sorted(self.plugins.items(), key=lambda kv: (not kv[1].builtin, kv[0])):
            provides = {
                kind: sorted(n for n, r in self.registered[kind].items() if r.plugin == name) for kind in KINDS
            }
            plugins.append({
                "name": name, "distribution": info.distribution, "version": info.version, "builtin": info.builtin,
                "hooks": info.hooks, "provides": {k: v for k, v in provides.items() if v},
            })  # fmt: skip
        registered = {
            kind: {
                n: {
                    "plugin": r.plugin,
                    "description": getattr(r.obj, "description", ""),
                    "options": [o.describe() for o in getattr(r.obj, "options", ())],
                }
                for n, r in sorted(table.items())
            }
            for kind, table in self.registered.items()
        }
        return {
            "plugins": plugins,
            "registered": registered,
            "failed": [{"plugin": f.plugin, "error": f.error} for f in self.failures],
        }


_manager: PluginManager | None = None
_lock = threading.Lock()


def get_manager() -> PluginManager:
    """The process's plugin manager, loaded on first use."""
    global _manager
    with _lock:
        if _manager is None:
            _manager = PluginManager()
        return _manager


def reset_manager() -> None:
    """Forget the loaded plugins; the next ``get_manager()`` loads them again (after changing the environment)."""
    global _manager
    with _lock:
        _manager = None


def _getter(kind: str) -> Callable[[str], Any]:
    def get(name: str) -> Any:
        return get_manager().get(kind, name)

    get.__doc__ = f"The {KINDS[kind][1]} registered as ``name`` (an error listing the available ones otherwise)."
    return get


get_dataset_source = _getter("dataset_sources")
get_captioner = _getter("captioners")
get_trainer = _getter("trainers")
