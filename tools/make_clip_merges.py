"""Extract the CLIP BPE merges that lorastack ships in ``core/configs/clip/merges.txt.gz``.

Source: ``bpe_simple_vocab_16e6.txt.gz`` from OpenAI's CLIP, as redistributed in the ``open_clip_torch`` wheel on
PyPI (MIT licence). CLIP's tokenizer uses the first 48,894 merges (49,152 - 256 - 2) of that file; its vocabulary
is derived from them (256 bytes, the same with "</w>", one entry per merge, two special tokens), so only the merges
are shipped. Run: ``pip download open_clip_torch --no-deps`` and pass the wheel path.
"""

import gzip
import sys
import zipfile
from pathlib import Path

N_MERGES = 49152 - 256 - 2
OUT = Path(__file__).resolve().parents[1] / "core" / "configs" / "clip" / "merges.txt.gz"


def main(wheel: str) -> None:
    with zipfile.ZipFile(wheel) as z:
        lines = gzip.decompress(z.read("open_clip/bpe_simple_vocab_16e6.txt.gz")).decode("utf-8").split("\n")
    merges = lines[1 : N_MERGES + 1]
    assert len(merges) == N_MERGES and all(len(m.split()) == 2 for m in merges)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    text = "#version: 0.2\n" + "\n".join(merges) + "\n"
    OUT.write_bytes(gzip.compress(text.encode("utf-8"), mtime=0))
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes, {len(merges)} merges)")


if __name__ == "__main__":
    main(sys.argv[1])
