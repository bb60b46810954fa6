"""Datamodules of anomalib-hyperbolic (subclasses of anomalib's ``AnomalibDataModule``)."""

__all__: list[str] = []
