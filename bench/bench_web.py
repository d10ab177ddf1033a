"""``lorastack serve`` timings: the library's first page with many adapters, and a weight-slider change to its image.

    python bench/bench_web.py              # 10,000 adapters; the slider on the tiny SD1 base vs a cold generate
    python bench/bench_web.py --quick      # 300 adapters, to check the script runs

(1) ``GET /api/adapters`` (first page, 48 cards with their thumbnails), measured in process through the ASGI app:
    the server's time for the page, cold (first request) and warm (median of 20); goal ≤ 300 ms; and a search.
(2) On the tiny SD1 base with one LoRA: the time from ``POST /api/generate`` with a new scale to the finished job
    (the base stays loaded; only that adapter's modules are rewritten), against a cold
    ``lorastack generate`` process making the same image (``ratio = cold / warm``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HEADERS = {"X-Lorastack": "1"}


def make_library(root: Path, count: int) -> Path:
    """``count`` small SD1.5 adapter files (the same tensors, each its own header, so each its own hash), scanned
    into a registry in place."""
    from lorastack.adapters.files import serialize_safetensors
    from lorastack.registry import Registry
    from lorastack.registry.scan import scan
    from lorastack.testing.registry import small_adapter

    files = root / "files"
    files.mkdir(parents=True)
    template = small_adapter(root / "template.safetensors")
    from safetensors.torch import load_file

    tensors = load_file(template)
    for i in range(count):
        folder = files / f"group-{i // 500:03d}"
        folder.mkdir(exist_ok=True)
        header = {"modelspec.title": f"adapter {i}", "modelspec.architecture": "stable-diffusion-v1/lora",
                  "modelspec.trigger_phrase": f"word{i}"}  # fmt: skip
        (folder / f"style-{i:05d}.safetensors").write_bytes(serialize_safetensors(tensors, header))
    started = time.perf_counter()
    report = scan(Registry(root / "registry"), [files])
    print(f"scanned {count} adapters in {time.perf_counter() - started:.1f} s ({len(report.added)} added)")
    return root / "registry"


def page_times(registry: Path, folder: Path, count: int) -> dict:
    from fastapi.testclient import TestClient

    from lorastack.web.app import create_app

    with TestClient(create_app(registry, folder=folder)) as client:

        def timed(params) -> float:
            started = time.perf_counter()
            response = client.get("/api/adapters", params=params)
            elapsed = time.perf_counter() - started
            assert response.status_code == 200 and response.json()["items"], response.text
            return elapsed

        cold = timed({})
        warm = [timed({}) for _ in range(20)]
        search = [timed({"q": "word99"}) for _ in range(5)]
        last = [timed({"page": (count - 1) // 48 + 1}) for _ in range(5)]
    return {
        "cold_ms": cold * 1000,
        "warm_median_ms": statistics.median(warm) * 1000,
        "search_median_ms": statistics.median(search) * 1000,
        "last_page_median_ms": statistics.median(last) * 1000,
    }


def slider_times(root: Path, steps: int) -> dict:
    from fastapi.testclient import TestClient

    from lorastack.testing.models import save_tiny_pipeline
    from lorastack.web.app import create_app

    base = save_tiny_pipeline(root / "tiny-sd1", "sd1")
    adapter = root / "style.safetensors"
    subprocess.run([sys.executable, "-m", "lorastack.testing", "random-adapter", str(base), str(adapter)], check=True,
                   capture_output=True)  # fmt: skip
    from lorastack.registry import Registry

    Registry(root / "slider-registry").import_file(adapter, "bench/style")
    app = create_app(root / "slider-registry", default_base=str(base), folder=root / "slider-serve")
    body = {"prompt": "a photo of a cat", "steps": steps, "seed": 1}
    times, changed = [], []
    with TestClient(app) as client:

        def run(scale: float) -> float:
            started = time.perf_counter()
            job = client.post("/api/generate", json={**body, "adapters": [{"ref": "bench/style", "scale": scale}]},
                              headers=HEADERS).json()  # fmt: skip
            while (record := client.get(f"/api/jobs/{job['id']}").json())["state"] in ("queued", "running"):
                time.sleep(0.002)
            assert record["state"] == "done", record
            changed.append(record["result"]["modules_changed"])
            return time.perf_counter() - started

        first = run(1.0)  # loads the base and the adapter
        for i in range(10):
            times.append(run(0.1 * i))
    cold = []
    env = {**os.environ, "LORASTACK_HOME": str(root / "cold-home")}
    for _ in range(3):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "lorastack.cli.main", "generate", body["prompt"], "--base", str(base),
                        "--lora", f"{adapter}:0.5", "--seed", "1", "--steps", str(steps), "-o", str(root / "cold")],
                       check=True, capture_output=True, env=env)  # fmt: skip
        cold.append(time.perf_counter() - started)
    warm = statistics.median(times)
    return {"first_job_s": first, "slider_median_s": warm, "modules_changed": changed[1:],
            "cold_generate_median_s": statistics.median(cold), "ratio": statistics.median(cold) / warm}  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--adapters", type=int, default=None)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    count = args.adapters or (300 if args.quick else 10_000)
    with tempfile.TemporaryDirectory(prefix="bench-web-") as tmp:
        root = Path(tmp)
        registry = make_library(root, count)
        results = {"adapters": count, "page": page_times(registry, root / "serve", count),
                   "slider": slider_times(root, 2 if args.quick else args.steps)}  # fmt: skip
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
