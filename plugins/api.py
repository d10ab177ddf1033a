"""Everything a lorastack plugin may use, in one module.

A plugin, built-in or third-party, imports from lorastack only this module (third-party libraries it imports
freely)::

    from lorastack.plugins.api import DatasetItem, Option, hookimpl

What is here, by what it is for:

* marking hooks: ``hookimpl``;
* declaring what a plugin object accepts: ``Option``, and ``resolve_options`` / ``parse_option_pairs`` for a plugin
  that checks the options of another object it drives (the ``sidecar`` captioner's fill captioner);
* the protocols its objects implement: ``DatasetSource``, ``Captioner``, ``Trainer``, ``MetadataSource``,
  ``Evaluator`` (with ``Metric``: a score's name and direction);
* data: ``DatasetItem`` (one training example), ``Skipped`` (a file a source could not use), ``TrainingContext``
  (what a trainer gets) and ``TrainResult`` (what its engine run returns); ``LookupItem`` and ``LookupAnswer`` (what
  a metadata source is asked and answers); ``EvalImage`` and ``EvalRequest`` (what an evaluator scores);
* for evaluators: ``best_device`` (cuda, else mps, else cpu), ``colour_shares`` and ``TOY_COLOURS`` (the toy world's
  palette, what the ``toy`` evaluator measures);
* reading metadata the way the built-in sidecar reader does: ``civitai_version_values`` (a Civitai model-version
  record as metadata values and preview URLs), ``lineage_label`` (``ponyDiffusionV6XL`` → ``Pony``);
* reading files and images the way the built-ins do: ``read_file`` (regular files only, bounded), ``open_image``
  (RGB, EXIF orientation applied, one-line ``ImageError``), ``image_key`` (the bytes' sha256, for caches),
  ``jsonl_rows``, ``one_line`` and ``format_size`` (values in messages), ``IMAGE_SUFFIXES``, ``CAPTION_SUFFIXES``,
  ``MAX_FILE_BYTES``; writing a file atomically: ``atomic_path`` (a temporary path renamed over the target when the
  block ends);
* reading a dataset and another plugin's objects: ``open_dataset``, ``get_captioner``;
* for trainers that generate images with the base (DreamBooth's class images): ``base_info``, ``guidance_kwargs`` and
  ``model_digest`` (the base's identity and recommended guidance), ``data_home`` (where caches go), ``NewTokens`` (new
  token embeddings trained beside the LoRA), ``MAX_STEPS`` and ``MAX_LEARNING_RATE`` (the engine's bounds);
* the errors a plugin raises, all ``LorastackError``: ``PluginError``, ``PluginOptionError``, ``DatasetError``,
  ``ImageError``, ``CaptionError``, ``TrainingError``, ``EvaluationError``, and ``UnknownNameError`` (what
  ``get_captioner`` raises).

Names that load torch or diffusers (``TrainResult``, ``NewTokens``, ``base_info``, ``guidance_kwargs``,
``model_digest``) are imported on first use, so importing this module stays cheap and ``lorastack plugins`` fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from lorastack.adapters.outputs import atomic_path
from lorastack.core.captioning import CaptionError
from lorastack.core.data import (
    CAPTION_SUFFIXES,
    IMAGE_SUFFIXES,
    MAX_FILE_BYTES,
    DatasetError,
    ImageError,
    format_size,
    image_key,
    jsonl_rows,
    one_line,
    open_dataset,
    open_image,
    read_file,
)
from lorastack.core.errors import LorastackError
from lorastack.core.evaluation import EvalImage, EvalRequest, EvaluationError, Evaluator, Metric
from lorastack.core.interfaces import (
    Captioner,
    DatasetItem,
    DatasetSource,
    Option,
    PluginOptionError,
    Skipped,
    Trainer,
    parse_option_pairs,
    resolve_options,
)
from lorastack.core.metadata_sources import LookupAnswer, LookupItem, MetadataSource
from lorastack.core.training.api import TrainingContext
from lorastack.core.training.options import MAX_LEARNING_RATE, MAX_STEPS, TrainingError
from lorastack.paths import data_home
from lorastack.registry.sidecars import civitai_version_values, lineage_label
from lorastack.toy import ALL_COLOURS as TOY_COLOURS
from lorastack.toy import colour_shares

from .hookspecs import hookimpl
from .manager import PluginError, UnknownNameError, get_captioner

if TYPE_CHECKING:
    from lorastack.core.base import base_info, guidance_kwargs
    from lorastack.core.devices import best_device
    from lorastack.core.recipe import model_digest
    from lorastack.core.training.engine import TrainResult
    from lorastack.core.training.tokens import NewTokens

# name → the module it comes from, imported when the name is first used
_LAZY = {
    "TrainResult": "lorastack.core.training.engine",
    "NewTokens": "lorastack.core.training.tokens",
    "base_info": "lorastack.core.base",
    "best_device": "lorastack.core.devices",
    "guidance_kwargs": "lorastack.core.base",
    "model_digest": "lorastack.core.recipe",
}

__all__ = [
    "CAPTION_SUFFIXES",
    "IMAGE_SUFFIXES",
    "MAX_FILE_BYTES",
    "MAX_LEARNING_RATE",
    "MAX_STEPS",
    "TOY_COLOURS",
    "CaptionError",
    "Captioner",
    "DatasetError",
    "DatasetItem",
    "DatasetSource",
    "EvalImage",
    "EvalRequest",
    "EvaluationError",
    "Evaluator",
    "ImageError",
    "LookupAnswer",
    "LookupItem",
    "LorastackError",
    "MetadataSource",
    "Metric",
    "NewTokens",
    "Option",
    "PluginError",
    "PluginOptionError",
    "Skipped",
    "TrainResult",
    "Trainer",
    "TrainingContext",
    "TrainingError",
    "UnknownNameError",
    "atomic_path",
    "base_info",
    "best_device",
    "civitai_version_values",
    "colour_shares",
    "data_home",
    "format_size",
    "get_captioner",
    "guidance_kwargs",
    "hookimpl",
    "image_key",
    "jsonl_rows",
    "lineage_label",
    "model_digest",
    "one_line",
    "open_dataset",
    "open_image",
    "parse_option_pairs",
    "read_file",
    "resolve_options",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
