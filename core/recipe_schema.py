"""Recipe validation: a recipe comes from an image anyone can edit, so each field is checked against a small schema
before anything uses it.

A rule per field, ``key?`` for the optional ones; a rule returns None when the value fits, else what the value must
be. The bounds are generation's own (generate.py), so a recipe that passes is one generate accepts.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lorastack.adapters.families import FAMILY_TABLE

from .errors import RecipeError, ScaleError
from .recipe import MAX_LABEL_CHARS, MAX_PATH_CHARS, RECIPE_VERSION
from .scales import brief, is_utf8
from .transformer_bases import COMPONENT_SLOTS  # the parts a FLUX.1 / SD3 single file may be given as files

Rule = Callable[[Any], "str | None"]


def _text(
    limit: int, choices: tuple[str, ...] = (), pattern: str | None = None, null: bool = False, what: str = ""
) -> Rule:
    """A string: one of ``choices``, or matching ``pattern``, at most ``limit`` characters; ``what`` says it."""
    what = what or (f"one of {', '.join(choices)}" if choices else f"a string of at most {limit} characters")
    what += " or null" if null else ""

    def rule(value):
        if value is None and null:
            return None
        if not isinstance(value, str) or len(value) > limit:
            return what
        if (choices and value not in choices) or (pattern and not re.fullmatch(pattern, value)):
            return what
        if not is_utf8(value):
            return what + " (UTF-8 text)"
        return None

    return rule


def _bound(bound, null: bool = False) -> Rule:
    def rule(value):
        if value is None and null:
            return None
        problem = bound.problem(value)
        return None if problem is None else problem + (" or null" if null else "")

    return rule


class _Object(dict):
    """Fields of a JSON object: ``{"key": rule, "optional?": rule}`` (rules may be nested ``_Object``/``_List``)."""


class _List:
    def __init__(self, item, limit: int, what: str):
        self.item, self.limit, self.what = item, limit, what


class _Bad(Exception):
    def __init__(self, where: str, problem: str):
        self.where, self.problem = where, problem


def _walk(rule, value, where: str) -> None:
    if isinstance(rule, _Object):
        if not isinstance(value, dict):
            raise _Bad(where, f"must be an object, got {brief(value)}")
        for key, sub in rule.items():
            name, optional = key.rstrip("?"), key.endswith("?")
            inner = f"{where}.{name}" if where else name
            if name not in value:
                if optional:
                    continue
                raise _Bad(inner, "is missing")
            _walk(sub, value[name], inner)
    elif isinstance(rule, _List):
        if not isinstance(value, list):
            raise _Bad(where, f"must be a list of {rule.what}, got {brief(value)}")
        if len(value) > rule.limit:
            raise _Bad(where, f"has {len(value)} entries; at most {rule.limit} {rule.what}")
        for i, item in enumerate(value):
            _walk(rule.item, item, f"{where}[{i}]")
    elif rule is not None:
        problem = rule(value)
        if problem is not None:
            raise _Bad(where, f"must be {problem}, got {brief(value)}")


def _components(path: Rule) -> Rule:
    """``{"text_encoder": {"path": …, "size": N}, …}``: only the known slots (they become ``load_base`` arguments)."""
    what = f"an object of {', '.join(COMPONENT_SLOTS)}, each {{path, size}}, or null"

    def rule(value):
        if value is None:
            return None
        if not isinstance(value, dict) or not set(value) <= set(COMPONENT_SLOTS):
            return what
        for entry in value.values():
            if not isinstance(entry, dict) or set(entry) != {"path", "size"} or path(entry["path"]) is not None:
                return what
            size = entry["size"]
            if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size < 1 << 50:
                return what
        return None

    return rule


@functools.cache
def _schema() -> _Object:
    from .generate import GUIDANCE, MAX_ADAPTERS, MAX_PROMPT_CHARS, MODES, NUM_IMAGES, SEED, SIDE, STEPS, STRENGTH
    from .options import DTYPE_NAMES, SCHEDULERS

    no_nul = "[^\x00]*"  # a NUL byte is in no path or name
    prompt = _text(MAX_PROMPT_CHARS)
    path = _text(MAX_PATH_CHARS, pattern=no_nul, what=f"a path of at most {MAX_PATH_CHARS} characters")
    label = _text(MAX_LABEL_CHARS, pattern=no_nul)
    schedulers = "|".join(re.escape(name) for name in SCHEDULERS)
    schedulers_text = f"one of {', '.join(SCHEDULERS)} (or default:CLASS, the base's own scheduler)"
    image = _Object({"path": path, "sha256": _text(64, pattern="[0-9a-f]{64}", what="a sha256 (64 hex digits)")})
    return _Object(
        {
            "version": None,  # checked first, with its own message
            "mode?": _text(20, MODES),
            "prompt": prompt,
            "negative_prompt?": _text(MAX_PROMPT_CHARS, null=True),
            "seed": _bound(SEED),
            "steps": _bound(STEPS),
            "guidance": _bound(GUIDANCE),
            "width": _bound(SIDE),
            "height": _bound(SIDE),
            "scheduler": _text(MAX_LABEL_CHARS, pattern=rf"{schedulers}|default:[A-Za-z_]\w*", what=schedulers_text),
            "strength?": _bound(STRENGTH, null=True),
            "init_image?": image,
            "mask?": image,
            "base": _Object(
                {
                    "source?": _text(MAX_PATH_CHARS, pattern=no_nul, null=True),
                    "config?": _text(MAX_PATH_CHARS, pattern=no_nul, null=True),
                    "kind?": _text(20, ("folder", "single_file", "hub", "pipeline")),
                    "location": path,
                    "family": _text(20, tuple(FAMILY_TABLE)),
                    "revision?": _text(MAX_LABEL_CHARS, null=True),
                    "dtype": _text(20, DTYPE_NAMES),
                    "digest": label,
                    "components?": _components(path),
                    "t5_tokenizer?": _text(MAX_PATH_CHARS, pattern=no_nul, null=True),
                }
            ),
            "adapters": _List(
                _Object(
                    {"name": label, "source": path, "tensor_sha256": _text(MAX_LABEL_CHARS, null=True), "scale": None}
                ),
                MAX_ADAPTERS,
                "adapters",
            ),
            "device?": label,
            "compare?": _Object(
                {
                    "columns": _List(label, MAX_ADAPTERS + 2, "column labels"),
                    "prompts": _List(prompt, MAX_ADAPTERS + 2, "prompts"),
                    "rows": _bound(NUM_IMAGES),
                }
            ),
        }
    )


def validate_recipe(recipe: Any, image: str | Path) -> dict[str, Any]:
    """``recipe`` if it is one lorastack writes, else :class:`RecipeError` naming ``image``, the field, the value
    (cut short) and what is valid. Fields lorastack does not know are ignored."""
    from .generate import MAX_SEED, NAME_RULE, valid_name
    from .scales import validate_spec

    if not isinstance(recipe, dict):
        raise RecipeError(f"{image}: the recipe is {_json_kind(recipe)}, not an object")
    if type(recipe.get("version")) is not int or recipe["version"] != RECIPE_VERSION:
        raise RecipeError(
            f"{image}: recipe version {brief(recipe.get('version'))}; this lorastack reads {RECIPE_VERSION}"
        )
    try:
        _walk(_schema(), recipe, "")
        names: set[str] = set()
        for i, adapter in enumerate(recipe["adapters"]):
            name = adapter["name"]
            if not valid_name(name):
                raise _Bad(f"adapters[{i}].name", f"must be an adapter name ({NAME_RULE}), got {brief(name)}")
            if name in names:
                raise _Bad(f"adapters[{i}].name", f"names the adapter {brief(name)} more than once")
            names.add(name)
            try:
                validate_spec(adapter["scale"], recipe["base"]["family"])
            except ScaleError as e:
                raise _Bad(f"adapters[{i}].scale", f"is not a valid scale ({e})") from None
        mode, has_init, has_mask = recipe.get("mode"), "init_image" in recipe, "mask" in recipe
        if has_mask and not has_init:
            raise _Bad("mask", "needs an init_image to paint into")
        expected = "inpaint" if has_mask else "img2img" if has_init else "txt2img"
        if mode is not None and mode != expected:
            raise _Bad(
                "mode",
                f"must be {expected} for a recipe with{'' if has_init else 'out'} an init image, got {brief(mode)}",
            )
        rows = 1
        if "compare" in recipe:
            compare, count = recipe["compare"], len(recipe["adapters"])
            if count == 0:
                raise _Bad("compare", "needs at least one adapter to compare with the base")
            columns = 1 + count + (count > 1)
            if len(compare["columns"]) != columns:
                raise _Bad(
                    "compare.columns",
                    f"must be {columns} columns (base, each adapter{', all' if count > 1 else ''}), "
                    f"got {len(compare['columns'])}",
                )
            if len(compare["prompts"]) != columns:
                raise _Bad(
                    "compare.prompts", f"must be {columns} prompts, one per column, got {len(compare['prompts'])}"
                )
            rows = compare["rows"]
        if recipe["seed"] + rows - 1 > MAX_SEED:
            raise _Bad("seed", f"with {rows} rows goes past the largest seed, {MAX_SEED}")
    except _Bad as bad:
        raise RecipeError(f"{image}: recipe field '{bad.where}' {bad.problem}") from None
    return recipe


def _json_kind(value: Any) -> str:
    kinds = {list: "a list", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
    return "null" if value is None else kinds.get(type(value), type(value).__name__)
