"""The one Lightning callback of a run's progress: batches, epochs and PatchCore's coreset selection.

anomalib's k-center-greedy loop reports through its own ``tqdm`` bar, carriage returns on a non-TTY;
while ``fit`` runs, the callback turns it into :class:`~anomalib_hyperbolic.benchmark.progress.Progress`
lines too.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from lightning.pytorch import Callback

from anomalib_hyperbolic.benchmark.progress import Progress


class TrainingProgress(Callback):
    """Reports a training stage's batches and epochs, and a coreset selection, as :class:`Progress` lines.

    Args:
        progress: Where the lines go (its current stage is the training stage).
        epochs: The stage's number of epochs.
        share: The part of the stage that the epochs take; a coreset selection (PatchCore) takes the
            rest, reported from anomalib's k-center-greedy loop while ``fit`` runs.
    """

    def __init__(self, progress: Progress, epochs: int, share: float = 1.0) -> None:
        self.progress = progress
        self.epochs = epochs
        self.share = share
        self._original_tqdm: Any = None

    def on_train_batch_end(self, trainer: Any, *args: Any, **kwargs: Any) -> None:
        """A line (at most every ``interval`` seconds) with the epoch and batch."""
        del args, kwargs
        batches = max(1, int(trainer.num_training_batches))
        step = trainer.fit_loop.epoch_loop.batch_progress.current.completed
        fraction = self.share * (trainer.current_epoch + step / batches) / max(1, self.epochs)
        self.progress.update(fraction, f"epoch {trainer.current_epoch + 1}/{self.epochs}, batch {step}/{batches}")

    def on_train_epoch_end(self, trainer: Any, *args: Any, **kwargs: Any) -> None:
        """A line per finished epoch, with the training loss (not when a coreset follows)."""
        del args, kwargs
        if self.share < 1:
            return
        loss = trainer.callback_metrics.get("train_loss")
        loss_text = f", loss {float(loss):.4f}" if loss is not None else ""
        fraction = (trainer.current_epoch + 1) / max(1, self.epochs)
        self.progress.update(fraction, f"epoch {trainer.current_epoch + 1}/{self.epochs} done{loss_text}", force=True)

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        """Route anomalib's k-center-greedy ``tqdm`` bar to progress lines while ``fit`` runs."""
        del trainer, pl_module
        from anomalib.models.components.sampling import k_center_greedy

        self._original_tqdm = k_center_greedy.tqdm
        k_center_greedy.tqdm = self._coreset_steps

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        """Give anomalib its ``tqdm`` back."""
        del trainer, pl_module
        self._restore_tqdm()

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        """Give anomalib its ``tqdm`` back when ``fit`` fails."""
        del trainer, pl_module, exception
        self._restore_tqdm()

    def _restore_tqdm(self) -> None:
        if self._original_tqdm is not None:
            from anomalib.models.components.sampling import k_center_greedy

            k_center_greedy.tqdm = self._original_tqdm
            self._original_tqdm = None

    def _coreset_steps(self, iterable: Iterable[Any], desc: str = "", **kwargs: Any) -> Iterator[Any]:
        del desc, kwargs
        items = list(iterable)
        start = self.share
        self.progress.update(start, f"features extracted; coreset selection of {len(items) + 1} patches", force=True)
        for index, value in enumerate(items):
            self.progress.update(start + (1 - start) * index / max(1, len(items)), f"coreset {index}/{len(items)}")
            yield value
