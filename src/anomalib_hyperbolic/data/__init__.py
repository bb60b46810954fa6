"""Datamodules of anomalib-hyperbolic (subclasses of anomalib's ``AnomalibDataModule``)."""

__all__: list[str] = []

from anomalib_hyperbolic.data.few_shot import FewShotAnomalies  # noqa: E402  (DRA: labelled anomalies)

__all__ += ["FewShotAnomalies"]
