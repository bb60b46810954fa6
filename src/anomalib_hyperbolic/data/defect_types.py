"""The defect type of an image from its path: one parser for the metrics and the few-shot sampler.

:class:`~anomalib_hyperbolic.metrics.CategoryIoU` groups test images by defect type, and
:func:`~anomalib_hyperbolic.data.few_shot.anomaly_classes` names the anomaly classes of a dataset
whose ``label`` column does not; both read the type from the image path with
:func:`defect_type_from_path`, which names a type as this package's datasets label it.

Example:
    >>> defect_type_from_path("magnetic_tile/MT_Blowhole/Imgs/exp1_num_4727.jpg")
    'blowhole'
    >>> defect_type_from_path("mvtec/bottle/test/broken_large/000.png")
    'broken_large'
"""

from __future__ import annotations

from pathlib import PurePath

from anomalib_hyperbolic.data.datasets.magnetic_tile import NORMAL_FOLDER

__all__ = ["CONTAINER_FOLDERS", "defect_type_from_path"]

#: Folder names (compared in lower case) that hold images or a split rather than name a type.
CONTAINER_FOLDERS = frozenset({"imgs", "images", "img", "image", "test", "train", "training", "abnormal"})
#: Magnetic Tile's folders are ``MT_<Type>`` (``MT_Free`` for the normals).
_MAGNETIC_TILE_PREFIX = "MT_"


def defect_type_from_path(image_path: str | PurePath) -> str:
    """The defect type of an image: the nearest folder above it that is not a container folder.

    * MVTec AD and anomalib's ``Folder`` (``.../test/<type>/000.png``): ``<type>``, ``good`` for
      the normals.
    * Magnetic Tile (``.../MT_<Type>/Imgs/x.jpg``): the ``label`` of
      :class:`~anomalib_hyperbolic.data.MagneticTileDataset`, i.e. ``<type>`` in lower case, and
      ``good`` for ``MT_Free``.
    * ELPV (``<root>/images/cellNNNN.png``) and NEU-Seg (``<root>/images/{training,test}/x.jpg``)
      keep their types out of the path (``labels.csv``, the masks): every image gets the data
      folder's name, i.e. one category; their ``label`` column names the classes.

    Returns ``""`` when no folder qualifies (e.g. a bare file name).
    """
    for parent in PurePath(image_path).parents:
        folder = parent.name
        if not folder or folder.lower() in CONTAINER_FOLDERS:
            continue
        if folder == NORMAL_FOLDER:
            return "good"
        if folder.startswith(_MAGNETIC_TILE_PREFIX):
            return folder.removeprefix(_MAGNETIC_TILE_PREFIX).lower()
        return folder
    return ""
