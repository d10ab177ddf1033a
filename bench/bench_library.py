"""A synthetic library of many small adapter files, scanned in place: first scan against plain sha256, rescans, list.

    python bench/bench_library.py                  # 30,000 adapter files (about 2.4 GB), plus sidecars and others
    python bench/bench_library.py --quick          # 300 files, to check the script runs

The library mixes what real A1111/ComfyUI folders hold: kohya (70 %) and diffusers (30 %) LoRAs of rank 4–16 in
nested folders, duplicate copies (1 in 20), Civitai Helper ``NAME.civitai.info`` (every other adapter), A1111
``NAME.json`` (every third), previews ``NAME.preview.png`` (every fourth), and files that are not adapters (notes, a
full checkpoint, an embedding: 1 in 25). Figures, all measured in the same run:

(1) first scan (``lorastack.registry.scan.scan``, in place) against plain single-threaded sha256 over the same
    ``.safetensors`` files, read from the page cache both times: ``share = sha256 time / scan time``;
(2) the same share for a few larger files (where hashing, not per-file work, decides);
(3) a rescan with nothing changed; (4) a rescan after rewriting 100 files (the files it re-hashed are counted);
(5) ``Registry.list()`` on the scanned registry; (6) the peak memory (max RSS) the scans added.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import statistics
import struct
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

#: SD1.5 modules at their real widths (kohya and diffusers spellings), so files probe as SD 1.x.
_SD15 = (
    ("down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k", 768, 320),
    ("down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_v", 768, 320),
    ("down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k", 768, 640),
    ("down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_v", 768, 640),
    ("mid_block.attentions.0.transformer_blocks.0.attn2.to_k", 768, 1280),
    ("mid_block.attentions.0.transformer_blocks.0.attn2.to_v", 768, 1280),
)
MODULES = [(name.replace(".", "_"), name, n_in, n_out) for name, n_in, n_out in _SD15]
FOLDERS = ["characters", "styles/anime", "styles/photo", "concepts", "poses", "clothing", "backgrounds", "misc"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--files", type=int, default=30_000, help="adapter files in the library (duplicates included)")
    p.add_argument("--large", type=int, default=16, help="larger files for the hashing-bound share")
    p.add_argument("--large-mb", type=int, default=13, help="their size (at most about 13 MB: rank 768)")
    p.add_argument("--changes", type=int, default=100)
    p.add_argument("--folder", type=Path, default=None, help="where to build (default: a temporary folder)")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    if args.quick:
        args.files, args.large, args.large_mb, args.changes = 300, 4, 4, 10
    return args


class Writer:
    """safetensors files written directly (header JSON + bytes), fast enough for tens of thousands."""

    def __init__(self, seed: int = 0):
        self.noise = np.random.default_rng(seed).standard_normal(1 << 22).astype(np.float16).tobytes()
        self.count = 0

    def _data(self, n: int) -> bytes:
        self.count += 1
        start = (self.count * 7919) % (len(self.noise) - n - 8)
        return struct.pack("<Q", self.count) + self.noise[start + 8 : start + n]  # unique bytes per file

    def write(self, path: Path, tensors: list[tuple[str, str, tuple]], metadata: dict[str, str]) -> None:
        header, offset, parts = {}, 0, []
        for name, dtype, shape in tensors:
            size = int(np.prod(shape)) * (4 if dtype == "F32" else 2)
            header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
            parts.append(np.float32(shape[0] if shape else 4).tobytes() if name.endswith(".alpha") else None)
            offset += size
        data = bytearray(self._data(offset))
        for fixed, info in zip(parts, header.values()):
            if fixed is not None:
                a, b = info["data_offsets"]
                data[a:b] = fixed
        header["__metadata__"] = metadata
        text = json.dumps(header, separators=(",", ":")).encode()
        text += b" " * (-len(text) % 8)
        path.write_bytes(struct.pack("<Q", len(text)) + text + bytes(data))

    def lora(self, path: Path, rank: int, modules: int, kohya: bool, title: str) -> None:
        tensors = []
        for k_name, d_name, n_in, n_out in MODULES[:modules]:
            if kohya:
                key = f"lora_unet_{k_name}"
                tensors += [(f"{key}.lora_down.weight", "F16", (rank, n_in)),
                            (f"{key}.lora_up.weight", "F16", (n_out, rank)), (f"{key}.alpha", "F32", ())]  # fmt: skip
            else:
                key = f"unet.{d_name}"
                tensors += [
                    (f"{key}.lora_A.weight", "F16", (rank, n_in)),
                    (f"{key}.lora_B.weight", "F16", (n_out, rank)),
                ]
        meta = {"ss_network_dim": str(rank), "ss_output_name": title} if kohya else {}
        self.write(path, tensors, meta)


def tiny_png() -> bytes:
    import io

    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 80, 40)).save(out, format="PNG")
    return out.getvalue()


def build(folder: Path, n: int, writer: Writer) -> dict:
    """The library: ``n`` adapter files and what lies around them. Counts of each kind."""
    png, counts, adapters = tiny_png(), {"adapters": 0, "duplicates": 0, "sidecars": 0, "others": 0}, []
    for sub in FOLDERS:
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        where = folder / FOLDERS[i % len(FOLDERS)]
        if i % 20 == 19 and adapters:
            shutil.copyfile(adapters[i // 3], where / f"copy of {adapters[i // 3].stem} {i}.safetensors")
            counts["duplicates"] += 1
            continue
        path = where / f"lora_{i:05d} v{i % 3 + 1}.safetensors"
        writer.lora(path, rank=(4, 8, 16)[i % 3], modules=2 + i % 5, kohya=i % 10 < 7, title=path.stem)
        adapters.append(path)
        counts["adapters"] += 1
        stem = path.name[: -len(".safetensors")]
        if i % 2:
            base = "Pony" if i % 7 == 1 else "SD 1.5"
            info = {"id": 100000 + i, "modelId": 5000 + i, "name": "v1.0", "trainedWords": [f"tok{i}"],
                    "baseModel": base, "model": {"name": stem, "type": "LORA"}}  # fmt: skip
            (where / f"{stem}.civitai.info").write_text(json.dumps(info))
            counts["sidecars"] += 1
        if i % 3 == 0:
            (where / f"{stem}.json").write_text(json.dumps({"activation text": f"tok{i}", "preferred weight": 0.8}))
            counts["sidecars"] += 1
        if i % 4 == 0:
            (where / f"{stem}.preview.png").write_bytes(png)
            counts["sidecars"] += 1
        if i % 25 == 1:
            other = i // 25 % 3
            if other == 0:
                (where / f"notes {i}.txt").write_text("trigger words and settings")
            elif other == 1:
                keys = [("model.diffusion_model.input_blocks.0.0.weight", "F16", (320, 4, 3, 3))]
                writer.write(where / f"checkpoint {i}.safetensors", keys, {})
            else:
                writer.write(where / f"embedding {i}.safetensors", [("emb_params", "F16", (4, 768))], {})
            counts["others"] += 1
    return counts


def weights(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.safetensors"))


def plain_sha256(files: list[Path]) -> tuple[float, int]:
    t, size = time.perf_counter(), 0
    for f in files:
        h = hashlib.sha256()
        with open(f, "rb") as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
                size += len(chunk)
        h.hexdigest()
    return time.perf_counter() - t, size


def warm_up(path: Path) -> None:
    """Import what a scan uses (torch, the reader) before anything is timed: a user's scan pays it once per run."""
    from lorastack.registry.inplace import read_once

    read_once(path)


def max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv=None) -> dict:
    args = parse_args(argv)
    from lorastack.registry import Registry
    from lorastack.registry.scan import scan

    work = Path(tempfile.mkdtemp(prefix="bench-library-", dir=args.folder))
    results: dict = {"config": {k: v for k, v in vars(args).items() if k not in ("json", "folder")}}
    try:
        writer = Writer()
        t = time.perf_counter()
        results["library"] = build(work / "Lora", args.files, writer)
        results["library"]["build_s"] = time.perf_counter() - t
        files = weights(work / "Lora")
        warm_up(next(p for p in files if p.name.startswith("lora_")))
        plain_sha256(files)  # into the page cache, as the scan will find them
        plain_s, size = plain_sha256(files)
        registry = Registry(work / "registry")
        rss = max_rss_mb()
        first = scan(registry, [work / "Lora"])
        results["first_scan"] = {
            "seconds": first.seconds, "plain_sha256_s": plain_s, "share_of_sha256": plain_s / first.seconds,
            "files": len(files), "mb": size / 1e6, "files_per_s": len(files) / first.seconds,
            "mb_per_s": size / 1e6 / first.seconds, "added": len(first.added), "skipped": len(first.skipped),
            "sidecars": first.sidecars, "errors": len(first.errors), "sidecar_s": first.sidecar_seconds,
            "share_without_sidecars": plain_s / (first.seconds - first.sidecar_seconds),
        }  # fmt: skip
        results["rescan_unchanged"] = {"seconds": (again := scan(registry, [work / "Lora"])).seconds,
                                       "hashed": again.hashed}  # fmt: skip
        changed = [p for p in files if p.name.startswith("lora_")][: args.changes]
        for i, path in enumerate(changed):
            writer.lora(path, rank=4, modules=2, kohya=True, title=f"changed {i}")
        after = scan(registry, [work / "Lora"])
        results["rescan_after_changes"] = {"seconds": after.seconds, "changed": len(changed), "hashed": after.hashed,
                                           "new_versions": len(after.updated)}  # fmt: skip
        results["peak_rss_added_mb"] = max_rss_mb() - rss
        times = []
        for _ in range(5):
            fresh = Registry(work / "registry")
            t = time.perf_counter()
            rows = fresh.list()
            times.append(time.perf_counter() - t)
            fresh.close()
        results["list"] = {"median_s": statistics.median(times), "rows": len(rows)}
        results["list_filtered"] = list_filters(Registry(work / "registry"))
        results["large"] = large_share(work, args, writer)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return results


def list_filters(registry) -> dict:
    """Median time of the filtered listings and of one page (what a library view asks for)."""
    out = {}
    for label, kwargs in (
        ("family", {"family": "sd1"}),
        ("search", {"search": "style"}),
        ("lineage", {"lineage": "Pony"}),
        ("missing", {"missing": True}),
        ("page of 50", {"limit": 50, "offset": 5000}),
        ("newest 50", {"sort": "date", "limit": 50}),
    ):
        times = []
        for _ in range(5):
            t = time.perf_counter()
            rows = registry.list(**kwargs)
            times.append(time.perf_counter() - t)
        out[label] = {"median_s": statistics.median(times), "rows": len(rows)}
    return out  # fmt: skip


def large_share(work: Path, args, writer: Writer) -> dict:
    """The share of sha256 on fewer, larger files (real LoRAs are 10–200 MB), where hashing decides."""
    from lorastack.registry import Registry
    from lorastack.registry.scan import scan

    folder = work / "large"
    folder.mkdir()
    per_rank = 2 * sum(n_in + n_out for _, _, n_in, n_out in MODULES)  # bytes per unit of rank, fp16
    rank = max(4, min(768, args.large_mb * 1_000_000 // per_rank))
    writer.noise = writer.noise * (2 + rank * per_rank // len(writer.noise))  # enough bytes for one large file
    for i in range(args.large):
        writer.lora(folder / f"big {i}.safetensors", rank=rank, modules=len(MODULES), kohya=True, title=f"big{i}")
    files = weights(folder)
    plain_sha256(files)
    plain_s, size = plain_sha256(files)
    result = scan(Registry(work / "registry-large"), [folder])
    return {"files": len(files), "mb": size / 1e6, "plain_sha256_s": plain_s, "scan_s": result.seconds,
            "share_of_sha256": plain_s / result.seconds, "added": len(result.added)}  # fmt: skip


def report(r: dict) -> None:
    f, lg = r["first_scan"], r["large"]
    print(f"library: {r['library']}", file=sys.stderr)
    print(
        f"first scan: {f['files']} files, {f['mb']:.0f} MB in {f['seconds']:.2f} s ({f['files_per_s']:.0f} files/s, "
        f"{f['mb_per_s']:.0f} MB/s); plain sha256 {f['plain_sha256_s']:.2f} s: share {f['share_of_sha256']:.0%}; "
        f"of which sidecars {f['sidecar_s']:.2f} s (share without them {f['share_without_sidecars']:.0%})"
    )
    print(
        f"large files: {lg['files']} x {lg['mb'] / max(1, lg['files']):.0f} MB: scan {lg['scan_s']:.2f} s, sha256 "
        f"{lg['plain_sha256_s']:.2f} s: share {lg['share_of_sha256']:.0%}"
    )
    print(
        f"rescan, nothing changed: {r['rescan_unchanged']['seconds']:.2f} s ({r['rescan_unchanged']['hashed']} read)"
    )
    c = r["rescan_after_changes"]
    print(f"rescan after {c['changed']} changes: {c['seconds']:.2f} s, re-hashed {c['hashed']}")
    print(f"list: {r['list']['median_s'] * 1000:.0f} ms for {r['list']['rows']} rows; peak memory added by the scans "
          f"{r['peak_rss_added_mb']:.0f} MB")  # fmt: skip
    print("filtered: " + ", ".join(f"{k} {v['median_s'] * 1000:.0f} ms ({v['rows']} rows)"
                                   for k, v in r["list_filtered"].items()))  # fmt: skip


if __name__ == "__main__":
    main()
    os._exit(0)
