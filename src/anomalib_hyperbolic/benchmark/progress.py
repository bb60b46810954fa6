"""Plain progress lines for a run of stages (fine on a non-TTY): ``[main-job  12.3 s  40 %] stage: detail``.

During training, one Lightning callback feeds them
(:class:`~anomalib_hyperbolic.benchmark.training_progress.TrainingProgress`). This module imports
nothing heavy, so that a run can set up its log filters before Lightning is imported.
"""

from __future__ import annotations

import sys
import time
from typing import Any


class Progress:
    """Plain progress lines: elapsed time, overall percent and the current stage.

    Args:
        weights: Stage name -> expected share of the run's time (the overall percent adds them up).
        interval: Seconds between two lines of :meth:`update` inside one stage.
        stream: Where lines go (stdout by default).
        label: The tag that starts every line.
    """

    def __init__(
        self, weights: dict[str, float], interval: float = 10.0, stream: Any = None, label: str = "main-job"
    ) -> None:
        self.weights = weights
        self.total = sum(weights.values())
        self.interval = interval
        self.stream = stream or sys.stdout
        self.label = label
        self.start = time.perf_counter()
        self.done = 0.0
        self.stage: str | None = None
        self.stage_start = self.start
        self.last_line = 0.0
        self.durations: dict[str, float] = {}

    def line(self, text: str, fraction: float = 0.0) -> None:
        """Print one line with the elapsed time and the overall percent."""
        weight = self.weights.get(self.stage or "", 0.0)
        percent = 100 * min(1.0, (self.done + weight * min(max(fraction, 0.0), 1.0)) / self.total)
        elapsed = time.perf_counter() - self.start
        print(f"[{self.label} {elapsed:6.1f} s {percent:3.0f} %] {text}", file=self.stream, flush=True)
        self.last_line = time.perf_counter()

    def begin(self, stage: str) -> None:
        """Close the current stage and start ``stage``."""
        self.end()
        self.stage, self.stage_start = stage, time.perf_counter()
        self.line(f"{stage} ...")

    def update(self, fraction: float, detail: str, force: bool = False) -> None:
        """A line for the current stage, at most every ``interval`` seconds unless ``force``."""
        if force or time.perf_counter() - self.last_line >= self.interval:
            self.line(f"{self.stage}: {detail}", fraction)

    def end(self) -> None:
        """Close the current stage (no-op when none is open)."""
        if self.stage is None:
            return
        seconds = time.perf_counter() - self.stage_start
        self.durations[self.stage] = seconds
        self.done += self.weights.get(self.stage, 0.0)
        self.line(f"{self.stage}: done in {seconds:.1f} s")
        self.stage = None
