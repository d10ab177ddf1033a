"""The GPU suite: every speed and scale figure of docs/performance.md, each against diffusers in the same run.

    python bench/gpu_suite.py                 # one H100/H200: full-size random weights (aim: under 8 minutes)
    python bench/gpu_suite.py --dry-run       # the same rows on tiny models on the CPU (a few minutes at most)
    python bench/gpu_suite.py --only stack,bypass --json results.json

Rows (each a section; one that fails prints its error and the suite goes on):

* ``stack``: SD1.5 and SDXL adapter load N = 1..20, stack switch + step, 3-adapter step vs base
  (``bench_stack.py``: diffusers ``load_lora_weights``/``set_adapters`` vs ``AdapterStack``);
* ``bypass``: one denoising step with 3 adapters, merged vs bypassed vs the bare base, and diffusers' peft layers;
* ``hotswap``: compiled denoiser, 3-adapter switches: switch time and recompilations, lorastack
  (``compile_denoiser``) vs diffusers (``enable_lora_hotswap`` + ``load_lora_weights(hotswap=True)``);
* ``flux``: FLUX.1 dev bf16 forward with 2 adapters, lorastack vs diffusers (``bench_transformer.py --active 2``);
* ``train``: LoRA training throughput against the diffusers recipe (``bench_train.py``): SD1.5 512 px, SD1.5 peak
  memory at rank 16, batch 1, with gradient checkpointing, SDXL 1024 px, and SDXL on an NF4 base (QLoRA; the dry
  run puts torchao int8 in NF4's place, bitsandbytes needing a GPU).

``--dry-run`` compiles with dynamo's ``eager`` backend (the recompilation count is dynamo's either way).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).parent))

SECTIONS = ("stack", "bypass", "hotswap", "flux", "train")


def _args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", action="store_true", help="tiny models on the CPU: checks the whole suite runs")
    p.add_argument("--only", default=",".join(SECTIONS), help=f"sections, comma-separated ({', '.join(SECTIONS)})")
    p.add_argument("--json", type=Path, default=None, help="also write every result here")
    args = p.parse_args(argv)
    args.sections = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in args.sections if s not in SECTIONS]
    if unknown:
        p.error(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    args.device = "cpu" if args.dry_run or not torch.cuda.is_available() else "cuda"
    return args


def _stack_args(args, family: str):
    return SimpleNamespace(
        family=family, device=args.device, dtype="fp32" if args.dry_run else "fp16", quick=args.dry_run,
        latent=8 if args.dry_run else (64 if family == "sd15" else 128), rank=4 if args.dry_run else 16,
    )  # fmt: skip


def section_stack(args, out: Path) -> dict:
    import bench_stack

    results = {}
    for family in ("sd15", "sdxl"):
        argv = ["--family", family, "--json", str(out / f"stack-{family}.json")]
        if args.dry_run:
            argv += ["--quick", "--repeats", "2"]
        else:
            argv += ["--device", "cuda", "--dtype", "fp16", "--latent", "64" if family == "sd15" else "128"]
        bench_stack.main(argv)
        results[family] = json.loads((out / f"stack-{family}.json").read_text())
        if args.dry_run:
            break  # the quick run builds the tiny SD1 UNet whatever the family
    return results


def _median(fn, device, repeats: int) -> float:
    import bench_stack

    fn()
    return statistics.median(bench_stack.timed(fn, device) for _ in range(repeats))


def section_bypass(args, out: Path) -> dict:
    import bench_stack

    from lorastack.core.stack import AdapterStack

    sargs = _stack_args(args, "sd15")
    repeats = 3 if args.dry_run else 10
    unet = bench_stack.build_unet(sargs)
    paths, _ = bench_stack.make_adapter_files(unet, out, 3, sargs.rank)
    step = bench_stack.step_inputs(unet, sargs)
    pipe = bench_stack.as_pipeline(unet)
    times = {"base": _median(step, args.device, repeats)}
    for mode in ("merge", "bypass"):
        stack = AdapterStack(pipe, mode=mode)
        for i, path in enumerate(paths):
            stack.load(f"a{i}", path)
        stack.activate({f"a{i}": 0.5 for i in range(3)})
        times[mode] = _median(step, args.device, repeats)
        switch = {f"a{i}": 0.3 + 0.1 * i for i in range(3)}
        times[f"{mode}_rescale"] = bench_stack.timed(lambda s=stack, w=switch: s.activate(w), args.device)
        stack.deactivate()
        del stack
    for i, path in enumerate(paths):  # diffusers: peft layers, unfused
        pipe.load_lora_weights(str(path), adapter_name=f"d{i}")
    pipe.set_adapters([f"d{i}" for i in range(3)], [0.5] * 3)
    times["diffusers"] = _median(step, args.device, repeats)
    print(f"bypass: 3-adapter step {times['bypass'] * 1e3:.1f} ms (merge {times['merge'] * 1e3:.1f}, base "
          f"{times['base'] * 1e3:.1f}, diffusers peft {times['diffusers'] * 1e3:.1f}); rescale bypass "
          f"{times['bypass_rescale'] * 1e3:.1f} ms vs merge {times['merge_rescale'] * 1e3:.1f} ms")  # fmt: skip
    return times


def _switches(step, switch, switches: int, device: str) -> dict:
    """The first (compiling) step, then ``switches`` timed switches each followed by a step: the median switch and
    the graphs compiled after the first step (both sides of the hot-swap row are measured the same way)."""
    import bench_stack

    from lorastack.core.compiled import compile_counts

    t = time.perf_counter()
    step()
    first = time.perf_counter() - t
    before = compile_counts()
    times = []
    for i in range(switches):
        times.append(bench_stack.timed(lambda i=i: switch(i), device))
        step()
    return {"first_step_s": first, "switch_ms": statistics.median(times) * 1e3, "recompiles": _recompiles(before)}


def _recompiles(before: dict) -> int:
    from lorastack.core.compiled import compile_counts

    after = compile_counts()
    return after["graphs"] - before["graphs"]


def section_hotswap(args, out: Path) -> dict:
    import bench_stack

    from lorastack.core.compiled import compile_denoiser
    from lorastack.core.stack import AdapterStack

    backend = "eager" if args.dry_run else "inductor"
    sargs = _stack_args(args, "sd15")
    switches = 3 if args.dry_run else 20
    results = {}
    unet = bench_stack.build_unet(sargs)
    paths, _ = bench_stack.make_adapter_files(unet, out, 4, sargs.rank)
    step = bench_stack.step_inputs(unet, sargs)
    # lorastack: bypass buffers reserved, compiled once
    torch._dynamo.reset()
    pipe = bench_stack.as_pipeline(unet)
    stack = AdapterStack(pipe, mode="bypass")
    for i, path in enumerate(paths):
        stack.load(f"a{i}", path)
    stack.activate({"a0": 1.0})
    compile_denoiser(stack, backend=backend, max_rank=4 * sargs.rank)
    results["lorastack"] = _switches(
        step, lambda i: stack.activate({f"a{i % 4}": 0.8, f"a{(i + 1) % 4}": 0.4}), switches, args.device
    )
    stack.deactivate()
    stack.bypass.clear()
    stack = pipe = None  # freed before diffusers' copy is built
    # diffusers: hot-swap padded to the max rank, compiled after the first adapter (its documented order)
    torch._dynamo.reset()
    unet = bench_stack.build_unet(sargs)
    step = bench_stack.step_inputs(unet, sargs)
    pipe = bench_stack.as_pipeline(unet)
    try:
        pipe.enable_lora_hotswap(target_rank=sargs.rank)
        pipe.load_lora_weights(str(paths[0]), adapter_name="hot")
        unet.compile(backend=backend)
        results["diffusers"] = _switches(
            step,
            lambda i: pipe.load_lora_weights(str(paths[(i + 1) % 4]), adapter_name="hot", hotswap=True),
            switches,
            args.device,
        )
    except Exception as e:  # an older diffusers without hot-swap: said, not hidden
        results["diffusers"] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}
    ours, theirs = results["lorastack"], results["diffusers"]
    print(f"hotswap ({backend}): lorastack switch {ours['switch_ms']:.1f} ms, {ours['recompiles']} recompiles over "
          f"{switches} switches (two adapters active); diffusers {theirs.get('switch_ms', float('nan')):.1f} ms, "
          f"{theirs.get('recompiles', '?')} recompiles (one adapter, swapped) {theirs.get('error', '')}")  # fmt: skip
    return results


def section_flux(args, out: Path) -> dict:
    import bench_transformer

    argv = ["--json", str(out / "flux.json"), "--active", "2"]  # the row: a step with 2 adapters
    if args.dry_run:
        argv += ["--quick", "--threads", "1"]
    else:
        argv += ["--model", "flux1-dev", "--device", "cuda", "--dtype", "bf16", "--latent", "64", "--adapters", "4"]
    bench_transformer.main(argv)
    return json.loads((out / "flux.json").read_text())


#: the training rows: label → bench_train.py options (GPU); the dry run takes the tiny models and few steps
TRAIN_ROWS = {
    "sd15_512": ["--family", "sd15"],
    "sd15_checkpointing": ["--family", "sd15", "--gradient-checkpointing"],
    "sdxl_1024": ["--family", "sdxl", "--gradient-checkpointing"],
    "sdxl_nf4": ["--family", "sdxl", "--gradient-checkpointing", "--quantize-base", "bnb-nf4"],
}


def section_train(args, out: Path) -> dict:
    import contextlib
    import io

    import bench_train

    results = {}
    for label, extra in TRAIN_ROWS.items():
        if args.dry_run:  # bitsandbytes needs a GPU: torchao int8 stands in for NF4 on the CPU
            extra = [e if e != "bnb-nf4" else "torchao-int8" for e in extra]
            extra = [*extra, "--quick", "--rounds", "1", "--warmup", "1", "--steps", "1"]
        else:
            extra = [*extra, "--rounds", "1", *(["--steps", "10"] if "sdxl" in label else [])]
        buffer = io.StringIO()
        with contextlib.redirect_stdout(buffer):
            bench_train.main([*extra, "--json"])
        results[label] = r = json.loads(buffer.getvalue())
        print(
            f"train {label} ({r['model']}, {r['resolution']} px, base {r['quantize_base']}): lorastack "
            f"{r['steps_per_s']['lorastack']:.3f} steps/s vs diffusers recipe {r['steps_per_s']['anchor']:.3f} "
            f"({r['ratio']:.2f}x), peak {r['peak_gib']['lorastack']:.2f} GiB (recipe {r['peak_gib']['anchor']:.2f})"
        )
    return results


def main(argv=None) -> dict:
    args = _args(argv)
    torch.set_flush_denormal(True)
    if args.device == "cpu":  # what bench_stack.py does on the CPU, for every section whichever runs first
        import bench_stack

        bench_stack.pin_allocator()
        torch.set_num_threads(1)  # bench_stack.py's default: a shared 2-core machine measures steadier on one
    machine = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    print(f"gpu_suite on {machine}{' (dry run: tiny models)' if args.dry_run else ''}")
    results = {"machine": machine, "dry_run": args.dry_run, "torch": torch.__version__}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu-suite-") as tmp:
        for name in args.sections:
            out = Path(tmp) / name
            out.mkdir()
            t = time.perf_counter()
            try:
                results[name] = globals()[f"section_{name}"](args, out)
            except Exception as e:  # one section's failure is reported and the others still run
                traceback.print_exc()
                results[name] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"}
            print(f"[{name}: {time.perf_counter() - t:.1f} s]")
    results["total_s"] = time.perf_counter() - start
    print(f"total {results['total_s']:.1f} s")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    return results


if __name__ == "__main__":
    outcome = main()
    sys.exit(1 if any(isinstance(v, dict) and "error" in v for v in outcome.values()) else 0)
