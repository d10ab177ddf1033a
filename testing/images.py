"""Real image files for dataset tests: a folder of good and broken images, the same as a zip or a Hugging Face dataset.

Everything is deterministic (fixed pixels, fixed zip timestamps), so tests may compare keys, sizes and pixels::

    from lorastack.testing.images import write_image_folder

    folder = write_image_folder(tmp_path / "photos")
    dataset = open_dataset(folder.root)
    assert sorted(item.source for item in dataset) == sorted(folder.captions)
"""

from __future__ import annotations

import io
import random
import shutil
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

RED, BLUE, GREEN, WHITE = (220, 30, 30), (30, 40, 220), (20, 200, 40), (255, 255, 255)
GRAY = 100
EXIF_ORIENTATION = 0x0112
CONCEPT_FOLDER = "5_aawxbc figurine"
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)


@dataclass(frozen=True)
class ImageFolder:
    """What ``write_image_folder`` wrote, for assertions.

    :param root: the folder
    :param captions: each good image (posix path relative to ``root``) → its caption, or ``None``
    :param bad: the images no source can decode (a truncated JPEG, a text file named ``.png``)
    :param pixels: each good image → ``((x, y), (r, g, b))``, a pixel of the decoded RGB image (JPEG: ± 16)
    :param sizes: each good image → its decoded ``(width, height)``, EXIF orientation applied
    :param rotated: the JPEG stored sideways with EXIF orientation 6 (its decoded size is its stored size transposed)
    :param concepts: each good image in a kohya-style folder → its concept
    :param masks: each image that has a mask → the mask file (only with ``masks=True``)
    """

    root: Path
    captions: dict[str, str | None]
    bad: tuple[str, ...]
    pixels: dict[str, tuple[tuple[int, int], tuple[int, int, int]]]
    sizes: dict[str, tuple[int, int]]
    rotated: str
    concepts: dict[str, str] = field(default_factory=dict)
    masks: dict[str, str] = field(default_factory=dict)

    @property
    def good(self) -> list[str]:
        """The good images, sorted as sources yield them."""
        return sorted(self.captions)

    @property
    def images(self) -> list[str]:
        """Every image file, good and bad, sorted."""
        return sorted([*self.captions, *self.bad])


def _encode(image, fmt: str, **save) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **save)
    return buffer.getvalue()


def image_bytes(name: str, size: tuple[int, int] = (16, 16), colour=RED) -> bytes:
    """A plain RGB image of one colour, encoded as the suffix of ``name`` says (``.png``, ``.jpg``, …)."""
    from PIL import Image

    fmt = Image.registered_extensions()[Path(name).suffix.lower()]
    return _encode(Image.new("RGB", size, colour), fmt)


def rotated_jpeg() -> bytes:
    """A 48x24 JPEG, red left half, blue right half, tagged EXIF orientation 6: viewers show it 24x48, red on top."""
    from PIL import Image

    image = Image.new("RGB", (48, 24), BLUE)
    image.paste(Image.new("RGB", (24, 24), RED), (0, 0))
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6
    return _encode(image, "JPEG", quality=95, exif=exif.tobytes())


def truncated_jpeg() -> bytes:
    """A JPEG of noise cut in half: the header reads, the pixels do not."""
    from PIL import Image

    noise = random.Random(1234).randbytes(64 * 64 * 3)
    data = _encode(Image.frombytes("RGB", (64, 64), noise), "JPEG", quality=90)
    return data[: len(data) // 2]


def write_image_folder(root: str | Path, *, masks: bool = False) -> ImageFolder:
    """Write a folder of real images of every kind a dataset meets, and return what a source should make of it.

    Good: ``red.png`` (RGB, ``red.txt``), ``rotated.jpg`` (EXIF orientation 6, ``rotated.caption``), ``rgba.png``
    (half transparent, no caption), ``gray.png`` (mode L, ``gray.txt``) and ``5_aawxbc figurine/blue.png`` (a kohya
    concept folder, ``blue.txt``). Bad: ``truncated.jpg`` (with a caption) and ``notes.png`` (text). Ignored:
    ``.DS_Store`` and ``readme.md``. With ``masks``: ``red_mask.png`` (left half white) and ``masks/gray.png``.
    """
    from PIL import Image

    root = Path(root)
    (root / CONCEPT_FOLDER).mkdir(parents=True, exist_ok=True)
    rgba = Image.new("RGBA", (16, 16), (0, 0, 0, 0))
    rgba.paste(Image.new("RGBA", (8, 16), (*GREEN, 255)), (8, 0))
    files = {
        "red.png": image_bytes("red.png", (32, 24), RED),
        "red.txt": b"a red square\n",
        "rotated.jpg": rotated_jpeg(),
        "rotated.caption": b"a rotated photo",
        "rgba.png": _encode(rgba, "PNG"),
        "gray.png": _encode(Image.new("L", (16, 16), GRAY), "PNG"),
        "gray.txt": "\ufeffa gray square".encode(),  # a BOM, as Windows editors write
        f"{CONCEPT_FOLDER}/blue.png": image_bytes("blue.png", (20, 20), BLUE),
        f"{CONCEPT_FOLDER}/blue.txt": b"a blue figurine",
        "truncated.jpg": truncated_jpeg(),
        "truncated.txt": b"never used",
        "notes.png": b"this is a text file, not a picture\n",
        ".DS_Store": b"\x00\x00\x00\x01Bud1",
        "readme.md": b"# photos\n",
    }
    captions = {
        "red.png": "a red square",
        "rotated.jpg": "a rotated photo",
        "rgba.png": None,
        "gray.png": "a gray square",
        f"{CONCEPT_FOLDER}/blue.png": "a blue figurine",
    }
    mask_files = {}
    if masks:
        half = Image.new("L", (32, 24), 0)
        half.paste(255, (0, 0, 16, 24))
        files["red_mask.png"] = _encode(half, "PNG")
        files["masks/gray.png"] = _encode(Image.new("L", (16, 16), 255), "PNG")
        mask_files = {"red.png": "red_mask.png", "gray.png": "masks/gray.png"}
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return ImageFolder(
        root=root,
        captions=captions,
        bad=("notes.png", "truncated.jpg"),
        pixels={
            "red.png": ((5, 5), RED),
            "rotated.jpg": ((12, 40), BLUE),  # stored as the right half: below the red half once turned
            "rgba.png": ((2, 8), WHITE),  # transparent: composited on white
            "gray.png": ((8, 8), (GRAY, GRAY, GRAY)),
            f"{CONCEPT_FOLDER}/blue.png": ((10, 10), BLUE),
        },
        sizes={
            "red.png": (32, 24),
            "rotated.jpg": (24, 48),  # stored 48x24
            "rgba.png": (16, 16),
            "gray.png": (16, 16),
            f"{CONCEPT_FOLDER}/blue.png": (20, 20),
        },
        rotated="rotated.jpg",
        concepts={f"{CONCEPT_FOLDER}/blue.png": "aawxbc figurine"},
        masks=mask_files,
    )


def zip_folder(
    folder: str | Path, target: str | Path, *, prefix: str = "", extra: Mapping[str, bytes] | None = None
) -> Path:
    """Zip every file of ``folder`` into ``target`` (under ``prefix/`` when given), plus ``extra`` members as named.

    ``extra`` may hold any member name, unsafe ones included (``../evil.txt``, ``/etc/x``), to test archive checks.
    """
    folder, target = Path(folder), Path(target)
    members = {
        (f"{prefix.strip('/')}/" if prefix else "") + p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }
    members.update(extra or {})
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(zipfile.ZipInfo(name, _ZIP_TIME), data, zipfile.ZIP_DEFLATED)
    return target


def hf_dataset(folder: ImageFolder, *, caption_column: str = "text"):
    """A ``datasets.Dataset`` of every image of ``folder`` (bad ones too: corrupt rows), in ``folder.images`` order.

    Columns: ``image`` (an ``Image`` feature holding the file's bytes) and ``caption_column`` (the caption or None).
    """
    import datasets

    rows = folder.images
    features = datasets.Features({"image": datasets.Image(), caption_column: datasets.Value("string")})
    return datasets.Dataset.from_dict(
        {
            "image": [{"bytes": (folder.root / name).read_bytes(), "path": None} for name in rows],
            caption_column: [folder.captions.get(name) for name in rows],
        },
        features=features,
    )


def save_hf_dataset(folder: ImageFolder, target: str | Path, *, splits: tuple[str, ...] = ()) -> Path:
    """``hf_dataset(folder)`` written by ``save_to_disk``: a plain ``Dataset``, or a ``DatasetDict`` of ``splits``."""
    import datasets

    dataset = hf_dataset(folder)
    with _quiet(datasets):
        if splits:
            datasets.DatasetDict({split: dataset for split in splits}).save_to_disk(str(target))
        else:
            dataset.save_to_disk(str(target))
    return Path(target)


def seed_hf_dataset_cache(cache_dir: str | Path, repo_id: str, dataset, split: str = "train") -> Path:
    """Put ``dataset`` into a ``datasets`` cache as if ``load_dataset(repo_id)`` had downloaded it once.

    Offline (``HF_HUB_OFFLINE=1``), ``datasets.load_dataset(repo_id, cache_dir=cache_dir)`` then reads it from
    there. Returns the folder written.
    """
    import datasets

    namespace, _, name = repo_id.rpartition("/")
    folder = Path(cache_dir) / (f"{namespace}___{name}" if namespace else name) / "default" / "0.0.0" / "seeded"
    folder.mkdir(parents=True, exist_ok=True)
    staging = folder / "staging"
    with _quiet(datasets):
        dataset.save_to_disk(str(staging))
    shutil.move(staging / "data-00000-of-00001.arrow", folder / f"{name}-{split}.arrow")
    shutil.rmtree(staging)
    split_info = datasets.SplitInfo(split, dataset.data.nbytes, len(dataset), dataset_name=name)
    splits = datasets.SplitDict({split: split_info})
    info = datasets.DatasetInfo(
        features=dataset.features, dataset_name=name, config_name="default", version="0.0.0", splits=splits
    )
    info.write_to_directory(str(folder))
    return folder


class _quiet:
    """No progress bars while a helper saves a dataset; the caller's setting is restored after."""

    def __init__(self, datasets):
        self.datasets = datasets

    def __enter__(self):
        self.was_enabled = not self.datasets.are_progress_bars_disabled()
        self.datasets.disable_progress_bars()

    def __exit__(self, *exc):
        if self.was_enabled:
            self.datasets.enable_progress_bars()
