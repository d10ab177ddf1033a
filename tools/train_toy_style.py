"""Train the built-in style adapter (``core/toy-style.safetensors``): outlined shapes, on the toy base.

    python tools/train_toy_style.py            # a few minutes on 2 CPU cores; run after tools/train_toy.py

It is trained with lorastack's own ``lora`` trainer, on toy images drawn as outlines with the base's usual captions,
so stacking it turns filled shapes into outlines.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from lorastack.core import toy
from lorastack.core.training.api import train


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(toy.STYLE_ADAPTER))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--images", type=int, default=80)
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="toy-style-"))
    data = toy.write_dataset(work / "data", args.images, seed=args.seed + 1, outline=True)
    result = train("lora", "toy", data, output=work / "run", progress=False, options={
        "steps": args.steps, "resolution": toy.SIZE, "rank": 4, "learning_rate": 1e-3, "targets": "attention-ff",
        "batch_size": 4, "seed": args.seed, "latents": "mean", "trigger": "",
    })  # fmt: skip
    shutil.copyfile(result.adapter_path, args.out)
    print(f"loss {sum(result.losses[:20]) / 20:.4f} -> {sum(result.losses[-20:]) / 20:.4f}; saved {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
