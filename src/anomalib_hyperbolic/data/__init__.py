"""Datamodules of anomalib-hyperbolic (subclasses of anomalib's ``AnomalibDataModule``).

Importing this module (done automatically when ``anomalib.data`` is imported, see
:mod:`anomalib_hyperbolic._autoload`) makes ``--data MagneticTile``, ``--data NEUSeg`` and
``--data ELPV`` resolve in the ``anomalib`` CLI, and adds the classes to ``anomalib.data`` so
that ``anomalib.data.get_datamodule`` finds them by name too.
"""

import anomalib.data as _anomalib_data

from anomalib_hyperbolic.data.datamodules import ELPV, MagneticTile, NEUSeg
from anomalib_hyperbolic.data.datasets import ELPVDataset, MagneticTileDataset, NEUSegDataset
from anomalib_hyperbolic.data.defect_types import defect_type_from_path
from anomalib_hyperbolic.data.few_shot import FewShotAnomalies

__all__ = [
    "ELPV",
    "ELPVDataset",
    "FewShotAnomalies",
    "MagneticTile",
    "MagneticTileDataset",
    "NEUSeg",
    "NEUSegDataset",
    "defect_type_from_path",
]

for _name in __all__:  # get_datamodule() looks names up on the anomalib.data module; classes only
    if isinstance(globals()[_name], type) and not hasattr(_anomalib_data, _name):
        setattr(_anomalib_data, _name, globals()[_name])
