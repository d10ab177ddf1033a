"""The hooks a lorastack plugin can implement.

A plugin is a module (or any object) with functions marked ``@hookimpl`` whose names are hooks below. lorastack
calls each hook once, when the plugins load, with a ``register`` callback; the plugin calls it once per object it
provides. Names must be unique across all plugins: a second plugin registering a taken name is an error naming both.
An implementation may take fewer arguments than its specification (pluggy passes only those it names). The objects'
protocols (``DatasetSource``, ``Captioner``, ``Trainer``, ``MetadataSource``, ``Evaluator``) and everything else a
plugin uses are in ``lorastack.plugins.api``.
"""

from __future__ import annotations

from collections.abc import Callable

import pluggy

from lorastack.core.evaluation import Evaluator
from lorastack.core.interfaces import Captioner, DatasetSource, Trainer
from lorastack.core.metadata_sources import MetadataSource

hookspec = pluggy.HookspecMarker("lorastack")
hookimpl = pluggy.HookimplMarker("lorastack")


@hookspec
def register_dataset_sources(register: Callable[[DatasetSource], None]) -> None:
    """Register dataset sources: where training images and captions come from.

    Called once when plugins load. Call ``register(source)`` for each source; ``source.name`` is what users type
    (``--source NAME``). A source implements ``lorastack.core.interfaces.DatasetSource``.

    :param register: records ``source`` under ``source.name``; raises ``PluginError`` if another plugin has it
    """


@hookspec
def register_captioners(register: Callable[[Captioner], None]) -> None:
    """Register captioners: what writes a caption for an image.

    Called once when plugins load. Call ``register(captioner)`` for each captioner; ``captioner.name`` is what users
    type (``lorastack caption --captioner NAME``). A captioner implements ``lorastack.core.interfaces.Captioner``.

    :param register: records ``captioner`` under ``captioner.name``; raises ``PluginError`` if another plugin has it
    """


@hookspec
def register_trainers(register: Callable[[Trainer], None]) -> None:
    """Register trainers: what turns a base model and a dataset into an adapter.

    Called once when plugins load. Call ``register(trainer)`` for each trainer; ``trainer.name`` is what users type
    (``lorastack train --trainer NAME``). A trainer implements ``lorastack.core.interfaces.Trainer``.

    :param register: records ``trainer`` under ``trainer.name``; raises ``PluginError`` if another plugin has it
    """


@hookspec
def register_metadata_sources(register: Callable[[MetadataSource], None]) -> None:
    """Register metadata sources: where ``lorastack enrich`` looks adapter files up by hash (Civitai, the Hub).

    Called once when plugins load. Call ``register(source)`` for each source; ``source.name`` is what users type
    (``lorastack enrich --source NAME``) and the source recorded with every value it gives. A source implements
    ``lorastack.plugins.api.MetadataSource``.

    :param register: records ``source`` under ``source.name``; raises ``PluginError`` if another plugin has it
    """


@hookspec
def register_evaluators(register: Callable[[Evaluator], None]) -> None:
    """Register evaluators: what scores generated images (CLIP and DINO similarity, leakage against the base, …).

    Called once when plugins load. Call ``register(evaluator)`` for each evaluator; ``evaluator.name`` is what users
    type (``lorastack eval --evaluator NAME``, ``lorastack train --eval-every N``). An evaluator implements
    ``lorastack.plugins.api.Evaluator``: it declares its ``metrics`` (each higher- or lower-is-better) and returns one
    score per metric and image; lorastack aggregates them.

    :param register: records ``evaluator`` under ``evaluator.name``; raises ``PluginError`` if another plugin has it
    """
