"""Per-image memo of a frozen feature extractor's output, for models trained on fixed features.

A frozen backbone in eval mode maps an image to the same features in every epoch. When a recipe
feeds it the same images every epoch (no augmentation before the backbone), each image's features
can be computed once and reused: :class:`FeatureCache` does that for any extractor
(SimpleNet's ``F_phi`` here; any model with a frozen extractor can use it).

Keys. An entry is keyed by the SHA-256 of the extractor's *fingerprint* (its class, ``repr`` and
every parameter and buffer: backbone weights, layers, pooling) and of the image's content key
(:func:`image_keys`: the SHA-256 of the image tensor as the extractor receives it, its bytes, shape
and dtype; the image itself, its size and normalisation and any augmentation all enter the key).
A caller that needs the content keys for something else too (SimpleNet's synthetic pool) computes
them once and passes them in. A hit is therefore always the same computation; an image
that changed is a miss, never a stale hit. The fingerprint is taken at the first lookup after
:meth:`FeatureCache.clear` (models clear the cache when a fit starts), and an extractor left in
a batch-norm or dropout layer in training mode is never cached (:func:`changes_in_training`).

Storage. Entries live in memory (on the CPU) up to ``max_megabytes``; past that, with ``directory``
they go to ``directory/<fingerprint>/<key>.pt`` (loaded with ``weights_only=True``), without one
they are recomputed. Features are stored as computed (bf16 under bf16 autocast).

Numerics. Features of an image are computed in the batch of the images that missed together, so
they can differ in the last bits from a live computation in another batch (oneDNN picks kernels
by batch size); the models' cached-vs-live tests bound that.

Recipes with augmentation. :meth:`FeatureCache.end_epoch` switches the cache off (and frees it)
when fewer than ``min_hit_rate`` of an epoch's lookups after the first epoch were hits: the
inputs change from epoch to epoch, so caching only costs memory.

Under DDP every rank caches the images of its own shard.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

logger = logging.getLogger(__name__)

__all__ = ["FeatureCache", "changes_in_training", "image_keys", "module_fingerprint"]

Features = torch.Tensor | list[torch.Tensor]


def module_fingerprint(module: nn.Module) -> str:
    """SHA-256 over a module's class, ``repr`` and the bytes, names, shapes and dtypes of its whole state."""
    digest = hashlib.sha256(f"{type(module).__module__}.{type(module).__qualname__}\n{module!r}".encode())
    for name, tensor in module.state_dict().items():
        value = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"\n{name}:{tuple(tensor.shape)}:{value.dtype}".encode())
        digest.update(value.view(torch.uint8).numpy().tobytes() if value.numel() else b"")
    return digest.hexdigest()


#: Layers whose output depends on training mode (batch statistics, dropout); timm's subclass them.
TRAINING_DEPENDENT = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.Dropout, nn.Dropout2d)


def changes_in_training(module: nn.Module) -> bool:
    """Whether a batch-norm or dropout layer of ``module`` is in training mode (its output is not fixed)."""
    return any(layer.training for layer in module.modules() if isinstance(layer, TRAINING_DEPENDENT))


def image_keys(images: torch.Tensor, salt: str = "") -> list[str]:
    """One SHA-256 hex key per image of a ``(B, ...)`` batch: its bytes, shape and dtype, after ``salt``."""
    cpu = images.detach().cpu().contiguous()
    keys = []
    for image in cpu:
        digest = hashlib.sha256(f"{salt}|{tuple(image.shape)}|{image.dtype}|".encode())
        digest.update(image.view(torch.uint8).numpy().tobytes())
        keys.append(digest.hexdigest())
    return keys


class FeatureCache:
    """Computes ``extractor(images)`` once per distinct image and returns stored features afterwards.

    Args:
        extractor: The frozen feature extractor (an ``nn.Module`` in eval mode) returning a
            ``(B, ...)`` tensor or a list of them.
        max_megabytes: Memory for stored entries; beyond it entries go to ``directory`` or are not stored.
        directory: Optional folder for entries past ``max_megabytes`` (e.g. ``.cache/features``).
        min_hit_rate: Share of hits an epoch after the first must reach for the cache to stay on.

    Example:
        >>> cache = FeatureCache(backbone.eval())  # doctest: +SKIP
        >>> features = cache(images)               # computed, stored
        >>> features = cache(images)               # the same tensors, from memory
    """

    def __init__(
        self,
        extractor: nn.Module,
        max_megabytes: float = 8192.0,
        directory: str | Path | None = None,
        min_hit_rate: float = 0.5,
    ) -> None:
        if not max_megabytes >= 0:
            msg = f"`max_megabytes` of the feature cache must be >= 0, got {max_megabytes!r}."
            raise ValueError(msg)
        if not 0 <= min_hit_rate <= 1:
            msg = f"`min_hit_rate` of the feature cache must be in [0, 1], got {min_hit_rate!r}."
            raise ValueError(msg)
        self.extractor = extractor
        self.max_bytes = int(max_megabytes * 2**20)
        self.directory = None if directory is None else Path(directory)
        self.min_hit_rate = min_hit_rate
        self.enabled = True
        self.clear()

    def clear(self) -> None:
        """Forget every entry in memory and the fingerprint (taken again at the next lookup); count anew."""
        self.entries: dict[str, Features] = {}
        self.on_disk: set[str] = set()
        self.stored_bytes = 0
        self.fingerprint: str | None = None
        self.epochs = 0
        self.hits = self.lookups = 0
        self.epoch_hits = self.epoch_lookups = 0

    def __call__(self, images: torch.Tensor, content_keys: Sequence[str] | None = None) -> Features:
        """``extractor(images)``, each image's part taken from the cache where it is there.

        ``content_keys``: the images' :func:`image_keys`, where the caller has them already.
        """
        if not self.enabled or changes_in_training(self.extractor):
            return self.extractor(images)
        if self.fingerprint is None:
            self.fingerprint = module_fingerprint(self.extractor)
        if content_keys is None:
            content_keys = image_keys(images)
        elif len(content_keys) != len(images):
            msg = f"The feature cache got {len(content_keys)} content keys for {len(images)} images."
            raise ValueError(msg)
        keys = [hashlib.sha256(f"{self.fingerprint}|{key}".encode()).hexdigest() for key in content_keys]
        found = [self._load(key) for key in keys]
        missing = [index for index, entry in enumerate(found) if entry is None]
        self.lookups += len(keys)
        self.epoch_lookups += len(keys)
        self.hits += len(keys) - len(missing)
        self.epoch_hits += len(keys) - len(missing)
        if missing:
            computed = self.extractor(images[missing] if len(missing) < len(keys) else images)
            for position, index in enumerate(missing):
                entry = _take(computed, position)
                found[index] = entry
                self._store(keys[index], entry)
        return _stack(found, images.device)  # type: ignore[arg-type]

    def end_epoch(self) -> None:
        """Close an epoch's count; switch the cache off when the inputs keep changing (see the module docstring)."""
        self.epochs += 1
        rate = self.epoch_hits / self.epoch_lookups if self.epoch_lookups else 1.0
        if self.enabled and self.epochs >= 2 and rate < self.min_hit_rate:
            logger.warning(
                "Feature cache switched off: %.0f %% of this epoch's images were not seen before (augmented "
                "inputs?), so caching their features saves nothing.",
                100 * (1 - rate),
            )
            self.enabled = False
            self.entries.clear()
            self.stored_bytes = 0
        self.epoch_hits = self.epoch_lookups = 0

    @property
    def hit_rate(self) -> float:
        """Share of all lookups since :meth:`clear` that were hits (0 before any lookup)."""
        return self.hits / self.lookups if self.lookups else 0.0

    def _path(self, key: str) -> Path:
        assert self.directory is not None
        assert self.fingerprint is not None
        return self.directory / self.fingerprint[:32] / f"{key}.pt"

    def _load(self, key: str) -> Features | None:
        entry = self.entries.get(key)
        if entry is None and self.directory is not None and (key in self.on_disk or self._path(key).is_file()):
            entry = torch.load(self._path(key), map_location="cpu", weights_only=True)
        return entry

    def _store(self, key: str, entry: Features) -> None:
        size = sum(part.numel() * part.element_size() for part in _parts(entry))
        if self.stored_bytes + size <= self.max_bytes:
            self.entries[key] = entry
            self.stored_bytes += size
        elif self.directory is not None:
            path = self._path(key)
            path.parent.mkdir(parents=True, exist_ok=True)
            temporary = path.with_suffix(".tmp")
            torch.save(entry, temporary)
            temporary.replace(path)  # atomic: a reader never sees half a file
            self.on_disk.add(key)


def _parts(entry: Features) -> Sequence[torch.Tensor]:
    return [entry] if isinstance(entry, torch.Tensor) else entry


def _take(computed: Features, index: int) -> Features:
    """Image ``index`` of a computed batch, detached, on the CPU, owning its memory."""
    if isinstance(computed, torch.Tensor):
        return computed[index].detach().cpu().clone()
    return [part[index].detach().cpu().clone() for part in computed]


def _stack(entries: Sequence[Features], device: torch.device) -> Features:
    if isinstance(entries[0], torch.Tensor):
        return torch.stack(list(entries)).to(device)  # type: ignore[arg-type]
    return [torch.stack([entry[level] for entry in entries]).to(device) for level in range(len(entries[0]))]
