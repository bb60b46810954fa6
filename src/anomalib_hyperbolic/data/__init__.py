"""Datamodules of anomalib-hyperbolic (subclasses of anomalib's ``AnomalibDataModule``).

Importing this module (done automatically when ``anomalib.data`` is imported, see
:mod:`anomalib_hyperbolic._autoload`) makes ``--data MagneticTile``, ``--data NEUSeg`` and
``--data ELPV`` resolve in the ``anomalib`` CLI, and adds the classes to ``anomalib.data`` so
that ``anomalib.data.get_datamodule`` finds them by name too.
"""

import anomalib.data as _anomalib_data

from anomalib_hyperbolic.data.datamodules import ELPV, MagneticTile, NEUSeg
from anomalib_hyperbolic.data.datasets import ELPVDataset, MagneticTileDataset, NEUSegDataset

__all__ = ["ELPV", "ELPVDataset", "MagneticTile", "MagneticTileDataset", "NEUSeg", "NEUSegDataset"]

for _name in __all__:  # get_datamodule() looks names up on the anomalib.data module
    if not hasattr(_anomalib_data, _name):
        setattr(_anomalib_data, _name, globals()[_name])
