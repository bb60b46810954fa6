"""Copy an image dataset folder with every image resized to a square side (to carry it to a GPU machine).

``python scripts/resize_image_tree.py ../shared/datasets/magnetic_tile .gpu/magnetic_tile_256 --size 256``

Same tree and file names. ``.jpg`` images: bilinear resize (PIL antialiases when it downscales), saved
as JPEG quality 90 (mean absolute change against a lossless resize: about 1 grey level on Magnetic
Tile). ``.png`` files (masks): nearest-neighbour resize, so no new grey levels appear. Other files are
copied. The models resize to the same square side anyway (anomalib's ``Resize`` does not keep the
aspect ratio), so only the JPEG re-encoding differs from reading the originals.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from PIL import Image


def resize_tree(source: Path, target: Path, size: int) -> int:
    """Write the resized copy; returns the number of images written."""
    if not source.is_dir():
        msg = f"{source} is not a folder"
        raise FileNotFoundError(msg)
    count = 0
    for file in sorted(source.rglob("*")):
        if not file.is_file():
            continue
        out = target / file.relative_to(source)
        out.parent.mkdir(parents=True, exist_ok=True)
        suffix = file.suffix.lower()
        if suffix in {".jpg", ".jpeg"}:
            with Image.open(file) as image:
                image.resize((size, size), Image.Resampling.BILINEAR).save(out, quality=90)
            count += 1
        elif suffix == ".png":
            with Image.open(file) as image:
                image.resize((size, size), Image.Resampling.NEAREST).save(out)
            count += 1
        else:
            shutil.copyfile(file, out)
    return count


def main() -> None:
    """Command-line entry."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("source", type=Path)
    parser.add_argument("target", type=Path)
    parser.add_argument("--size", type=int, default=256)
    args = parser.parse_args()
    print(f"{resize_tree(args.source, args.target, args.size)} images written to {args.target}")


if __name__ == "__main__":
    main()
