"""featloc extract IMAGE_DIR --features NAME --output FEATS.h5"""

from __future__ import annotations

from pathlib import Path

from . import common


def add_parser(sub, formatter):
    p = sub.add_parser(
        "extract",
        help="detect and describe local features of every image in a folder",
        description="Walk IMAGE_DIR recursively and store the features of every image file "
        "(jpg, jpeg, png, ppm, pgm, bmp, tif, tiff, webp) in an HDF5 file (hloc layout). "
        "Images already stored are skipped; bad images are reported and skipped.",
        formatter_class=formatter,
    )
    p.add_argument("image_dir", type=Path, help="folder of images (searched recursively)")
    p.add_argument("--output", type=Path, required=True, help="feature file (.h5) to write")
    common.add_extractor_args(p)
    p.add_argument("--overwrite", action="store_true", help="recompute images already stored")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..extract import run_extract

    report = run_extract(
        args.image_dir, args.output, args.features, common.extractor_conf(args),
        overwrite=args.overwrite,
    )
    return 0 if report.ok else 1
