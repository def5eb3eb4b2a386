"""featloc demo: the whole pipeline on images the project generates itself."""

from __future__ import annotations

from pathlib import Path


def add_parser(sub, formatter):
    p = sub.add_parser(
        "demo",
        help="end-to-end demo on generated images (no downloads)",
        description="Generate textured scenes, build an HPatches-format set from them, run "
        "extraction, matching and homography estimation with SIFT, RootSIFT and ORB, print the "
        "benchmark table and write a picture of matches.",
        formatter_class=formatter,
    )
    p.add_argument("--output", type=Path, default=Path("outputs/demo"), help="output folder")
    p.add_argument("--num-images", type=int, default=6, help="generated source images")
    p.add_argument("--seed", type=int, default=0, help="seed of the generated data")
    p.set_defaults(func=run)


def run(args) -> int:
    import logging

    from ..demo import run_demo

    table, picture = run_demo(args.output, args.num_images, args.seed)
    print(table)
    logging.getLogger(__name__).info("match picture: %s", picture)
    return 0
