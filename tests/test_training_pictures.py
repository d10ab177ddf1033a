"""What a run shows: progress lines, smoothed summaries, loss.png's axes and legend, labelled sample grids."""

from __future__ import annotations

import io
import json
import math

from PIL import Image

from lorastack.core.grids import labelled_grid
from lorastack.core.training.pictures import (
    SAMPLE_RECIPE_KEY,
    loss_figure,
    loss_plot_png,
    sample_png,
    smoothed,
)
from lorastack.core.training.progress import Progress, smoothed_ends


def test_progress_off_a_terminal_is_a_line_every_few_seconds():
    stream = io.StringIO()  # not a terminal
    bar = Progress(100, stream=stream, every=3600)
    for step in range(100):
        bar.update(1, 0.5 if step % 2 else 0.1)
    bar.close()
    lines = stream.getvalue().splitlines()
    # the first step (the run is alive) and the last; nothing in between within the interval
    assert [line.split(" loss")[0] for line in lines] == ["step 1/100", "step 100/100"]
    assert 0.25 < float(lines[-1].split()[3]) < 0.35  # the moving average, not the last step's 0.5
    every = io.StringIO()
    bar = Progress(3, stream=every, every=0, label="class image")
    for _ in range(3):
        bar.update(1)
    bar.close()
    assert [line.split(" it/s")[0] for line in every.getvalue().splitlines()] == [
        "class image 1/3", "class image 2/3", "class image 3/3",
    ]  # fmt: skip
    silent = io.StringIO()
    bar = Progress(3, stream=silent, enabled=False)
    bar.update(3, 1.0)
    bar.close()
    assert silent.getvalue() == ""


def test_the_summary_compares_means_not_two_noisy_steps():
    losses = [0.9, 0.01] * 50 + [0.3, 0.001] * 50  # noisy: the last step alone says 0.001
    first, last = smoothed_ends(losses)
    assert math.isclose(first, (0.9 * 5 + 0.01 * 5) / 10) and math.isclose(last, (0.3 * 5 + 0.001 * 5) / 10)
    assert smoothed_ends([0.4]) == (0.4, 0.4)
    assert all(math.isnan(v) for v in smoothed_ends([]))
    assert smoothed([1.0, 0.0])[0] == 1.0 and 0 < smoothed([1.0, 0.0])[1] < 1.0


def test_loss_png_has_axes_ticks_labels_and_a_legend():
    figure = loss_figure([0.5, 0.4, 0.45, 0.3], {"2": 0.41, "4": 0.33})
    (axes,) = figure.axes
    assert (axes.get_xlabel(), axes.get_ylabel()) == ("step", "loss (MSE)")
    assert [t.get_text() for t in axes.get_legend().get_texts()] == [
        "loss (each step)", "smoothed (EMA 0.9)", "validation loss",
    ]  # fmt: skip
    assert len(axes.get_xticks()) >= 2 and len(axes.get_yticks()) >= 2
    image = Image.open(io.BytesIO(loss_plot_png([0.5, 0.4, 0.45, 0.3])))
    assert image.size == (800, 400) and len(image.convert("L").getcolors(256)) > 10


def test_sample_grids_are_upscaled_labelled_and_carry_their_recipe():
    tiles = [Image.new("RGB", (64, 64), colour) for colour in ("red", "blue")]
    grid = labelled_grid([tiles], ["a red star", "a blue circle"], ["step 10"])
    tile = 256  # 64 px upscaled 4x, pixel for pixel
    left, top = grid.width - 2 * tile, grid.height - tile
    assert left > 0 and top > 0
    assert (
        grid.getpixel((left + 10, top + 10)) == (255, 0, 0) and grid.getpixel((left + tile + 10, top + 10))[2] == 255
    )
    header = grid.crop((left, 0, grid.width, top)).convert("L")
    row_label = grid.crop((0, top, left, grid.height)).convert("L")
    assert header.getextrema()[0] < 100 and row_label.getextrema()[0] < 100  # text drawn there
    recipe = {"step": 10, "prompts": ["a red star", "a blue circle"], "seeds": [0, 1], "sample_steps": 20,
              "guidance": 1.5, "width": 64, "height": 64}  # fmt: skip
    saved = Image.open(io.BytesIO(sample_png(grid, recipe)))
    assert json.loads(saved.text[SAMPLE_RECIPE_KEY]) == recipe
    assert "seeds 0, 1" in saved.text["Description"]


def test_progress_on_a_terminal_is_a_tqdm_bar():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    stream = Terminal()
    bar = Progress(4, stream=stream, every=0)
    assert bar.bar is not None
    for _ in range(4):
        bar.update(1, 0.2)
    bar.close()
    text = stream.getvalue()
    assert "\r" in text and "4/4" in text and "loss=0.2000" in text  # one redrawn bar, not a line per step
    assert "step 4/4 loss" not in text
