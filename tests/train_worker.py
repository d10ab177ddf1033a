"""One process of a multi-process training launch (``torchrun``/``accelerate launch`` run it once per process).

``python train_worker.py JOBS.json OUT_DIR``: trains each job of JOBS.json in turn, then writes what this process
ended with to ``OUT_DIR/rank-N.json`` (its adapter digest, losses, registered ref, process count), so a test can
compare the processes with each other and with a one-process run.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(jobs_file: str, out_dir: str) -> None:
    from accelerate import PartialState

    from lorastack.core.training.api import train

    jobs = json.loads(Path(jobs_file).read_text())
    results = []
    calls = _count_pipeline_calls()
    for job in jobs:
        calls.clear()
        result = train(job["trainer"], job["base"], job["data"], output=job["output"], options=job["options"],
                       name=job.get("name"), resume=job.get("resume", False), progress=False)  # fmt: skip
        results.append({"digest": result.digest, "losses": result.losses, "registered": result.registered,
                        "shard": result.shard, "held": result.held, "pipeline_calls": len(calls),
                        "processes": result.processes, "adapter": str(result.adapter_path)})  # fmt: skip
    state = PartialState()
    out = Path(out_dir) / f"rank-{state.process_index}.json"
    out.write_text(json.dumps({"rank": state.process_index, "processes": state.num_processes, "jobs": results}))


def _count_pipeline_calls() -> list[str]:
    """Every call of a Stable Diffusion pipeline in this process (class images, samples), as its prompt."""
    from diffusers import StableDiffusionPipeline

    calls: list[str] = []
    real = StableDiffusionPipeline.__call__

    def counted(self, prompt=None, *args, **kwargs):
        calls.append(str(prompt))
        return real(self, prompt, *args, **kwargs)

    StableDiffusionPipeline.__call__ = counted
    return calls


if __name__ == "__main__":
    main(*sys.argv[1:3])
