"""featloc make-hpatches --images DIR --output DIR [--seed S]"""

from __future__ import annotations

from pathlib import Path


def add_parser(sub, formatter):
    p = sub.add_parser(
        "make-hpatches",
        help="build an HPatches-format benchmark from a folder of images",
        description="Make one sequence per source image (1.ppm..6.ppm and H_1_2..H_1_6, "
        "image-1 pixels to image-k pixels): half viewpoint sequences v_<name> with random "
        "homographies of growing strength, half illumination sequences i_<name> with H = I "
        "and strong photometric change. Deterministic for a seed; complete sequences are "
        "skipped on a re-run; bad images are reported and skipped.",
        formatter_class=formatter,
    )
    p.add_argument("--images", type=Path, required=True, help="folder of source images")
    p.add_argument("--output", type=Path, required=True, help="benchmark folder to write")
    p.add_argument("--seed", type=int, default=0, help="random seed (split and warps)")
    p.add_argument("--overwrite", action="store_true", help="remake sequences already made")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..synth.hpatches import make_hpatches, read_manifest

    output = make_hpatches(args.images, args.output, seed=args.seed, overwrite=args.overwrite)
    return 1 if read_manifest(output)["failures"] else 0
