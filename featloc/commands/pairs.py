"""featloc pairs (--exhaustive | --sequential N | --from-list FILE) --output PAIRS.txt"""

from __future__ import annotations

import logging
from pathlib import Path

logger = logging.getLogger(__name__)


def add_parser(sub, formatter):
    p = sub.add_parser(
        "pairs",
        help="write a pairs file (exhaustive, sequential window, or from a list)",
        description="Write a pairs file ('name0 name1' per line). Image names come from "
        "--images (a folder, searched recursively) or --features (a feature file).",
        formatter_class=formatter,
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--images", type=Path, help="folder of images")
    src.add_argument("--features", type=Path, help="feature file (.h5) whose images to pair")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--exhaustive", action="store_true", help="all pairs (the default)")
    mode.add_argument("--sequential", type=int, metavar="N",
                      help="each image with the next N images in name order")
    mode.add_argument("--from-list", type=Path, metavar="FILE",
                      help="keep the pairs of FILE whose images exist")
    p.add_argument("--output", type=Path, required=True, help="pairs file to write")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..io.images import list_images
    from ..io.pairs import pairs_exhaustive, pairs_sequential, read_pairs, write_pairs

    if args.images is not None:
        names = list_images(args.images)
    else:
        from ..io.h5 import FeatureStore

        with FeatureStore(args.features, "r") as store:
            names = sorted(store.names())
    if not names:
        raise ValueError(f"{args.images or args.features}: no images found")
    if args.sequential is not None:
        pairs = pairs_sequential(names, args.sequential)
    elif args.from_list is not None:
        known = set(names)
        listed = read_pairs(args.from_list)
        pairs = [(a, b) for a, b in listed if a in known and b in known]
        if len(pairs) < len(listed):
            logger.warning("%d pairs of %s name unknown images and were dropped",
                           len(listed) - len(pairs), args.from_list)
    else:
        pairs = pairs_exhaustive(names)
    if not pairs:
        raise ValueError("no pairs to write")
    write_pairs(args.output, pairs)
    logger.info("wrote %d pairs to %s", len(pairs), args.output)
    return 0
