"""Finding, loading and asking plugins.

Every plugin, built-in or not, is an entry point in the ``lorastack`` group, loaded the same way. The built-ins are
entry points of the ``lorastack`` distribution itself and always load; ``LORASTACK_LOAD_PLUGINS`` (a comma list of
plugin or distribution names; empty: none) limits which other installed plugins do. A plugin that fails to import,
or whose hook raises, is reported by name and skipped; one implementing a hook lorastack does not have (a misspelt
``register_captioner``) is reported by name and its other hooks still work. ``LORASTACK_TRACE_PLUGINS=1`` prints each
hook call on stderr, through pluggy's hook-call monitoring.

Hooks are called through pluggy, one plugin at a time (``subset_hook_caller``), so what an object registers is
attributed to its plugin, and an implementation may take fewer arguments than the hook's specification.
"""

from __future__ import annotations

import difflib
import logging
import os
import re
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, NamedTuple

import pluggy

from lorastack.core.errors import LorastackError
from lorastack.core.evaluation import EvaluationError, Evaluator, check_metric_names
from lorastack.core.interfaces import (
    OPTIONAL_MEMBERS,
    Captioner,
    DatasetSource,
    Option,
    Trainer,
    optional_member,
    protocol_members,
)
from lorastack.core.metadata_sources import MetadataSource

from . import hookspecs

log = logging.getLogger("lorastack.plugins")

GROUP = "lorastack"
BUILTIN_DISTRIBUTION = "lorastack"


class Kind(NamedTuple):
    hook: str  # the hook that registers objects of this kind
    label: str  # what one object is called in messages
    protocol: type  # what a registered object must implement


KINDS: dict[str, Kind] = {
    "dataset_sources": Kind("register_dataset_sources", "dataset source", DatasetSource),
    "captioners": Kind("register_captioners", "captioner", Captioner),
    "trainers": Kind("register_trainers", "trainer", Trainer),
    "metadata_sources": Kind("register_metadata_sources", "metadata source", MetadataSource),
    "evaluators": Kind("register_evaluators", "evaluator", Evaluator),
}
HOOKS = tuple(kind.hook for kind in KINDS.values())
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
    """A plugin that could not be used at all, or one of its hooks that raised (what it registered there is gone)."""

    plugin: str
    error: str


@dataclass
class Problem:
    """Something wrong with a plugin that still loaded: a hook lorastack does not have (a misspelt name)."""

    plugin: str
    warning: str


@dataclass
class PluginInfo:
    name: str
    distribution: str | None
    version: str | None
    builtin: bool
    hooks: list[str] = field(default_factory=list)
    unknown_hooks: list[str] = field(default_factory=list)  # implemented, but no hook of lorastack's


def tracing_enabled() -> bool:
    return os.environ.get("LORASTACK_TRACE_PLUGINS", "") not in ("", "0")


class PluginManager:
    """The loaded plugins and what they registered, per kind (``trainers``, ``captioners``, ``dataset_sources``)."""

    def __init__(self, *, entry_points: bool = True, allow: str | None = None):
        self.pm = pluggy.PluginManager("lorastack")
        self.pm.add_hookspecs(hookspecs)
        if tracing_enabled():
            self.pm.add_hookcall_monitoring(_trace_before, _trace_after)
        self.plugins: dict[str, PluginInfo] = {}
        self.failures: list[Failure] = []
        self.problems: list[Problem] = []
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
        callers = self.pm.get_hookcallers(module) or []
        info.hooks = sorted(c.name for c in callers if c.has_spec())
        info.unknown_hooks = sorted(c.name for c in callers if not c.has_spec() and not _optional(c, module))
        self.plugins[name] = info
        for hook in info.unknown_hooks:
            self._warn(name, _unknown_hook_text(hook))

    def _fail(self, plugin: str, error: str) -> None:
        if Failure(plugin, error) in self.failures:
            return  # a raising hook is called again each time the names are collected (a plugin added by hand)
        self.failures.append(Failure(plugin, error))
        log.warning("plugin %s %s; skipped", plugin, error)

    def _warn(self, plugin: str, warning: str) -> None:
        self.problems.append(Problem(plugin, warning))
        log.warning("plugin %s %s", plugin, warning)

    def register(self, module: Any, name: str, version: str | None = None) -> None:
        """Add a plugin object by hand (tests, applications embedding lorastack); its names register at once."""
        if name in self.plugins:
            raise PluginError(f"a plugin named {name!r} is already loaded")
        self._register(module, name, PluginInfo(name, None, version, False))
        self._collect()

    def unregister(self, name: str) -> None:
        self.pm.unregister(name=name)
        self.plugins.pop(name, None)
        self.problems = [p for p in self.problems if p.plugin != name]
        self._collect()

    # --- registration -------------------------------------------------------------------------------------------

    def _collect(self) -> None:
        self.registered = {kind: {} for kind in KINDS}
        for kind, spec in KINDS.items():
            # get_hookimpls() lists plugins in load order, so on a duplicate the older plugin is named first
            impls = getattr(self.pm.hook, spec.hook).get_hookimpls()
            for impl in impls:
                self._call(impl, [other.plugin for other in impls if other is not impl], kind)

    def _call(self, impl: pluggy.HookImpl, others: list[Any], kind: str) -> None:
        """Call one plugin's implementation of ``kind``'s hook through pluggy, recording what it registers."""
        plugin, spec = impl.plugin_name, KINDS[kind]
        added: list[str] = []
        table = self.registered[kind]

        def register(obj: Any) -> None:
            name = self._check(obj, kind, plugin)
            if name in table:
                raise PluginError(
                    f"{spec.label} {name!r} is registered by two plugins, {table[name].plugin!r} and {plugin!r}; "
                    "uninstall one, or limit LORASTACK_LOAD_PLUGINS"
                )
            table[name] = Registered(obj, plugin)
            added.append(name)

        # pluggy passes each implementation only the arguments it names, so one taking fewer than the spec works
        call = self.pm.subset_hook_caller(spec.hook, remove_plugins=others)
        try:
            call(register=register)
        except PluginError:
            raise
        except Exception as e:
            for name in added:
                del table[name]
            self._fail(plugin, f"failed in {spec.hook}: {type(e).__name__}: {e}")

    @staticmethod
    def _check(obj: Any, kind: str, plugin: str) -> str:
        """``obj``'s name, once ``obj`` is found to implement ``kind``'s protocol; a ``PluginError`` otherwise."""
        spec = KINDS[kind]
        name = getattr(obj, "name", None)
        if not isinstance(name, str) or not NAME_RULE.match(name):
            raise PluginError(
                f"plugin {plugin!r} registered a {spec.label} with the name {name!r}; names are lower-case letters, "
                "digits, '-' and '_', starting with a letter"
            )
        attributes, methods = protocol_members(spec.protocol)
        if not isinstance(obj, spec.protocol) or not all(callable(getattr(obj, m)) for m in methods):
            lacking = [m for m in attributes if not hasattr(obj, m)]
            lacking += [f"{m}()" for m in methods if not callable(getattr(obj, m, None))]
            members = ", ".join([*attributes, *(f"{m}()" for m in methods)])
            raise PluginError(
                f"plugin {plugin!r}: {spec.label} {name!r} lacks {', '.join(lacking)}; a {spec.label} has {members} "
                f"({spec.protocol.__module__}.{spec.protocol.__name__})"
            )
        if not isinstance(obj.description, str):
            raise PluginError(f"plugin {plugin!r}: {spec.label} {name!r} has a description that is not text")
        if not all(isinstance(o, Option) for o in obj.options):
            raise PluginError(f"plugin {plugin!r}: {spec.label} {name!r} has options that are not Option objects")
        for member, default in OPTIONAL_MEMBERS.get(spec.protocol, {}).items():
            value = optional_member(obj, spec.protocol, member)
            if value is default:
                continue
            fits = callable(value) if default is None else type(value) is type(default)
            if not fits:
                want = {type(None): "a method", bool: "true or false", int: "an integer"}[type(default)]
                raise PluginError(f"plugin {plugin!r}: {spec.label} {name!r}: {member} {value!r} is not {want}")
        if kind == "evaluators":
            try:
                check_metric_names(obj)
            except EvaluationError as e:
                raise PluginError(f"plugin {plugin!r}: {e}") from None
        return name

    # --- lookup -------------------------------------------------------------------------------------------------

    def names(self, kind: str) -> list[str]:
        return sorted(self.registered[kind])

    def get(self, kind: str, name: str) -> Any:
        """The object registered as ``name``; an error listing the available names when there is none."""
        table = self.registered[kind]
        if name in table:
            return table[name].obj
        available = ", ".join(sorted(table)) or "none (no plugin registers one)"
        raise UnknownNameError(f"unknown {KINDS[kind].label} {name!r}; available: {available}")

    def describe(self) -> dict[str, Any]:
        """Plugins, their versions and what each registers per hook (for ``lorastack plugins --json``)."""
        plugins = []
        for name, info in sorted(self.plugins.items(), key=lambda kv: (not kv[1].builtin, kv[0])):
            provides = {
                kind: sorted(n for n, r in self.registered[kind].items() if r.plugin == name) for kind in KINDS
            }
            plugins.append({
                "name": name, "distribution": info.distribution, "version": info.version, "builtin": info.builtin,
                "hooks": info.hooks, "unknown_hooks": info.unknown_hooks,
                "provides": {k: v for k, v in provides.items() if v},
            })  # fmt: skip
        registered = {
            kind: {
                n: {
                    "plugin": r.plugin,
                    "description": r.obj.description,
                    "options": [o.describe() for o in r.obj.options],
                }
                for n, r in sorted(table.items())
            }
            for kind, table in self.registered.items()
        }
        return {
            "plugins": plugins,
            "registered": registered,
            "failed": [{"plugin": f.plugin, "error": f.error} for f in self.failures],
            "warnings": [{"plugin": p.plugin, "warning": p.warning} for p in self.problems],
        }


def _optional(caller: pluggy.HookCaller, plugin: Any) -> bool:
    """Whether every implementation ``plugin`` has of ``caller``'s hook is marked ``optionalhook=True`` (a hook of a
    newer lorastack, which pluggy's ``check_pending`` does not report either)."""
    return all(impl.optionalhook for impl in caller.get_hookimpls() if impl.plugin is plugin)


def _unknown_hook_text(hook: str) -> str:
    close = difflib.get_close_matches(hook, HOOKS, n=1)
    hint = f"did you mean {close[0]}?" if close else f"the hooks are {', '.join(HOOKS)}"
    return f"implements {hook}, which is not a lorastack hook ({hint}); it is never called"


def _trace_before(hook_name: str, impls: list[pluggy.HookImpl], kwargs: dict[str, Any]) -> None:
    plugins = ", ".join(impl.plugin_name for impl in impls) or "none"
    sys.stderr.write(f"lorastack: calling {hook_name} of plugin {plugins}\n")


def _trace_after(outcome: Any, hook_name: str, impls: list[pluggy.HookImpl], kwargs: dict[str, Any]) -> None:
    plugins = ", ".join(impl.plugin_name for impl in impls) or "none"
    error = outcome.exception
    result = f"raised {type(error).__name__}: {error}" if error is not None else "done"
    sys.stderr.write(f"lorastack: {hook_name} of plugin {plugins} {result}\n")


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

    get.__doc__ = f"The {KINDS[kind].label} registered as ``name`` (an error listing the available ones otherwise)."
    return get


get_dataset_source = _getter("dataset_sources")
get_captioner = _getter("captioners")
get_trainer = _getter("trainers")
get_metadata_source = _getter("metadata_sources")
get_evaluator = _getter("evaluators")
