"""The registry at scale: list/show with many versions, and import/verify throughput against raw sha256.

    python bench/bench_registry.py                  # 10,000 versions (1,000 adapters x 10), a 256 MB adapter
    python bench/bench_registry.py --quick          # small, to check the script runs

(1) ``Registry.list`` / ``list(all_versions=True)`` / ``resolve`` + ``show`` on a registry of N versions, and the
    ``lorastack list`` command end to end (which includes starting Python).
(2) Importing and verifying one large adapter file, as a share of the speed of hashing the same (cached) file with
    hashlib alone: ``share = sha256 time / operation time`` (1.0 = as fast as hashing).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--adapters", type=int, default=1000)
    p.add_argument("--versions-each", type=int, default=10)
    p.add_argument("--big-mb", type=int, default=256, help="size of the adapter for the throughput measurement")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--json", type=Path, default=None)
    return p.parse_args(argv)


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def median_time(fn, repeats):
    return statistics.median(timed(fn)[0] for _ in range(repeats))


def big_adapter(path: Path, megabytes: int) -> Path:
    """A kohya LoRA of about ``megabytes`` MB (many rank-64 layers at SDXL widths)."""
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(0)
    tensors, size, i = {}, 0, 0
    while size < megabytes * 2**20:
        name = f"lora_unet_down_blocks_1_attentions_0_transformer_blocks_{i}_attn1_to_q"
        tensors[f"{name}.lora_down.weight"] = torch.randn(64, 1280, generator=g)
        tensors[f"{name}.lora_up.weight"] = torch.randn(1280, 64, generator=g)
        tensors[f"{name}.alpha"] = torch.tensor(32.0)
        size += 2 * 64 * 1280 * 4
        i += 1
    save_file(tensors, str(path))
    return path


def populate(registry, folder: Path, adapters: int, versions_each: int) -> float:
    from lorastack.testing.registry import small_adapter

    distinct = [small_adapter(folder / f"s{i}.safetensors", seed=i) for i in range(versions_each)]
    t = time.perf_counter()
    for a in range(adapters):
        for v in range(versions_each):
            registry.import_file(distinct[v], f"user{a % 50}/adapter{a:05d}", description=f"version {v}")
    return time.perf_counter() - t


def main(argv=None):
    args = parse_args(argv)
    if args.quick:
        args.adapters, args.versions_each, args.big_mb, args.repeats = 20, 3, 8, 2
    from lorastack.registry import Registry

    results = {"config": {k: v for k, v in vars(args).items() if k != "json"}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        registry = Registry(tmp / "reg")
        n = args.adapters * args.versions_each
        seconds = populate(registry, tmp, args.adapters, args.versions_each)
        print(f"imported {n} versions ({args.adapters} adapters) in {seconds:.1f} s ({n / seconds:.0f} imports/s)")
        some = f"user7/adapter{min(7, args.adapters - 1):05d}"
        times = {
            "list (latest per adapter)": median_time(registry.list, args.repeats),
            "list --all-versions": median_time(lambda: registry.list(all_versions=True), args.repeats),
            "list --search": median_time(lambda: registry.list(search="adapter0001"), args.repeats),
            "resolve + show": median_time(lambda: registry.resolve(f"{some}@2").as_dict(), args.repeats),
        }
        env = {**os.environ, "LORASTACK_HOME": str(tmp)}
        (tmp / "registry").symlink_to(tmp / "reg")
        cli = [sys.executable, "-m", "lorastack.cli.main", "list"]
        times["lorastack list (CLI, incl. start-up)"] = median_time(
            lambda: subprocess.run(cli, env=env, capture_output=True, check=True), max(2, args.repeats // 2)
        )
        rows = len(registry.list()), len(registry.list(all_versions=True))
        print(f"with {n} versions ({rows[0]} rows per adapter, {rows[1]} per version), median of {args.repeats}:")
        for label, t in times.items():
            print(f"    {label:<38} {t * 1000:8.1f} ms")
        results["listing_ms"] = {k: v * 1000 for k, v in times.items()}

        big = big_adapter(tmp / "big.safetensors", args.big_mb)
        size = big.stat().st_size
        big.read_bytes()  # warm the page cache: every variant reads cached bytes

        def raw_sha256():
            h = hashlib.sha256()
            with open(big, "rb") as f:
                while chunk := f.read(1 << 20):
                    h.update(chunk)
            return h.hexdigest()

        def disk_write():
            """For reference: copy the file and fsync it, no hashing."""
            out = tmp / "disk-probe"
            with open(big, "rb") as src, open(out, "wb") as dst:
                while chunk := src.read(1 << 20):
                    dst.write(chunk)
                dst.flush()
                os.fsync(dst.fileno())
            out.unlink()

        imports, verifies, raws, disks = [], [], [], []
        for r in range(args.repeats):  # interleaved
            raws.append(timed(raw_sha256)[0])
            disks.append(timed(disk_write)[0])
            fresh = Registry(tmp / f"throughput{r}")
            imports.append(timed(lambda fresh=fresh: fresh.import_file(big, "big"))[0])
            verifies.append(timed(lambda fresh=fresh: fresh.verify("big"))[0])
            raws.append(timed(raw_sha256)[0])
        raw = statistics.median(raws)
        imp, ver = statistics.median(imports), statistics.median(verifies)
        mb = size / 2**20
        print(f"throughput on a {mb:.0f} MB adapter, median of {args.repeats} (share of raw sha256 speed):")
        print(f"    raw sha256 (hashlib)  {mb / raw:7.0f} MB/s")
        print(f"    import                {mb / imp:7.0f} MB/s  {raw / imp:.0%}")
        print(f"    verify                {mb / ver:7.0f} MB/s  {raw / ver:.0%}")
        disk = statistics.median(disks)
        print(f"    (plain copy + fsync   {mb / disk:7.0f} MB/s: what writing the file durably costs on this disk)")
        results["throughput_mb_s"] = {
            "raw_sha256": mb / raw, "import": mb / imp, "verify": mb / ver, "disk_write_fsync": mb / disk
        }  # fmt: skip
        registry.close()
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
