"""Adapter stacks on transformer bases (SD3.x, FLUX.1): lorastack against diffusers/peft, measured in one run.

On a full-size random-weight SD3.5 Medium transformer (or FLUX.1 dev with ``--model flux1-dev``, a GPU's job: 12 B
parameters), with rank-16 LoRAs on every attention projection of the joint/double/single blocks (what diffusers'
Flux and SD3 training scripts target by default):

(a) the time to load the N-th adapter, N = 1..10 (diffusers ``load_lora_weights`` vs ``AdapterStack.load``);
(b) switching from one 3-adapter stack to another (``set_adapters`` vs ``AdapterStack.activate``), alone and with
    one transformer forward at a small latent;
(c) one transformer forward with 3 active adapters, as a ratio to the bare base (diffusers' unfused peft layers vs
    lorastack's patched weights): what every denoising step of a generation pays.

Variants are interleaved and repeated; medians are printed, with ratios. Run:

    python bench/bench_transformer.py                          # CPU, SD3.5 Medium in bf16 (~12 GB of RAM)
    python bench/bench_transformer.py --model flux1-dev --device cuda --dtype bf16 --latent 64
    python bench/bench_transformer.py --quick                  # tiny Flux transformer: checks the script runs
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_stack import measure_loads, pin_allocator, report_load, report_pair, stats, sync, timed

TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=["sd3.5-medium", "sd3-medium", "flux1-dev", "flux1-schnell"],
                   default="sd3.5-medium")  # fmt: skip
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=list(DTYPES), default="bf16")
    p.add_argument("--threads", type=int, default=2, help="torch threads on CPU")
    p.add_argument("--adapters", type=int, default=10, help="N for (a)")
    p.add_argument("--active", type=int, default=3, help="adapters active at once in (b) and (c)")
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--latent", type=int, default=16, help="latent side for the forward in (b) (128 = 1024 px)")
    p.add_argument("--repeats", type=int, default=4)
    p.add_argument("--quick", action="store_true", help="tiny Flux transformer, few repeats: checks the script runs")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    return p.parse_args(argv)


def build(args, seed=0):
    """A pipeline whose transformer is the full-size model (or a tiny one with ``--quick``); the text encoders and
    VAE are the tiny ones, as they take no part in these measurements."""
    from lorastack.testing.models import build_tiny_pipeline

    flux = args.model.startswith("flux")
    tiny = build_tiny_pipeline("flux" if flux else "sd3.5", seed=seed)
    if args.quick:
        transformer = tiny.transformer
    else:
        from lorastack.testing.full_models import build_full_transformer

        transformer = build_full_transformer(args.model, seed=seed, device="cpu", dtype=DTYPES[args.dtype])
    transformer = torch.nn.Module.to(transformer, device=args.device, dtype=DTYPES[args.dtype])
    parts = {k: v for k, v in tiny.components.items() if k != "transformer"}
    return type(tiny)(transformer=transformer, **parts)


def make_adapter_files(pipe, folder: Path, count: int, rank: int):
    """``count`` random diffusers-format LoRAs (``transformer.`` keys, alpha metadata) on every attention layer."""
    modules = [
        (name, m)
        for name, m in pipe.transformer.named_modules()
        if isinstance(m, torch.nn.Linear) and name.endswith(tuple("." + t for t in TARGETS)) and "blocks." in name
    ]
    paths = []
    for i in range(count):
        g = torch.Generator().manual_seed(1000 + i)
        state = {}
        for name, m in modules:
            state[f"{name}.lora_A.weight"] = (torch.randn(rank, m.in_features, generator=g) * 0.02).to(torch.bfloat16)
            state[f"{name}.lora_B.weight"] = (torch.randn(m.out_features, rank, generator=g) * 0.02).to(torch.bfloat16)
        metadata = {"r": rank, "lora_alpha": rank, "target_modules": [n for n, _ in modules]}
        path = folder / f"adapter{i:02d}.safetensors"
        type(pipe).save_lora_weights(
            str(folder),
            transformer_lora_layers=state,
            weight_name=path.name,
            transformer_lora_adapter_metadata=metadata,
        )
        paths.append(path)
    return paths, len(modules)


def forward_inputs(pipe, args):
    """One transformer forward at ``--latent``² latent pixels with a 64-token prompt (random conditioning)."""
    model, device, dtype = pipe.transformer, args.device, DTYPES[args.dtype]
    config = model.config
    g = torch.Generator().manual_seed(0)
    side = args.latent
    if args.model.startswith("flux"):
        tokens = (side // 2) ** 2
        kwargs = dict(
            hidden_states=torch.randn(1, tokens, config.in_channels, generator=g),
            encoder_hidden_states=torch.randn(1, 64, config.joint_attention_dim, generator=g),
            pooled_projections=torch.randn(1, config.pooled_projection_dim, generator=g),
            timestep=torch.tensor([0.5]),
            img_ids=torch.zeros(tokens, 3),
            txt_ids=torch.zeros(64, 3),
            guidance=torch.tensor([3.5]) if config.guidance_embeds else None,
        )
    else:
        kwargs = dict(
            hidden_states=torch.randn(1, config.in_channels, side, side, generator=g),
            encoder_hidden_states=torch.randn(1, 64, config.joint_attention_dim, generator=g),
            pooled_projections=torch.randn(1, config.pooled_projection_dim, generator=g),
            timestep=torch.tensor([500.0]),
        )
    kwargs = {k: (v.to(device, dtype) if isinstance(v, torch.Tensor) and v.is_floating_point() else v)
              for k, v in kwargs.items()}  # fmt: skip

    @torch.no_grad()
    def step():
        model(**kwargs, return_dict=False)

    return step


def main(argv=None):
    args = parse_args(argv)
    if args.quick:
        args.adapters, args.repeats, args.latent, args.rank, args.dtype = max(6, 2 * args.active), 2, 8, 4, "fp32"
    if not 1 <= args.active <= 5 or args.adapters < 2 * args.active:
        raise SystemExit(f"--active {args.active}: 1 to 5, with --adapters at least twice that (two stacks to switch)")
    if args.device == "cpu":
        torch.set_num_threads(args.threads)
        torch.set_flush_denormal(True)  # see bench_stack.py: measure the methods, not subnormal arithmetic
        pin_allocator()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from diffusers.utils import logging as dlog

    from lorastack.core.stack import AdapterStack

    dlog.set_verbosity_error()
    warnings.filterwarnings("ignore", message="Already found a `peft_config`")
    results = {"machine": machine(args), "config": vars(args) | {"json": None}}
    print(f"# {results['machine']}")
    t = time.perf_counter()
    ours_pipe, theirs_pipe = build(args), build(args)
    params = sum(p.numel() for p in ours_pipe.transformer.parameters()) / 1e9
    print(f"built two {'tiny' if args.quick else args.model} transformers ({params:.2f} B parameters each) in "
          f"{time.perf_counter() - t:.1f} s")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        paths, n_modules = make_adapter_files(ours_pipe, Path(tmp), args.adapters, args.rank)
        size = paths[0].stat().st_size / 2**20
        print(
            f"{args.adapters} adapter files: rank {args.rank} on {n_modules} attention projections, {size:.1f} MB each"
        )
        # (a) the N-th load, interleaved
        stack = AdapterStack(ours_pipe)
        load = results["load"] = measure_loads(stack, theirs_pipe, paths, args.device)
        report_load(load["lorastack"], load["diffusers"], load["lorastack_index_build"])
        # (b) switching between two 3-adapter stacks, alone and followed by one forward
        k = args.active
        a_names, b_names = [f"adapter{i:02d}" for i in range(k)], [f"adapter{i:02d}" for i in range(k, 2 * k)]
        weights = [0.8, 0.5, 0.3, 0.2, 0.1][:k]
        ours_step, theirs_step = forward_inputs(ours_pipe, args), forward_inputs(theirs_pipe, args)
        stack.activate(dict(zip(a_names, weights)))
        theirs_pipe.set_adapters(a_names, adapter_weights=weights)
        ours_step()
        theirs_step()  # warm-up
        runs = {"ours": ([], []), "theirs": ([], [])}

        def switch(who, names):
            fn = (partial(stack.activate, dict(zip(names, weights))) if who == "ours"
                  else partial(theirs_pipe.set_adapters, names, adapter_weights=weights))  # fmt: skip
            t_switch = timed(fn, args.device)
            t_step = timed(ours_step if who == "ours" else theirs_step, args.device)
            runs[who][0].append(t_switch)
            runs[who][1].append(t_switch + t_step)

        for r in range(args.repeats * 2):
            names = b_names if r % 2 == 0 else a_names
            for who in ("ours", "theirs") if r % 4 < 2 else ("theirs", "ours"):
                switch(who, names)
        results["switch_only"] = {"lorastack": runs["ours"][0], "diffusers": runs["theirs"][0]}
        results["switch_plus_step"] = {"lorastack": runs["ours"][1], "diffusers": runs["theirs"][1]}
        report_pair(f"(b) switch {k}-adapter stack", runs["ours"][0], runs["theirs"][0])
        report_pair(f"    switch + 1 forward ({args.latent}x{args.latent} latent)", runs["ours"][1], runs["theirs"][1])
        # (c) one forward: the base, lorastack's patched weights, diffusers' peft layers; the order rotates
        theirs_pipe.set_adapters(a_names, adapter_weights=weights)
        ours_key, theirs_key = f"lorastack_{k}_active", f"diffusers_{k}_active"
        timings = {"base": [], ours_key: [], theirs_key: []}
        variants = [
            ("base", stack.deactivate, ours_step),
            (ours_key, partial(stack.activate, dict(zip(a_names, weights))), ours_step),
            (theirs_key, lambda: None, theirs_step),
        ]
        for r in range(args.repeats * 2):
            for key, before, fn in variants[r % 3 :] + variants[: r % 3]:
                before()
                timings[key].append(timed(fn, args.device))
        results["step"] = timings
        base = statistics.median(timings["base"])
        print(
            f"(c) one forward ({args.latent}x{args.latent} latent), median of {len(timings['base'])}, ratio to base:"
        )
        for key, values in timings.items():
            print(f"    {key:<20} {statistics.median(values):.3f} s  {statistics.median(values) / base:.3f}x")
        stack.deactivate()
    sync(args.device)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    return results


def machine(args):
    import platform

    import diffusers
    import peft

    if str(args.device).startswith("cuda"):
        where = torch.cuda.get_device_name()
    else:
        where = f"CPU ({platform.processor() or platform.machine()}, {args.threads} thread(s), {os.cpu_count()} cores)"
    model = "tiny flux" if args.quick else args.model
    return (f"{where}; torch {torch.__version__}, diffusers {diffusers.__version__}, peft {peft.__version__}, "
            f"{model} {args.dtype}, python {sys.version.split()[0]}")  # fmt: skip


__all__ = ["main", "stats"]

if __name__ == "__main__":
    main()
