"""Generation jobs: one loaded base kept between requests, adapters loaded once, weights changed on the fast path.

The worker thread owns the :class:`Studio`. A job names a base (one of those the server offers), adapters by
registry reference (or a built-in name), with scales, and what to make: images, a ``--compare`` grid (base | each
adapter | stack, same seed) or a weight sweep (one adapter at several scales, same seed). Before generating, the
stack is activated with :meth:`AdapterStack.activate`, which rewrites only the modules whose contributions changed
(a slider moved: that adapter's modules), and stays applied for the next job; the count is in the result.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from lorastack.core.errors import GenerationError

from .jobs import Job

SWEEP = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5)


class Studio:
    def __init__(self, registries, bases: list[str]):
        self.registries = registries  # per-thread registries (the worker's own connection)
        self.bases = bases
        self.source: str | None = None
        self.generator = None
        self.loads = 0  # how many times a base was loaded (a test checks it stays loaded)

    # --- checks a request handler runs before queueing ------------------------------------------------------
    def check_base(self, base: str | None) -> str:
        base = base or (self.bases[0] if self.bases else None)
        if base is None:
            raise GenerationError("no base: start lorastack serve with --base, or give base in the request")
        if base not in self.bases:
            raise GenerationError(f"base {base!r} is not one this server offers; bases: {', '.join(self.bases)}")
        return base

    # --- the worker's side ----------------------------------------------------------------------------------
    def _load(self, base: str):
        if self.source != base:
            from lorastack.core.base import load_base
            from lorastack.core.generate import Generator

            self.generator = None  # free the old base before loading the new one
            pipe = load_base(base)
            pipe.set_progress_bar_config(disable=True)
            self.generator, self.source = Generator(pipe), base
            self.loads += 1
        return self.generator

    def _adapter(self, generator, ref: str) -> str:
        """Load ``ref`` (a registry reference or a built-in name) once; its stack name is the immutable ``name@N``."""
        from lorastack.core.sources import BUILTIN_ADAPTERS

        if ref in BUILTIN_ADAPTERS:
            from lorastack.toy import STYLE_ADAPTER

            if ref not in generator.stack:
                generator.stack.load(ref, STYLE_ADAPTER, label=ref)
            return ref
        from lorastack.registry.uses import record_use

        registry = self.registries.get()
        version, path = registry.adapter_path(ref)
        record_use(registry, version.ref)  # one use per request that generates with it
        if version.ref not in generator.stack:
            generator.stack.load(version.ref, path, label=version.ref, trigger_words=version.trigger_words)
        return version.ref

    def run(self, job: Job) -> dict[str, Any]:
        from lorastack.core.generate import GenerateOptions
        from lorastack.core.prompts import extract_tags
        from lorastack.core.recipe import next_free, save_png

        p = job.params
        job.report(0.0, f"loading {p['base']}")
        started = time.perf_counter()
        generator = self._load(p["base"])
        loaded_at = time.perf_counter()
        stack = {self._adapter(generator, a["ref"]): a["scale"] for a in p["adapters"]}
        bare, tags = extract_tags(p["prompt"])
        for ref, scale in tags.items():  # <lora:…> tags name registry adapters too
            stack[self._adapter(generator, ref)] = scale
        options = GenerateOptions(
            prompt=bare, negative_prompt=p["negative"], steps=p["steps"], guidance=p["guidance"], width=p["width"],
            height=p["height"], seed=p["seed"], num_images=p["num_images"], scheduler=p["scheduler"],
            trigger=p["trigger"], adapters=stack,
        )  # fmt: skip
        out, images = job.folder, []

        def save(result, kind: str, **extra) -> None:
            seed = result.recipe.get("seed", 0)
            path = save_png(result.image, next_free(out, f"{seed}-{kind}" if kind != "image" else str(seed)),
                            result.recipe)  # fmt: skip
            images.append({"file": path.name, "kind": kind, "recipe": result.recipe, **extra})
            job.report(message=f"{len(images)} image(s) ready", images=[i["file"] for i in images])

        mode = p["mode"]
        switch = time.perf_counter()
        if mode == "sweep":
            target = self._adapter(generator, p["sweep"])
            if options.seed is None:
                import secrets

                options.seed = secrets.randbelow(2**32)
            rest = {n: s for n, s in stack.items() if n != target}
            results = []
            for i, scale in enumerate(SWEEP):
                generator.stack.activate({**rest, target: scale})
                (result,) = generator.generate(
                    GenerateOptions(**{**options.__dict__, "num_images": 1, "adapters": {**rest, target: scale}})
                )
                results.append(result)
                save(result, "sweep", scale=scale)
                job.report(progress=(i + 1) / len(SWEEP))
            from lorastack.core.grids import labelled_grid

            grid = labelled_grid([[r.image for r in results]], [f"{target} @ {s:g}" for s in SWEEP],
                                 [f"seed {options.seed}"], results[0].recipe["prompt"])  # fmt: skip
            from lorastack.core.generate import GeneratedImage

            save(GeneratedImage(grid, {"sweep": {"adapter": target, "scales": list(SWEEP), "seed": options.seed,
                                                 "images": [i["file"] for i in images]}}), "sweep-grid")  # fmt: skip
            changed = generator.stack.last_changed
        elif mode == "compare":
            save(generator.compare(options), "compare")
            changed = generator.stack.last_changed
        else:
            generator.stack.activate(stack)  # the fast path: only the modules whose contributions changed
            changed = generator.stack.last_changed
            switched = time.perf_counter()
            for i, result in enumerate(generator.generate(options)):
                save(result, "image")
                job.report(progress=(i + 1) / options.num_images)
            switch = switched
        done = time.perf_counter()
        return {
            "images": images,
            "base": p["base"],
            "stack": stack,
            "modules_changed": changed,
            "seconds": {
                "load": loaded_at - started,
                "switch": switch - loaded_at if mode == "image" else None,
                "total": done - started,
            },
        }


def check_request(studio: Studio, body: dict[str, Any]) -> dict[str, Any]:
    """A generate request, checked as the command line checks its options (the same messages), before queueing."""
    from lorastack.core.generate import GenerateOptions, check_options
    from lorastack.core.prompts import extract_tags
    from lorastack.core.sources import BUILTIN_ADAPTERS
    from lorastack.registry.names import parse_ref

    params = dict(body)
    params["base"] = studio.check_base(body.get("base"))
    adapters = []
    for a in body["adapters"]:
        if a["ref"] not in BUILTIN_ADAPTERS:
            parse_ref(a["ref"])  # a malformed reference: the registry's own message
            studio.registries.get().resolve(a["ref"])  # an unknown one: 404 with close matches, before queueing
        adapters.append({"ref": a["ref"], "scale": a["scale"]})
    params["adapters"] = adapters
    _, tags = extract_tags(body["prompt"])
    options = GenerateOptions(
        prompt=body["prompt"], negative_prompt=body["negative"], steps=body["steps"], guidance=body["guidance"],
        width=body["width"], height=body["height"], seed=body["seed"], num_images=body["num_images"],
        scheduler=body["scheduler"], adapters={a["ref"]: a["scale"] for a in adapters},
    )  # fmt: skip
    check_options(options)
    if body["mode"] == "compare" and not adapters and not tags:
        raise GenerationError("--compare needs at least one adapter (--lora or a <lora:…> tag)")
    if body["mode"] == "sweep":
        if not body.get("sweep"):
            raise GenerationError("a weight sweep needs sweep: the reference of the adapter to sweep")
        if body["sweep"] not in BUILTIN_ADAPTERS:
            studio.registries.get().resolve(body["sweep"])
    return params


def image_path(folder: Path, name: str) -> Path:
    return folder / name
