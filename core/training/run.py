"""A run folder: the recipe, checkpoints (adapter + optimizer state), samples, the loss curve, the final adapter.

```
RUN/
  run.json                     trainer, base, data, recipe fingerprint, checkpoints, validation losses, best
  recipe.toml                  the resolved recipe
  checkpoints/step-000050/     adapter.safetensors (loads anywhere), state.pt (resume), complete (written last)
  samples/step-000050.png      validation prompts, fixed seeds
  loss.png, losses.json        the loss curve
  adapter.safetensors          the final adapter
```
A checkpoint counts only once its ``complete`` marker exists, so a run killed while saving resumes from the one
before.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import stat
from pathlib import Path
from typing import Any

import torch

from lorastack.adapters.outputs import atomic_write_bytes, check_output_dir
from lorastack.adapters.writing import write_adapter

from .options import TrainingError

RUN_FILE = "run.json"


class RunFolder:
    def __init__(self, path: str | Path, identity: dict[str, Any], recipe_text: str, *, resume: bool = False):
        """Open ``path`` for a run; refuse a folder that holds another recipe's run, or any run unless resuming."""
        self.path = Path(path)
        self.identity = identity
        check_output_dir(self.path)  # a file, a FIFO, under a file, read-only: refused before anything is read
        existing = self._read()
        if existing is not None:
            if existing.get("identity") != identity:
                changed = sorted(
                    k for k in set(identity) | set(existing.get("identity", {}))
                    if identity.get(k) != existing.get("identity", {}).get(k)
                )  # fmt: skip
                raise TrainingError(
                    f"run folder {str(self.path)!r} belongs to another recipe (differs in: {', '.join(changed)}); "
                    "choose a new --output folder"
                )
            if not resume:
                raise TrainingError(
                    f"run folder {str(self.path)!r} already holds a run; pass --resume to continue it, or choose "
                    "a new --output folder"
                )
            self.state = existing
        else:
            if resume:
                raise TrainingError(f"nothing to resume in {str(self.path)!r}: it holds no run")
            if self.path.exists() and any(self.path.iterdir()):
                raise TrainingError(
                    f"{str(self.path)!r} is not empty and holds no run; choose an empty --output folder"
                )
            self.path.mkdir(parents=True, exist_ok=True)
            self.state = {"identity": identity, "checkpoints": [], "validation": {}, "best": None, "status": "new"}
            atomic_write_bytes(self.path / "recipe.toml", recipe_text.encode())
            self._write()

    @classmethod
    def join(cls, path: str | Path, identity: dict[str, Any]) -> RunFolder:
        """The run folder the main process of a multi-process launch has just opened, for another process of it:
        read, never written (only the main process writes)."""
        self = cls.__new__(cls)
        self.path, self.identity = Path(path), identity
        self.state = self.reload()
        if self.state.get("identity") != identity:
            raise TrainingError(f"run folder {str(self.path)!r} holds another recipe's run than this process's; "
                                "every process of a launch must be given the same options")  # fmt: skip
        return self

    def reload(self) -> dict[str, Any]:
        """``run.json`` as the main process last wrote it."""
        state = self._read()
        if state is None:
            raise TrainingError(f"run folder {str(self.path)!r} holds no run.json: the main process made none")
        return state

    # --- files --------------------------------------------------------------------------------------------------

    @property
    def adapter_path(self) -> Path:
        return self.path / "adapter.safetensors"

    def _read(self) -> dict | None:
        file = self.path / RUN_FILE
        try:
            if not stat.S_ISREG(os.stat(file).st_mode):  # a FIFO there would block the read
                raise TrainingError(f"{str(file)!r} is not a regular file; choose a new --output folder")
            return json.loads(file.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            raise TrainingError(f"{str(self.path / RUN_FILE)!r} cannot be read ({e})") from None

    def _write(self) -> None:
        atomic_write_bytes(self.path / RUN_FILE, json.dumps(self.state, indent=2, sort_keys=True).encode())

    def _complete(self) -> list[Path]:
        folder = self.path / "checkpoints"
        if not folder.is_dir():
            return []
        return sorted(p for p in folder.iterdir() if (p / "complete").exists())

    def last_checkpoint(self) -> str | None:
        complete = self._complete()
        return str(complete[-1]) if complete else None

    # --- checkpoints --------------------------------------------------------------------------------------------

    def save_checkpoint(self, step, adapter, params, optimizer, lr_scheduler, losses, validation, samples) -> Path:
        """Write checkpoint ``step``: ``params`` (whole tensors) and ``optimizer`` (an optimizer, or the state dict
        of one: a sharded run's, gathered whole) with the schedule and losses, so a resumed run continues it."""
        folder = self.path / "checkpoints" / f"step-{step:06d}"
        if folder.exists():
            shutil.rmtree(folder)  # an incomplete one from a killed run
        folder.mkdir(parents=True)
        write_adapter(adapter, folder / "adapter.safetensors", "diffusers")
        state = {
            "step": step,
            "params": {name: p.detach().to("cpu").clone() for name, p in params.items()},
            "optimizer": optimizer if isinstance(optimizer, dict) else optimizer.state_dict(),
            "lr_scheduler": lr_scheduler.state_dict(),
            "losses": list(losses),
        }
        buffer = io.BytesIO()
        torch.save(state, buffer)
        atomic_write_bytes(folder / "state.pt", buffer.getvalue())
        if samples is not None:  # PNG bytes
            (self.path / "samples").mkdir(exist_ok=True)
            atomic_write_bytes(self.path / "samples" / f"step-{step:06d}.png", samples)
        atomic_write_bytes(folder / "complete", b"")
        self.state["checkpoints"] = sorted({*self.state["checkpoints"], folder.name})
        if validation is not None:
            self.state["validation"][str(step)] = validation
            best = min(self.state["validation"].items(), key=lambda kv: (kv[1], int(kv[0])))
            self.state["best"] = f"step-{int(best[0]):06d}"
        self.state["status"] = "training"
        self._write()
        self._plot(losses)
        return folder

    def restore(self, params, optimizer, lr_scheduler, sharded=None) -> tuple[int, list[float]]:
        """Load the last complete checkpoint into the parameters and optimizer; ``(0, [])`` when there is none.
        ``sharded`` (a ``sharded.Sharded``): the parameters are shards, each process takes its part."""
        complete = self._complete()
        if not complete:
            return 0, []
        try:
            state = torch.load(complete[-1] / "state.pt", map_location="cpu", weights_only=True)
        except Exception as e:
            raise TrainingError(f"checkpoint {str(complete[-1])!r} cannot be read ({type(e).__name__}: {e})") from None
        missing = sorted(set(params) ^ set(state["params"]))
        if missing:
            raise TrainingError(
                f"checkpoint {str(complete[-1])!r} does not fit this model (parameters differ: {missing[0]}, …): "
                "was the base model changed?"
            )
        if sharded is not None:
            sharded.load(params, optimizer, state["params"], state["optimizer"])
        else:
            with torch.no_grad():
                for name, p in params.items():
                    p.copy_(state["params"][name])
            optimizer.load_state_dict(state["optimizer"])
        lr_scheduler.load_state_dict(state["lr_scheduler"])
        return int(state["step"]), list(state["losses"])

    def finish(self, losses: list[float]) -> dict[str, Any]:
        """Copy the final checkpoint's adapter to ``adapter.safetensors`` and mark the run done."""
        complete = self._complete()
        if not complete:
            raise TrainingError(f"run {str(self.path)!r} has no checkpoint to finish from")
        atomic_write_bytes(self.adapter_path, (complete[-1] / "adapter.safetensors").read_bytes())
        self.state["status"] = "done"
        self._write()
        self._plot(losses)
        return self.state

    def _plot(self, losses: list[float]) -> None:
        atomic_write_bytes(self.path / "losses.json", json.dumps(losses).encode())
        if len(losses) >= 2:
            from .pictures import loss_plot_png

            atomic_write_bytes(self.path / "loss.png", loss_plot_png(losses, self.state.get("validation", {})))
