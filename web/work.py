"""The jobs other than generation: training, adapter imports from uploads, folder scans, Hub pushes.

Each handler takes a :class:`~lorastack.web.jobs.Job` and returns its result (a JSON-able dict). They call the
functions the command line calls (``train``, ``Registry.import_file``, ``registry.scan.scan``, ``registry.hub.push``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from lorastack.core.training.options import TrainingError

from .jobs import Job, JobCancelled

SAMPLE_NAME = re.compile(r"^step-\d{6}\.png$")
MAX_LOSSES = 5000  # live loss values kept per job (older ones are thinned out)


def trainers() -> list[dict[str, Any]]:
    """Every registered trainer with its declared options (and the engine's), for the train form."""
    from lorastack.core.training.options import engine_and_trainer_options
    from lorastack.plugins.manager import get_manager

    manager = get_manager()
    out = []
    for name in manager.names("trainers"):
        trainer = manager.get("trainers", name)
        options = [
            {"name": o.name, "type": o.type, "default": o.default if _plain(o.default) else str(o.default),
             "help": o.help, "choices": list(o.choices) if o.choices else None, "required": o.required,
             "minimum": o.minimum, "maximum": o.maximum}
            for o in engine_and_trainer_options(trainer.options)
        ]  # fmt: skip
        out.append({"name": name, "description": trainer.description, "options": options})
    return out


def _plain(value: Any) -> bool:
    try:
        json.dumps(value)
        return True
    except TypeError:
        return False


def train_job(registries, job: Job) -> dict[str, Any]:
    from lorastack.core.training.api import train

    p = job.params
    run_dir = Path(p["run_dir"])
    steps = int(p["options"].get("steps") or 0)
    losses: list[float] = list(job.live.get("losses", []))

    def on_step(step: int, loss: float) -> None:
        losses.append(float(loss))
        if len(losses) > MAX_LOSSES:
            del losses[::2]
        samples = sorted(f.name for f in (run_dir / "samples").glob("step-*.png")) if run_dir.exists() else []
        job.report((step / steps) if steps else None, f"step {step}" + (f"/{steps}" if steps else ""),
                   step=step, losses=losses, samples=samples)  # fmt: skip

    job.report(0.0, f"loading {p['base']}")
    try:
        result = train(p["trainer"], p["base"], p["data"], name=None, output=run_dir, options=p["options"],
                       resume=p.get("resume", False), register=False, progress=False, on_step=on_step)  # fmt: skip
    except JobCancelled:
        job.live["resumable"] = True
        raise
    ref = None
    if p.get("name"):
        from lorastack.registry.names import parse_name_tag

        name, tag = parse_name_tag(p["name"])
        job.report(message=f"registering {p['name']}")
        imported = registries.get().import_file(
            result.adapter_path, name, tag,
            provenance={"training": {"run": str(run_dir), "trainer": p["trainer"], "steps": result.steps,
                                     "base": p["base"], "data": p["data"]}},
        )  # fmt: skip
        ref = imported.version.ref
    samples = sorted(f.name for f in (run_dir / "samples").glob("step-*.png"))
    return {"ref": ref, "steps": result.steps, "run": str(run_dir), "samples": samples,
            "loss_curve": (run_dir / "loss.png").exists()}  # fmt: skip


def check_train(body: dict[str, Any]) -> None:
    from lorastack.core.training.options import resolve
    from lorastack.plugins.manager import get_trainer

    plugin = get_trainer(body["trainer"])  # an unknown trainer: the CLI's message
    resolve(plugin.options, dict(body["options"]), body["trainer"])
    if body.get("name"):
        from lorastack.registry.names import parse_name_tag

        parse_name_tag(body["name"])
    if not body.get("data"):
        raise TrainingError("give data: a dataset folder on this machine, or an uploaded zip")


def import_job(registries, job: Job) -> dict[str, Any]:
    p = job.params
    job.report(0.1, f"importing {p['filename']}")
    result = registries.get().import_file(p["path"], p["name"], p.get("tag"))
    Path(p["path"]).unlink(missing_ok=True)  # the upload's copy; the registry has its own
    return {"ref": result.version.ref, "created": result.created}


def scan_job(registries, job: Job) -> dict[str, Any]:
    from lorastack.registry.scan import scan

    p = job.params
    total = {"bytes": 0}
    read = {"bytes": 0}

    def on_total(files: int, size: int) -> None:
        total["bytes"] = size
        job.report(0.0, f"{files} file(s) to read", files=files)

    def on_read(size: int) -> None:
        read["bytes"] += size
        job.report(read["bytes"] / total["bytes"] if total["bytes"] else None, f"{read['bytes']:,} bytes read")

    report = scan(registries.get(), [p["folder"]], copy=p.get("copy", False), namespace=p.get("namespace"),
                  on_total=on_total, on_read=on_read)  # fmt: skip
    data = report.as_dict()
    return {"counts": data["counts"], "added": data["added"][:200], "errors": data["errors"][:200],
            "seconds": data["seconds"]}  # fmt: skip


def push_job(registries, job: Job) -> dict[str, Any]:
    from lorastack.registry.hub import push

    p = job.params
    job.report(0.1, f"pushing {p['ref']} to {p['repo_id']}")
    result = push(registries.get(), p["ref"], p["repo_id"], private=p.get("private", False))
    return {k: v for k, v in result.__dict__.items() if _plain(v)}
