"""Quiet, deterministic runs: known-noisy library messages counted instead of printed; fixed threads.

:func:`controlled_run` is how the main job gets a readable log and run-to-run identical metrics.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
import warnings
from collections import Counter
from collections.abc import Iterator
from typing import Any

#: Known-noisy library messages (warnings and log records of WARNING level): counted and summarised,
#: not printed. Anything else, and every error, is shown as usual. (label, regular expression searched)
NOISY: tuple[tuple[str, str], ...] = (
    ("timm: deprecated import path", r"Importing from timm\.models\.layers is deprecated"),
    ("anomalib: deprecated dinov2 package", r"anomalib\.models\.components\.dinov2 package is deprecated"),
    ("timm: classifier keys of the weights file unused", r"Unexpected keys .* found while loading pretrained weights"),
    ("torch: pytree LeafSpec deprecation", r"`isinstance\(treespec, LeafSpec\)` is deprecated"),
    ("Lightning: frozen backbone in eval mode", r"Found \d+ module\(s\) in eval mode at the start of training"),
    ("Lightning: dataloader workers hint", r"does not have many workers which may be a bottleneck"),
    ("Lightning: batch size inference hint", r"Trying to infer the `batch_size` from an ambiguous collection"),
    ("Lightning: no logger for self.log", r"You called `self\.log\(.*but have no logger configured"),
    ("Lightning: PatchCore has no optimizer", r"`LightningModule\.configure_optimizers` returned `None`"),
    ("anomalib: threshold from normal-only validation", r"The validation set does not contain any anomalous images"),
)


class QuietLibraries(logging.Filter):
    """Counts and drops the :data:`NOISY` warnings and log records; shows everything else."""

    def __init__(self) -> None:
        super().__init__()
        self.patterns = [(label, re.compile(pattern)) for label, pattern in NOISY]
        self.counts: Counter[str] = Counter()
        self._show = warnings.showwarning

    def _noisy(self, text: str) -> bool:
        for label, pattern in self.patterns:
            if pattern.search(text):
                self.counts[label] += 1
                return True
        return False

    def filter(self, record: logging.LogRecord) -> bool:
        """Logging filter: drop (and count) a known-noisy record below ERROR."""
        return record.levelno >= logging.ERROR or not self._noisy(record.getMessage())

    def showwarning(self, message: Any, category: Any, filename: str, lineno: int, *args: Any, **kwargs: Any) -> None:
        """``warnings.showwarning`` replacement: count known-noisy warnings, show the rest."""
        if not self._noisy(str(message)):
            self._show(message, category, filename, lineno, *args, **kwargs)

    def summary(self) -> str:
        """One line: how many library messages were suppressed, by kind."""
        if not self.counts:
            return "no library warnings suppressed"
        kinds = ", ".join(f"{label} x{count}" for label, count in self.counts.most_common())
        return f"{sum(self.counts.values())} known library warnings suppressed ({kinds})"


@contextlib.contextmanager
def controlled_run(threads: int) -> Iterator[QuietLibraries]:
    """Quiet libraries, ``threads`` torch threads and deterministic algorithms; all restored on exit.

    Library INFO lines (GPU available, seed set, export paths, ...) are dropped with
    ``logging.disable(INFO)``; warnings and errors go through :class:`QuietLibraries`, on every handler
    that exists once the libraries are imported and on a root handler of our own (so that
    anomalib's root-level ``logging.info`` calls do not install ``basicConfig``'s).
    """
    quiet = QuietLibraries()
    warnings.showwarning = quiet.showwarning
    logging.disable(logging.INFO)
    # import-time warnings go through the filter; libraries add their handlers on import
    import anomalib.models  # noqa: F401
    import lightning.pytorch  # noqa: F401
    import openvino  # noqa: F401
    import torch
    from anomalib.engine import Engine  # noqa: F401

    own = logging.StreamHandler(sys.stderr)
    own.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    added = not root.handlers
    if added:
        root.addHandler(own)
    handlers = {logging.lastResort, *root.handlers}
    for log in list(logging.Logger.manager.loggerDict.values()):
        handlers.update(getattr(log, "handlers", []))
    handlers.discard(None)
    for handler in handlers:
        handler.addFilter(quiet)
    previous = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled())
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    try:
        yield quiet
    finally:
        warnings.showwarning = quiet._show
        logging.disable(logging.NOTSET)
        torch.set_num_threads(previous[0])
        torch.use_deterministic_algorithms(previous[1])
        for handler in handlers:
            handler.removeFilter(quiet)
        if added:
            root.removeHandler(own)
