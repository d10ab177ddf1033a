"""An example lorastack plugin: one captioner and one dataset source.

From lorastack it imports ``lorastack.plugins.api`` only: everything a plugin may use is there.
"""

from __future__ import annotations

from pathlib import Path

from lorastack.plugins.api import (
    DatasetError,
    DatasetItem,
    ImageError,
    Option,
    Skipped,
    hookimpl,
    image_key,
    open_image,
)

# Named colours and their RGB values; a caption names the nearest one to the image's mean colour.
COLOURS = {
    "red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 70, 220), "yellow": (230, 220, 50),
    "purple": (140, 50, 180), "orange": (240, 140, 30), "white": (245, 245, 245), "black": (15, 15, 15),
    "gray": (128, 128, 128),
}  # fmt: skip


def dominant_colour(image) -> str:
    from PIL import ImageStat

    mean = ImageStat.Stat(image.convert("RGB")).mean
    return min(COLOURS, key=lambda c: sum((a - b) ** 2 for a, b in zip(COLOURS[c], mean)))


class ColourCaptioner:
    name = "colour"
    description = "Caption each image with its dominant colour ('a red image')."
    options = (
        Option("prefix", "str", default="", help="Text put before the caption, e.g. 'a photo of aawxbc,'"),
        Option("noun", "str", default="image", help="What the image shows ('a red <noun>')."),
    )

    def caption(self, items, options):
        for item in items:
            prefix = f"{options['prefix'].strip()} " if options["prefix"].strip() else ""
            yield f"{prefix}a {dominant_colour(item.image)} {options['noun']}"


class ListFileSource:
    name = "listfile"
    description = "A .list file of 'IMAGE<TAB>CAPTION' lines, image paths relative to the file."
    options = (Option("separator", "str", default="\t", help="What separates the image path from the caption."),)

    def detect(self, location: str) -> bool:
        return location.endswith(".list") and Path(location).is_file()

    def open(self, location, options):
        path = Path(location)
        if not path.is_file():
            raise DatasetError(f"list file {location!r} does not exist")
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip() or line.startswith("#"):
                continue
            name, _, caption = line.partition(options["separator"])
            image_path = path.parent / name.strip()
            if not image_path.is_file():
                yield Skipped(f"{name.strip()} (line {number})", "no such file")
                continue
            data = image_path.read_bytes()
            try:
                image = open_image(data, name.strip())
            except ImageError as e:
                yield Skipped(name.strip(), str(e))
                continue
            yield DatasetItem(image, caption.strip() or None, name.strip(), key=image_key(data), path=image_path)


@hookimpl
def register_captioners(register):
    register(ColourCaptioner())


@hookimpl
def register_dataset_sources(register):
    register(ListFileSource())
