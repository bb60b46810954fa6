r"""A few labelled anomalies in the training split of any anomalib image datamodule.

anomalib trains on normal images only. Open-set supervised detectors such as DRA (Ding et al.,
CVPR 2022) also see ``K`` labelled anomalies. :class:`FewShotAnomalies` wraps any
:class:`~anomalib.data.AnomalibDataModule` (``MVTecAD``, ``Folder``, this package's datamodules...)
and moves ``K`` anomalies of its test set into its training split, following the two protocols of
the DRA paper (section 4.2, appendix A.2):

* ``general``: the ``K`` anomalies are drawn at random from all anomaly classes of the test set
  and removed from it;
* ``hard``: the ``K`` anomalies are drawn from one named anomaly class, and every anomaly of that
  class is removed from the test set (the test set holds unseen classes only).

Sampling is seeded and nested: the anomalies are the first ``K`` of one seeded permutation, so the
1-shot anomaly is the first of the 10-shot set drawn with the same seed. In the general protocol
only the ``K`` sampled anomalies leave the test set (the paper and the official code,
``test_threshold = nAnomaly``); ``max_anomalies=M`` removes the first ``max(K, M)`` of the
permutation instead, so that the test sets of every ``K <= M`` are equal; with ``K = 0`` the
``M`` anomalies leave the test set and nothing enters training, so one-class peers can be tested on
the same images as the few-shot models.

The split depends on the seed and the sorted sample paths only, so every rank of a DDP run draws
the same one (``_setup`` runs on each rank).

The sampled files are logged (``INFO``) and kept in :attr:`FewShotAnomalies.sampled_anomalies`.

Example (Python)::

    from anomalib.data import MVTecAD
    from anomalib_hyperbolic.data import FewShotAnomalies

    datamodule = FewShotAnomalies(MVTecAD(category="carpet"), num_anomalies=10, seed=0)

Example (CLI)::

    anomalib train --model DRA --data anomalib_hyperbolic.data.FewShotAnomalies \\
        --data.datamodule anomalib.data.MVTecAD --data.datamodule.category carpet \\
        --data.num_anomalies 10 --data.protocol hard --data.anomaly_class color
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
import torch
from anomalib.data import AnomalibDataModule
from anomalib.data.utils import LabelName
from torch.utils.data import BatchSampler, DataLoader, DistributedSampler, Sampler

from anomalib_hyperbolic import distributed
from anomalib_hyperbolic.data.defect_types import defect_type_from_path

__all__ = ["BalancedBatchSampler", "FewShotAnomalies", "FewShotSplit", "anomaly_classes", "sample_few_shot"]

logger = logging.getLogger(__name__)

PROTOCOLS = ("general", "hard")
#: ``label`` values that name "anomalous" in general rather than an anomaly class (e.g. ``Folder``).
_GENERIC_LABELS = {"abnormal", "anomalous", "anomaly", "bad", "defect", "defective", "ng", "1", "1.0", "true"}


def anomaly_classes(samples: pd.DataFrame, class_column: str | None = None) -> pd.Series:
    """The anomaly class of every row of an anomalib ``samples`` table.

    Args:
        samples: An anomalib dataset's ``samples`` DataFrame.
        class_column: Column holding the class. ``None``: the ``label`` column where it names a class
            (``MVTecAD``: the defect folder), else the type in the image's path
            (:func:`~anomalib_hyperbolic.data.defect_types.defect_type_from_path`; ``abnormal`` when
            the path names none), so ``Folder(abnormal_dir=["crack", "hole"])`` gets ``crack``/``hole``.

    Returns:
        A string Series aligned with ``samples``.

    Raises:
        ValueError: ``class_column`` is not a column of ``samples``.
    """
    if class_column is not None:
        if class_column not in samples.columns:
            msg = f"class_column={class_column!r} is not a column of the samples table {list(samples.columns)}."
            raise ValueError(msg)
        return samples[class_column].astype(str)

    def from_path(path: str) -> str:
        return defect_type_from_path(path) or "abnormal"

    labels = samples["label"].astype(str) if "label" in samples.columns else pd.Series("", index=samples.index)
    generic = labels.str.lower().isin(_GENERIC_LABELS) | (labels == "")
    return labels.where(~generic, samples["image_path"].map(from_path))


@dataclass(frozen=True)
class FewShotSplit:
    """Result of :func:`sample_few_shot`.

    Attributes:
        train_anomalies: Rows moved into the training split (``split == "train"``), in sampling order.
        test: The remaining test rows.
        classes: Sorted anomaly classes of the original test set.
    """

    train_anomalies: pd.DataFrame
    test: pd.DataFrame
    classes: tuple[str, ...]


def sample_few_shot(
    test_samples: pd.DataFrame,
    num_anomalies: int,
    protocol: str = "general",
    anomaly_class: str | None = None,
    seed: int = 0,
    max_anomalies: int | None = None,
    class_column: str | None = None,
) -> FewShotSplit:
    """Draw ``num_anomalies`` labelled anomalies from a test table (DRA protocols, see module docstring).

    Raises:
        ValueError: on a bad argument, more anomalies asked than exist, an unknown class, or the hard
            protocol on a dataset with a single anomaly class.
    """
    if protocol not in PROTOCOLS:
        msg = f"protocol must be one of {PROTOCOLS}, got {protocol!r}."
        raise ValueError(msg)
    if num_anomalies < 0:
        msg = f"num_anomalies must be >= 0, got {num_anomalies}."
        raise ValueError(msg)
    if max_anomalies is not None and max_anomalies < 0:
        msg = f"max_anomalies must be >= 0 or None, got {max_anomalies}."
        raise ValueError(msg)
    samples = test_samples.sort_values("image_path", ignore_index=True)
    is_anomalous = samples["label_index"].astype(int) == int(LabelName.ABNORMAL)
    classes_all = anomaly_classes(samples, class_column)
    classes = tuple(sorted(classes_all[is_anomalous].unique()))
    n_anomalous = int(is_anomalous.sum())
    rng = np.random.default_rng(seed)

    if protocol == "general":
        if anomaly_class is not None:
            msg = "anomaly_class is only used by protocol='hard'; drop it or set protocol='hard'."
            raise ValueError(msg)
        pool = np.flatnonzero(is_anomalous.to_numpy())
        removed = num_anomalies if max_anomalies is None else max(num_anomalies, max_anomalies)
        if removed >= n_anomalous > 0:
            msg = (
                f"The test set has {n_anomalous} anomalies; drawing num_anomalies={num_anomalies} and removing "
                f"{removed} (max_anomalies={max_anomalies}) from the test set would leave no anomaly to test on. "
                "Lower num_anomalies or max_anomalies."
            )
            raise ValueError(msg)
        if num_anomalies > n_anomalous:
            msg = f"num_anomalies={num_anomalies} but the test set has only {n_anomalous} anomalies."
            raise ValueError(msg)
        order = pool[rng.permutation(len(pool))]
        chosen = order[:num_anomalies]
        # K = 0 with max_anomalies = M holds out the same M anomalies and trains on none: an unsupervised
        # peer then tests on exactly the images that a K <= M model (same seed) tests on
        dropped = order[: min(removed, len(order))]
    else:
        if len(classes) < 2:
            msg = (
                f"protocol='hard' needs at least two anomaly classes (the test set must keep unseen ones); "
                f"this dataset has {len(classes)}: {list(classes)}."
            )
            raise ValueError(msg)
        if anomaly_class is None:
            msg = f"protocol='hard' needs anomaly_class, one of {list(classes)}."
            raise ValueError(msg)
        if anomaly_class not in classes:
            msg = f"Unknown anomaly_class={anomaly_class!r}; the test set's anomaly classes are {list(classes)}."
            raise ValueError(msg)
        in_class = is_anomalous & (classes_all == anomaly_class)
        pool = np.flatnonzero(in_class.to_numpy())
        if num_anomalies > len(pool):
            msg = f"num_anomalies={num_anomalies} but anomaly class {anomaly_class!r} has only {len(pool)} images."
            raise ValueError(msg)
        order = pool[rng.permutation(len(pool))]
        chosen = order[:num_anomalies]
        dropped = pool

    train_anomalies = samples.iloc[chosen].copy()
    train_anomalies["split"] = "train"
    test = samples.drop(index=samples.index[dropped]).reset_index(drop=True)
    test.attrs = dict(test_samples.attrs)
    return FewShotSplit(train_anomalies=train_anomalies.reset_index(drop=True), test=test, classes=classes)


def _cycling(pool: np.ndarray, generator: torch.Generator) -> Iterator[int]:
    """Endless stream of ``pool``'s items, one fresh seeded permutation after another (DevNet/DRA's sampler)."""
    while True:
        yield from pool[torch.randperm(len(pool), generator=generator).numpy()].tolist()


class BalancedBatchSampler(BatchSampler):
    """Batches of half normal, half labelled anomalous indices (DevNet/DRA's balanced sampler), rank-aware.

    Normal and anomalous indices are each drawn from a stream of cycling seeded permutations, as the
    official sampler (``randomGenerator``): every anomaly appears once before any repeats, so every
    batch holds anomalies even for ``K = 1``. The streams continue across epochs; epoch ``e`` of a
    sampler with seed ``s`` always yields the same batches (the streams are replayed from the seed).

    **DDP.** Every rank draws the same *global* batch of ``batch_size * num_replicas`` indices
    (``global // 2`` normal) from the seeded streams and keeps its own share: normals
    ``[rank::num_replicas]`` and anomalies ``[rank::num_replicas]``. The shares of the ranks are
    disjoint and together are exactly the batch one process with ``batch_size * num_replicas``
    would draw, so 2 ranks x batch ``B/2`` train on the images 1 process x batch ``B`` does.
    ``rank``/``num_replicas`` come from the arguments, else from a ``DistributedSampler`` that
    Lightning injects through ``sampler`` (it re-creates ``BatchSampler`` subclasses with
    ``sampler=DistributedSampler(...)`` under ``use_distributed_sampler=True``; only its rank and
    replica count are used, not its order), else from the running process group at iteration time.

    Args:
        labels: Label index (0 normal, 1 anomalous) of every training sample.
        batch_size: Samples per batch and rank (``batch_size * num_replicas // 2`` normal ones per
            global batch, at least one of each kind).
        num_batches: Batches per epoch; ``None``: enough to show every normal image once.
        seed: Seed of the sampling.
        sampler: Ignored but for a ``DistributedSampler``'s ``rank``/``num_replicas`` (see above).
        drop_last: Ignored (every batch is full); part of ``BatchSampler``'s interface.
        rank: This process's rank (default: see above).
        num_replicas: Number of ranks (default: see above).
    """

    def __init__(
        self,
        labels: Sequence[int],
        batch_size: int,
        num_batches: int | None = None,
        seed: int = 0,
        sampler: Sampler | None = None,
        drop_last: bool = False,
        rank: int | None = None,
        num_replicas: int | None = None,
    ) -> None:
        labels = np.asarray(labels, dtype=int)
        self.labels = labels
        self.normal = np.flatnonzero(labels == 0)
        self.anomalous = np.flatnonzero(labels == 1)
        if len(self.normal) == 0 or len(self.anomalous) == 0:
            msg = (
                f"BalancedBatchSampler needs both normal and anomalous training samples, got {len(self.normal)} "
                f"normal and {len(self.anomalous)} anomalous."
            )
            raise ValueError(msg)
        if batch_size < 2:
            msg = f"batch_size must be >= 2 for balanced batches, got {batch_size}."
            raise ValueError(msg)
        if isinstance(sampler, DistributedSampler):
            rank = sampler.rank if rank is None else rank
            num_replicas = sampler.num_replicas if num_replicas is None else num_replicas
        if num_replicas is not None and num_replicas < 1:
            msg = f"num_replicas must be >= 1, got {num_replicas}."
            raise ValueError(msg)
        if rank is not None and not 0 <= rank < (num_replicas or 1):
            msg = f"rank must be in [0, num_replicas={num_replicas}), got {rank}."
            raise ValueError(msg)
        self.sampler = sampler
        self.batch_size = batch_size
        self.drop_last = drop_last
        self.num_batches_arg = num_batches
        self.seed = seed
        self._rank = rank
        self._num_replicas = num_replicas
        self._epoch = 0

    # -- distribution ----------------------------------------------------------------------------

    @property
    def rank(self) -> int:
        """This sampler's rank (argument, injected ``DistributedSampler`` or process group)."""
        return self._rank if self._rank is not None else distributed.rank()

    @property
    def num_replicas(self) -> int:
        """Number of ranks sharing each global batch."""
        return self._num_replicas if self._num_replicas is not None else distributed.world_size()

    @property
    def n_normal(self) -> int:
        """Normal images per global batch."""
        return self.batch_size * self.num_replicas // 2

    @property
    def n_anomalous(self) -> int:
        """Labelled anomalies per global batch."""
        return self.batch_size * self.num_replicas - self.n_normal

    @property
    def num_batches(self) -> int:
        """Batches per epoch."""
        return self.num_batches_arg or max(1, math.ceil(len(self.normal) / self.n_normal))

    def __len__(self) -> int:
        return self.num_batches

    def set_epoch(self, epoch: int) -> None:
        """Epoch of the next ``__iter__`` (Lightning calls it before every training epoch)."""
        self._epoch = epoch

    # -- sampling --------------------------------------------------------------------------------

    def global_batches(self, epoch: int) -> Iterator[tuple[list[int], list[int]]]:
        """``(normal, anomalous)`` indices of every global batch of ``epoch`` (identical on every rank)."""
        normal_stream = _cycling(self.normal, torch.Generator().manual_seed(2 * self.seed))
        anomalous_stream = _cycling(self.anomalous, torch.Generator().manual_seed(2 * self.seed + 1))
        for _ in range(epoch * self.num_batches):  # replay the earlier epochs: the streams continue
            for _ in range(self.n_normal):
                next(normal_stream)
            for _ in range(self.n_anomalous):
                next(anomalous_stream)
        for _ in range(self.num_batches):
            normal = [next(normal_stream) for _ in range(self.n_normal)]
            anomalous = [next(anomalous_stream) for _ in range(self.n_anomalous)]
            yield normal, anomalous

    def __iter__(self) -> Iterator[list[int]]:
        epoch = self._epoch
        self._epoch += 1
        rank, replicas = self.rank, self.num_replicas
        for normal, anomalous in self.global_batches(epoch):
            yield normal[rank::replicas] + anomalous[rank::replicas]


class FewShotAnomalies(AnomalibDataModule):
    """Wrap an anomalib image datamodule and put ``num_anomalies`` labelled anomalies in its training split.

    Batch sizes, workers, augmentations and the test/validation split settings are those of the
    wrapped datamodule; the validation split (e.g. ``from_test``) is made after the anomalies left
    the test set, so no training anomaly is validated or tested on.

    Args:
        datamodule: The anomalib datamodule to wrap (its test set must hold labelled anomalies).
        num_anomalies: ``K``, labelled anomalies moved into the training split (``0`` keeps the
            datamodule one-class).
        protocol: ``"general"`` or ``"hard"`` (see the module docstring).
        anomaly_class: The seen class of the hard protocol (e.g. an MVTec defect folder).
        seed: Seed of the anomaly sampling and of the balanced batches.
        max_anomalies: General protocol: ``None`` (default, the paper and official code): only the
            ``K`` sampled anomalies leave the test set; ``M``: the first ``max(K, M)`` anomalies of the
            seeded permutation leave it, so test sets are equal for every ``K <= M`` (``K = 0`` included:
            the unsupervised peers' test set).
        class_column: Samples column naming the anomaly class (default: see :func:`anomaly_classes`).
        balanced_batches: Training batches of half normal, half labelled anomalous images
            (:class:`BalancedBatchSampler`); otherwise plain shuffling.
        train_batches_per_epoch: Balanced batches per epoch (DRA: 20); ``None``: one pass over the
            normal images.
    """

    def __init__(
        self,
        datamodule: AnomalibDataModule,
        num_anomalies: int = 10,
        protocol: Literal["general", "hard"] = "general",
        anomaly_class: str | None = None,
        seed: int = 0,
        max_anomalies: int | None = None,
        class_column: str | None = None,
        balanced_batches: bool = True,
        train_batches_per_epoch: int | None = None,
    ) -> None:
        if not isinstance(datamodule, AnomalibDataModule):
            msg = f"datamodule must be an anomalib AnomalibDataModule, got {type(datamodule).__name__}."
            raise TypeError(msg)
        if protocol not in PROTOCOLS:
            msg = f"protocol must be one of {PROTOCOLS}, got {protocol!r}."
            raise ValueError(msg)
        if num_anomalies < 0:
            msg = f"num_anomalies must be >= 0, got {num_anomalies}."
            raise ValueError(msg)
        if protocol == "hard" and anomaly_class is None:
            msg = "protocol='hard' needs anomaly_class (the one seen anomaly class)."
            raise ValueError(msg)
        if train_batches_per_epoch is not None and train_batches_per_epoch < 1:
            msg = f"train_batches_per_epoch must be >= 1 or None, got {train_batches_per_epoch}."
            raise ValueError(msg)
        super().__init__(
            train_batch_size=datamodule.train_batch_size,
            eval_batch_size=datamodule.eval_batch_size,
            num_workers=datamodule.num_workers,
            train_augmentations=datamodule.train_augmentations,
            val_augmentations=datamodule.val_augmentations,
            test_augmentations=datamodule.test_augmentations,
            val_split_mode=datamodule.val_split_mode,
            val_split_ratio=datamodule.val_split_ratio,
            test_split_mode=datamodule.test_split_mode,
            test_split_ratio=datamodule.test_split_ratio,
            seed=datamodule.seed,
        )
        self.datamodule = datamodule
        self.num_anomalies = num_anomalies
        self.protocol = protocol
        self.anomaly_class = anomaly_class
        self.few_shot_seed = seed
        self.max_anomalies = max_anomalies
        self.class_column = class_column
        self.balanced_batches = balanced_batches
        self.train_batches_per_epoch = train_batches_per_epoch
        self.sampled_anomalies: list[str] = []
        self.anomaly_classes: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        """Name of the wrapped datamodule (results go where its own would)."""
        return self.datamodule.name

    @property
    def category(self) -> str:
        """Category of the wrapped datamodule."""
        return getattr(self.datamodule, "category", "")

    @category.setter
    def category(self, category: str) -> None:
        self.datamodule.category = category

    def prepare_data(self) -> None:
        """The wrapped datamodule's ``prepare_data`` (downloads, materialisation)."""
        self.datamodule.prepare_data()

    def _setup(self, _stage: str | None = None) -> None:
        self.datamodule._setup(_stage)
        train_data = self.datamodule.train_data
        test_data = self.datamodule.test_data
        split = sample_few_shot(
            test_data.samples,
            num_anomalies=self.num_anomalies,
            protocol=self.protocol,
            anomaly_class=self.anomaly_class,
            seed=self.few_shot_seed,
            max_anomalies=self.max_anomalies,
            class_column=self.class_column,
        )
        task = test_data.samples.attrs.get("task", train_data.samples.attrs.get("task", "classification"))
        anomalies = split.train_anomalies.reindex(
            columns=train_data.samples.columns.union(split.train_anomalies.columns)
        )
        train_samples = pd.concat([train_data.samples, anomalies], ignore_index=True)
        if "mask_path" in train_samples.columns:
            train_samples["mask_path"] = train_samples["mask_path"].fillna("")
        train_samples.attrs = {**train_data.samples.attrs, "task": task}
        train_data.samples = train_samples
        test_data.samples = split.test
        self.train_data = train_data
        self.test_data = test_data
        if hasattr(self.datamodule, "val_data"):  # datamodules with their own validation folder
            self.val_data = self.datamodule.val_data
        self.sampled_anomalies = split.train_anomalies["image_path"].astype(str).tolist()
        self.anomaly_classes = split.classes
        sampled_classes = anomaly_classes(split.train_anomalies, self.class_column).tolist()
        logger.info(
            "FewShotAnomalies: protocol=%s, seed=%d, K=%d (classes %s); %d anomalies left in the test set. "
            "Sampled training anomalies: %s",
            self.protocol,
            self.few_shot_seed,
            self.num_anomalies,
            sorted(set(sampled_classes)),
            int((split.test["label_index"].astype(int) == 1).sum()),
            self.sampled_anomalies,
        )

    def train_dataloader(self) -> DataLoader:
        """Balanced batches (see :class:`BalancedBatchSampler`) when there are labelled anomalies.

        ``train_batch_size`` is per rank: under DDP the sampler shares global batches of
        ``train_batch_size * world_size`` between the ranks.
        """
        labels = self.train_data.samples["label_index"].astype(int).to_numpy()
        if not self.balanced_batches or not (labels == 1).any() or not (labels == 0).any():
            return super().train_dataloader()
        sampler = BalancedBatchSampler(
            labels,
            batch_size=self.train_batch_size,
            num_batches=self.train_batches_per_epoch,
            seed=self.few_shot_seed,
        )
        return DataLoader(
            dataset=self.train_data,
            batch_sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=self.external_collate_fn or self.train_data.collate_fn,
        )
