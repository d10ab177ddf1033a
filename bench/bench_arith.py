"""LoRA arithmetic: lorastack's resize and svd merge against kohya's formulas computed directly, in the same run.

On the shapes of a full-size SDXL UNet (built on the meta device: only its Linear layers' shapes are used), random
rank-128 LoRAs on every Linear of the transformer blocks (attention, feed-forward, proj_in/out):

* resize to ``--rank`` (default 32): lorastack's :func:`~lorastack.core.resize.resize` (QR of the factors, SVD of the
  r × r core, the error measured) against kohya's ``resize_lora.py`` re-expressed with torch: ΔW = up @ down in
  full, ``torch.linalg.svd``, keep the first R (σ into up, as kohya does), its "fro retained";
* merge of two such LoRAs by SVD to rank 128: :func:`~lorastack.core.merge.merge` (``svd``) against kohya's
  ``svd_merge_lora.py``: the weighted full ΔW summed, ``torch.linalg.svd``, truncated.

Each layer is timed for both, interleaved (lorastack, kohya, lorastack, kohya … per layer); totals, the ratio and
the errors (each result's ‖ΔW − target‖_F against the optimal √Σ discarded σ²) are printed. Run:

    python bench/bench_arith.py                 # every layer (CPU: ~700 layers, tens of minutes on 2 cores)
    python bench/bench_arith.py --layers 60     # the first 60 layers
    python bench/bench_arith.py --quick         # small and fast, to check the script runs
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--source-rank", type=int, default=128)
    p.add_argument("--rank", type=int, default=32, help="resize target rank")
    p.add_argument("--layers", type=int, default=None, help="only the first N layers")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--quick", action="store_true", help="tiny run: the 2 smallest layers, rank 16 → 4")
    p.add_argument("--json", default=None, help="write the results here")
    return p.parse_args(argv)


def sdxl_linear_shapes() -> list[tuple[str, tuple[int, int]]]:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from lorastack.testing.models import build_full_unet

    unet = build_full_unet("sdxl", device="meta")
    return [
        (f"unet.{name}", tuple(m.weight.shape))
        for name, m in unet.named_modules()
        if isinstance(m, torch.nn.Linear)
        and (".transformer_blocks." in name or name.endswith(("proj_in", "proj_out")))
    ]


def random_lora(shape, rank, g):
    from lorastack.adapters import LoRALayer

    out, inner = shape
    r = min(rank, out, inner)
    return LoRALayer(torch.randn(r, inner, generator=g) / math.sqrt(inner), torch.randn(out, r, generator=g) * 0.05,
                     alpha=float(r) / 2)  # fmt: skip


def kohya_resize(layer, rank):
    """resize_lora.py's extract_linear + rank_resize, fixed rank: the full ΔW, its SVD, the first R kept."""
    delta = (layer.up.float() @ layer.down.float()) * layer.scale
    U, S, Vh = torch.linalg.svd(delta)
    k = min(rank, len(S))
    up = U[:, :k] @ torch.diag(S[:k])
    down = Vh[:k]
    fro = float(torch.sqrt((S[:k] ** 2).sum()) / torch.sqrt((S**2).sum()))
    return up, down, delta, S, fro


def kohya_merge(layers, weights, rank):
    """svd_merge_lora.py: the weighted full ΔW summed, its SVD, truncated to the new rank."""
    delta = sum(w * (layer.up.float() @ layer.down.float()) * layer.scale for w, layer in zip(weights, layers))
    U, S, Vh = torch.linalg.svd(delta)
    k = min(rank, len(S))
    return U[:, :k] @ torch.diag(S[:k]), Vh[:k], delta, S


def run(args) -> dict:
    from lorastack.adapters import Adapter
    from lorastack.core.arith import Source
    from lorastack.core.merge import merge
    from lorastack.core.resize import resize

    if args.threads:
        torch.set_num_threads(args.threads)
    shapes = sdxl_linear_shapes()
    source_rank, rank = args.source_rank, args.rank
    if args.quick:
        # the 2 smallest layers (640 × 640 attention): kohya's full SVD of the wide ones takes seconds each
        shapes, source_rank, rank = sorted(shapes, key=lambda item: math.prod(item[1]))[:2], 16, 4
    elif args.layers:
        shapes = shapes[: args.layers]
    g = torch.Generator().manual_seed(0)
    t = {"resize": [0.0, 0.0], "merge": [0.0, 0.0]}
    err = {"resize": [0.0, 0.0, 0.0], "merge": [0.0, 0.0, 0.0], "target": [0.0, 0.0]}
    for name, shape in shapes:
        a, b = random_lora(shape, source_rank, g), random_lora(shape, source_rank, g)
        # resize: lorastack, then kohya (interleaved per layer)
        start = time.perf_counter()
        result = resize(Source(name, Adapter({name: a})), rank=rank)
        t["resize"][0] += time.perf_counter() - start
        start = time.perf_counter()
        up, down, delta, S, _ = kohya_resize(a, rank)
        t["resize"][1] += time.perf_counter() - start
        mine = result.layers[name].delta().reshape(delta.shape)
        err["resize"][0] += float(torch.linalg.matrix_norm(mine - delta)) ** 2
        err["resize"][1] += float(torch.linalg.matrix_norm(up @ down - delta)) ** 2
        err["resize"][2] += float((S[rank:] ** 2).sum())
        err["target"][0] += float(torch.linalg.matrix_norm(delta)) ** 2
        # merge: lorastack svd, then kohya's svd_merge
        sources = [Source("a", Adapter({name: a}), 0.8), Source("b", Adapter({name: b}), 0.6)]
        start = time.perf_counter()
        merged = merge(sources, "svd", rank=source_rank)
        t["merge"][0] += time.perf_counter() - start
        start = time.perf_counter()
        up, down, delta, S = kohya_merge([a, b], [0.8, 0.6], source_rank)
        t["merge"][1] += time.perf_counter() - start
        mine = merged.layers[name].delta().reshape(delta.shape)
        err["merge"][0] += float(torch.linalg.matrix_norm(mine - delta)) ** 2
        err["merge"][1] += float(torch.linalg.matrix_norm(up @ down - delta)) ** 2
        err["merge"][2] += float((S[source_rank:] ** 2).sum())
        err["target"][1] += float(torch.linalg.matrix_norm(delta)) ** 2
    out = {"layers": len(shapes), "source_rank": source_rank, "rank": rank, "threads": torch.get_num_threads()}
    for i, op in enumerate(("resize", "merge")):
        norm = math.sqrt(err["target"][i])
        out[op] = {
            "lorastack_s": t[op][0],
            "kohya_s": t[op][1],
            "speedup": t[op][1] / t[op][0] if t[op][0] else math.inf,
            "lorastack_relative_error": math.sqrt(err[op][0]) / norm,
            "kohya_relative_error": math.sqrt(err[op][1]) / norm,
            "optimal_relative_error": math.sqrt(err[op][2]) / norm,
        }
    return out


def main(argv=None) -> dict:
    args = parse_args(argv)
    results = run(args)
    print(f"{results['layers']} SDXL UNet Linear layers, source rank {results['source_rank']}, "
          f"{results['threads']} threads")  # fmt: skip
    for op, label in (
        ("resize", f"resize → rank {results['rank']}"),
        ("merge", f"svd merge of 2 → {results['source_rank']}"),
    ):
        r = results[op]
        print(f"{label:28} lorastack {r['lorastack_s']:8.2f} s | kohya formulas {r['kohya_s']:8.2f} s | "
              f"ratio {r['speedup']:6.1f}x | relative error lorastack {r['lorastack_relative_error']:.6f}, kohya "
              f"{r['kohya_relative_error']:.6f}, optimal {r['optimal_relative_error']:.6f}")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
