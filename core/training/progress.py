"""Progress of long work: a tqdm bar on a terminal, else a plain line every few seconds (as kohya's scripts print).

Off a terminal (a log file, a pipe, CI) a bar would be one carriage-return-joined line written at the end; a line
``step 120/500 loss 0.0834 it/s 3.41`` every :data:`LINE_EVERY` seconds shows the run is alive and how fast it goes.
The loss shown is an exponential moving average, since one step's loss jumps with its random timestep.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Sequence
from typing import TextIO

#: seconds between two progress lines off a terminal
LINE_EVERY = 5.0
#: the weight of the running loss in the moving average shown
EMA_BETA = 0.9
#: the share of the steps whose mean loss opens and closes the end-of-run summary
SUMMARY_SHARE = 0.1


class Progress:
    """``update()`` after each unit of work, ``close()`` at the end; nothing at all when ``enabled`` is false."""

    def __init__(self, total: int, *, label: str = "step", initial: int = 0, enabled: bool = True,
                 stream: TextIO | None = None, every: float = LINE_EVERY):  # fmt: skip
        self.total, self.label, self.done = total, label, initial
        self.stream = stream if stream is not None else sys.stderr
        self.enabled, self.every = enabled, every
        self.started = self._last_line = time.perf_counter()
        self._start, self._ema, self._weight = initial, 0.0, 0.0
        self._printed = initial
        self.bar = None
        if enabled and _is_terminal(self.stream):
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=label, unit=label.split()[-1], file=self.stream,
                            dynamic_ncols=True)  # fmt: skip

    @property
    def loss(self) -> float | None:
        """The moving average of the losses so far (bias-corrected), or ``None`` before the first."""
        return self._ema / self._weight if self._weight else None

    @property
    def rate(self) -> float:
        elapsed = time.perf_counter() - self.started
        return (self.done - self._start) / elapsed if elapsed > 0 else 0.0

    def update(self, n: int = 1, loss: float | None = None) -> None:
        self.done += n
        if loss is not None and math.isfinite(loss):
            self._ema = EMA_BETA * self._ema + (1 - EMA_BETA) * loss
            self._weight = EMA_BETA * self._weight + (1 - EMA_BETA)
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(n)
            postfix = {"it/s": f"{self.rate:.2f}"}
            if self.loss is not None:
                postfix = {"loss": f"{self.loss:.4f}", **postfix}
            self.bar.set_postfix(postfix)
            return
        now = time.perf_counter()
        if self._printed == self._start or now - self._last_line >= self.every or self.done >= self.total:
            self._line()
            self._last_line = now

    def _line(self) -> None:
        loss = f" loss {self.loss:.4f}" if self.loss is not None else ""
        print(f"{self.label} {self.done}/{self.total}{loss} it/s {self.rate:.2f}", file=self.stream, flush=True)
        self._printed = self.done

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.enabled and self._printed != self.done:
            self._line()


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or unusual stream
        return False


def smoothed_ends(losses: Sequence[float], share: float = SUMMARY_SHARE) -> tuple[float, float]:
    """The mean loss of the first and of the last ``share`` of the steps (at least one step each).

    One step's loss depends mostly on its random timestep (0.01 at low noise, 0.8 at high), so comparing the first
    step with the last says little; means over a tenth of the run compare like with like.
    """
    if not losses:
        return math.nan, math.nan
    count = max(1, round(len(losses) * share))
    return sum(losses[:count]) / count, sum(losses[-count:]) / count
