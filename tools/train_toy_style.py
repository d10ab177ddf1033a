"""Train the built-in style adapter (``toy/style.safetensors``, ``--lora toy-style``): outlined toy shapes.

    python tools/train_toy_style.py            # a few minutes on 2 CPU cores; run after tools/train_toy.py
    python tools/train_toy_style.py --publish toy/style.safetensors   # only rewrite a file's metadata

It is trained with lorastack's own ``lora`` trainer, on toy images drawn as outlines with the base's usual captions,
so stacking it turns filled shapes into outlines. The shipped file's metadata names it ``toy-style`` and records the
training folder by its name only (``toy-style-data``, which this script draws again), never a path of the machine
that built it.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
from pathlib import Path

from lorastack import toy
from lorastack.core.training.api import train

NAME = "toy-style"
DATA_NAME = "toy-style-data"
DESCRIPTION = "lorastack's built-in toy style: outlined shapes (tools/train_toy_style.py)"


def publish(source: str | Path, out: str | Path) -> None:
    """Copy the adapter at ``source`` to ``out`` with user-facing metadata: its name, and no build paths.

    The tensors are written back unchanged (the tensor hash stays); only the header's text changes.
    """
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(source), "pt") as f:
        metadata = dict(f.metadata() or {})
        tensors = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 - safe_open has no __iter__
    if "lorastack.recipe" in metadata:
        metadata["lorastack.recipe"] = re.sub(
            r'^data = ".*"$', f'data = "{DATA_NAME}"', metadata["lorastack.recipe"], flags=re.M
        )
    for key in ("ss_output_name", "modelspec.title"):
        metadata[key] = NAME
    for key in ("ss_training_comment", "modelspec.description"):
        metadata[key] = DESCRIPTION
    save_file(tensors, str(out), metadata=metadata)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(toy.STYLE_ADAPTER))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--images", type=int, default=80)
    parser.add_argument("--publish", metavar="FILE", help="only rewrite FILE's metadata (in place) and stop")
    args = parser.parse_args(argv)
    if args.publish:
        publish(args.publish, args.publish)
        print(f"rewrote the metadata of {args.publish}")
        return 0
    work = Path(tempfile.mkdtemp(prefix="toy-style-"))
    data = toy.write_dataset(work / DATA_NAME, args.images, seed=args.seed + 1, outline=True)
    result = train("lora", "toy", data, output=work / "run", progress=False, options={
        "steps": args.steps, "resolution": toy.SIZE, "rank": 4, "learning_rate": 1e-3, "targets": "attention-ff",
        "batch_size": 4, "seed": args.seed, "latents": "mean", "trigger": "",
    })  # fmt: skip
    publish(result.adapter_path, args.out)
    shutil.rmtree(work, ignore_errors=True)
    print(f"loss {sum(result.losses[:20]) / 20:.4f} -> {sum(result.losses[-20:]) / 20:.4f}; saved {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
