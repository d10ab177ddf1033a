"""Adapter stacks: lorastack against plain diffusers/peft, measured in the same run on the same machine.

On a full-size random-weight SD1.5 UNet (or SDXL with ``--family sdxl``), with rank-16 LoRAs on every attention
projection (what diffusers' training scripts target):

(a) the time to load the N-th adapter, N = 1..20 (diffusers ``load_lora_weights`` vs ``AdapterStack.load``);
(b) switching from one 3-adapter stack to another, plus one denoising step
    (diffusers ``set_adapters`` vs ``AdapterStack.activate``);
(c) one denoising step with 3 active adapters, as a ratio to the bare base (diffusers' unfused peft layers vs
    lorastack's patched weights).

Variants are interleaved and repeated; medians and minimums are printed, with ratios. Run:

    python bench/bench_stack.py                      # CPU, one thread (a few minutes, ~9 GB of RAM)
    python bench/bench_stack.py --device cuda --dtype fp16 --latent 64
    python bench/bench_stack.py --quick              # small and fast, to check the script runs
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from functools import partial
from pathlib import Path

import torch

TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--family", choices=["sd15", "sdxl"], default="sd15")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default="fp32")
    p.add_argument("--threads", type=int, default=1, help="torch threads on CPU (1 is steadiest on a shared machine)")
    p.add_argument("--adapters", type=int, default=20, help="N for (a)")
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--latent", type=int, default=32, help="latent side for the denoising step (64 = 512 px)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--quick", action="store_true", help="tiny UNet, few repeats: checks that the script runs")
    p.add_argument("--parts", default="abc", help="which measurements to run, e.g. 'c' or 'bc'")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    return p.parse_args(argv)


def build_unet(args, seed=0):
    from lorastack.testing.models import TINY_SD1_UNET, build_full_unet

    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    if args.quick:
        from diffusers import UNet2DConditionModel

        torch.manual_seed(seed)
        return UNet2DConditionModel(**TINY_SD1_UNET).to(args.device, dtype).eval()
    return build_full_unet(args.family, seed=seed, device=args.device, dtype=dtype)


def as_pipeline(unet):
    """A diffusers pipeline around the UNet: the text encoder/VAE do not take part in these measurements."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    from lorastack.testing.models import build_tiny_pipeline

    tiny = build_tiny_pipeline("sdxl" if unet.config.get("addition_embed_type") == "text_time" else "sd1")
    parts = {k: v for k, v in tiny.components.items() if k != "unet"}
    cls = StableDiffusionXLPipeline if isinstance(tiny, StableDiffusionXLPipeline) else StableDiffusionPipeline
    return cls(unet=unet, **parts)


def make_adapter_files(unet, folder: Path, count: int, rank: int) -> list[Path]:
    """``count`` random diffusers-format LoRAs (with alpha metadata) over every attention projection."""
    from diffusers import StableDiffusionPipeline

    modules = [
        (name, m)
        for name, m in unet.named_modules()
        if isinstance(m, torch.nn.Linear) and name.endswith(tuple("." + t for t in TARGETS))
    ]
    paths = []
    for i in range(count):
        g = torch.Generator().manual_seed(1000 + i)
        state = {}
        for name, m in modules:
            state[f"{name}.lora_A.weight"] = torch.randn(rank, m.in_features, generator=g) * 0.02
            state[f"{name}.lora_B.weight"] = torch.randn(m.out_features, rank, generator=g) * 0.02
        metadata = {"r": rank, "lora_alpha": rank, "target_modules": [n for n, _ in modules]}
        path = folder / f"adapter{i:02d}.safetensors"
        StableDiffusionPipeline.save_lora_weights(
            str(folder), unet_lora_layers=state, weight_name=path.name, unet_lora_adapter_metadata=metadata
        )
        paths.append(path)
    return paths, len(modules)


def sync(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device):
    sync(device)
    t = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t


def step_inputs(unet, args):
    dtype = unet.dtype
    sample = torch.randn(1, 4, args.latent, args.latent, generator=torch.Generator().manual_seed(0)).to(
        args.device, dtype
    )
    context = torch.randn(1, 77, unet.config.cross_attention_dim).to(args.device, dtype)
    kwargs = {}
    if unet.config.get("addition_embed_type") == "text_time":
        dim = unet.config.projection_class_embeddings_input_dim - 6 * unet.config.addition_time_embed_dim
        kwargs["added_cond_kwargs"] = {
            "text_embeds": torch.randn(1, dim).to(args.device, dtype),
            "time_ids": torch.tensor([[args.latent * 8] * 2 + [0, 0] + [args.latent * 8] * 2]).to(args.device, dtype),
        }
    t = torch.tensor([500], device=args.device)

    @torch.no_grad()
    def step():
        unet(sample, t, context, **kwargs)

    return step


def pin_allocator():
    """Fix glibc malloc's thresholds for the whole run.

    glibc raises its mmap threshold whenever a large block is freed: a step measured right after
    ``AdapterStack.deactivate`` (which frees the saved originals) then gets its activation buffers from the heap,
    while other steps pay page faults for fresh mmaps, and the comparison measures the allocator, not the model.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if not name or sys.platform != "linux":
        return
    libc = ctypes.CDLL(name)
    m_trim_threshold, m_mmap_threshold = -1, -3
    libc.mallopt(m_mmap_threshold, 256 << 20)
    libc.mallopt(m_trim_threshold, 1 << 30)


def stats(xs):
    return {"median": statistics.median(xs), "min": min(xs), "n": len(xs)}


def main(argv=None):
    args = parse_args(argv)
    if args.quick:
        args.adapters, args.repeats, args.latent, args.rank = 6, 2, 8, 4
    if args.device == "cpu":
        torch.set_num_threads(args.threads)
        # Random adapters on a random UNet push some activations into float32's subnormal range, which x86 CPUs
        # compute ~100x slower: a cost of those particular numbers (diffusers' peft path computes the same values),
        # not of either method. Flushing subnormals to zero measures the methods; GPUs flush them anyway.
        torch.set_flush_denormal(True)
        pin_allocator()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from diffusers.utils import logging as dlog

    from lorastack.core.stack import AdapterStack

    dlog.set_verbosity_error()
    warnings.filterwarnings("ignore", message="Already found a `peft_config`")
    results = {"machine": machine(args), "config": vars(args) | {"json": None}}
    print(
        f"# {results['machine']}"
        + ("; subnormals flushed to zero, malloc thresholds pinned" if args.device == "cpu" else "")
    )
    t = time.perf_counter()
    ours_pipe = as_pipeline(build_unet(args))
    theirs_pipe = as_pipeline(build_unet(args))
    print(f"built two {'tiny' if args.quick else args.family} UNets in {time.perf_counter() - t:.1f} s")

    with tempfile.TemporaryDirectory() as tmp:
        paths, n_modules = make_adapter_files(ours_pipe.unet, Path(tmp), args.adapters, args.rank)
        size = paths[0].stat().st_size / 2**20
        print(
            f"{args.adapters} adapter files: rank {args.rank} on {n_modules} attention projections, {size:.1f} MB each"
        )

        # (a) loading the N-th adapter, interleaved: ours N, theirs N, ours N+1, ...
        stack = AdapterStack(ours_pipe)
        results["load"] = measure_loads(stack, theirs_pipe, paths if "a" in args.parts else paths[:6], args.device)
        if "a" in args.parts:
            load = results["load"]
            report_load(load["lorastack"], load["diffusers"], load["lorastack_index_build"])

        # (b) switching between two 3-adapter stacks + one denoising step
        a_names, b_names = [f"adapter{i:02d}" for i in (0, 1, 2)], [f"adapter{i:02d}" for i in (3, 4, 5)]
        weights = [0.8, 0.5, 0.3]
        ours_step, theirs_step = step_inputs(ours_pipe.unet, args), step_inputs(theirs_pipe.unet, args)
        stack.activate(dict(zip(a_names, weights)))
        theirs_pipe.set_adapters(a_names, adapter_weights=weights)
        ours_step()
        theirs_step()  # warm-up
        ours_switch, theirs_switch, ours_switch_only, theirs_switch_only = [], [], [], []

        def ours_switch_step(names):
            t_switch = timed(partial(stack.activate, dict(zip(names, weights))), args.device)
            ours_switch.append(t_switch + timed(ours_step, args.device))
            ours_switch_only.append(t_switch)

        def theirs_switch_step(names):
            t_switch = timed(partial(theirs_pipe.set_adapters, names, adapter_weights=weights), args.device)
            theirs_switch.append(t_switch + timed(theirs_step, args.device))
            theirs_switch_only.append(t_switch)

        for r in range(args.repeats * 2 if "b" in args.parts else 0):
            names = b_names if r % 2 == 0 else a_names  # switch back and forth; who goes first alternates too
            order = (ours_switch_step, theirs_switch_step) if r % 4 < 2 else (theirs_switch_step, ours_switch_step)
            for run in order:
                run(names)
        if "b" in args.parts:
            results["switch_plus_step"] = {"lorastack": ours_switch, "diffusers": theirs_switch}
            results["switch_only"] = {"lorastack": ours_switch_only, "diffusers": theirs_switch_only}
            report_pair("(b) switch 3-adapter stack + 1 step", ours_switch, theirs_switch)
            report_pair("    switch alone", ours_switch_only, theirs_switch_only)

        # (c) one denoising step: base vs 3 active adapters. The order rotates every repeat so no variant always
        # follows the same work; a third UNet holding the merged weights with no stack attached is the control
        # for what the adapter values themselves cost.
        if "c" in args.parts:
            theirs_pipe.set_adapters(a_names, adapter_weights=weights)
            stack.activate(dict(zip(a_names, weights)))
            merged_unet = build_unet(args)
            merged_unet.load_state_dict(ours_pipe.unet.state_dict())
            merged_step = step_inputs(merged_unet, args)
            merged_step()
            timings = {k: [] for k in ("base", "lorastack_3_active", "merged_control", "diffusers_3_active")}
            cpu = {k: [] for k in timings}

            def measure(key, before, fn):
                before()
                c = time.process_time()
                timings[key].append(timed(fn, args.device))
                cpu[key].append(time.process_time() - c)

            variants = [
                ("base", stack.deactivate, ours_step),
                ("lorastack_3_active", partial(stack.activate, dict(zip(a_names, weights))), ours_step),
                ("merged_control", lambda: None, merged_step),
                ("diffusers_3_active", lambda: None, theirs_step),
            ]
            for r in range(args.repeats * 2):
                for key, before, fn in variants[r % 4 :] + variants[: r % 4]:
                    measure(key, before, fn)
            results["step"], results["step_cpu"] = timings, cpu
            b, bc = statistics.median(timings["base"]), statistics.median(cpu["base"])
            print(f"(c) one step, median of {len(timings['base'])} (wall / CPU time, as a ratio to the base):")
            for key in timings:
                wall, cpu_time = statistics.median(timings[key]) / b, statistics.median(cpu[key]) / bc
                print(f"    {key:<20} {wall:.3f}x / {cpu_time:.3f}x")
            del merged_unet
        stack.deactivate()
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    return results


def measure_loads(stack, theirs_pipe, paths, device) -> dict:
    """The time of each load, interleaved (lorastack's N-th, diffusers' N-th, lorastack's N+1-th, …), adapters
    named ``adapterNN``; and the one-time build of lorastack's module index."""
    index_time = timed(lambda: stack.index, device)
    ours, theirs = [], []
    for i, path in enumerate(paths):
        name = f"adapter{i:02d}"
        ours.append(timed(partial(stack.load, name, path), device))
        theirs.append(timed(partial(theirs_pipe.load_lora_weights, str(path), adapter_name=name), device))
    return {"lorastack": ours, "diffusers": theirs, "lorastack_index_build": index_time}


def report_load(ours, theirs, index_time):
    n = len(ours)
    print(f"(a) load the N-th adapter (s)   {'N':>3} {'lorastack':>10} {'diffusers':>10}")
    for i in sorted({0, 1, 4, 9, n - 1} & set(range(n))):
        print(f"{'':31} {i + 1:>3} {ours[i]:>10.3f} {theirs[i]:>10.3f}")
    print(
        f"    N-th/1st: lorastack {ours[-1] / ours[0]:.2f}x (median of the last five vs first five "
        f"{statistics.median(ours[-5:]) / statistics.median(ours[:5]):.2f}x), diffusers {theirs[-1] / theirs[0]:.2f}x "
        f"({statistics.median(theirs[-5:]) / statistics.median(theirs[:5]):.2f}x); "
        f"diffusers/lorastack at N={n}: {theirs[-1] / ours[-1]:.1f}x. "
        f"lorastack's module index: {index_time:.3f} s once"
    )


def report_pair(label, ours, theirs):
    o, t = stats(ours), stats(theirs)
    print(
        f"{label}: lorastack {o['median']:.3f} s (min {o['min']:.3f}) | diffusers {t['median']:.3f} s "
        f"(min {t['min']:.3f}) | lorastack/diffusers {o['median'] / t['median']:.3f}x"
    )


def machine(args):
    import platform

    import diffusers
    import peft

    if str(args.device).startswith("cuda"):
        where = torch.cuda.get_device_name()
    else:
        where = f"CPU ({platform.processor() or platform.machine()}, {args.threads} thread(s), {os.cpu_count()} cores)"
    return (
        f"{where}; torch {torch.__version__}, diffusers {diffusers.__version__}, peft {peft.__version__}, "
        f"{args.family} {args.dtype}, latent {args.latent}x{args.latent}, python {sys.version.split()[0]}"
    )


if __name__ == "__main__":
    main()
