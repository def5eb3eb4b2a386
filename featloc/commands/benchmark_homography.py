"""featloc benchmark homography --data DIR --features NAME --matcher NAME --output OUT"""

from __future__ import annotations

import sys
from pathlib import Path

from . import common


def add_parser(sub, formatter):
    p = sub.add_parser(
        "homography",
        help="HPatches: matching accuracy (MMA@1..10 px) and homography estimation",
        description="Evaluate features + matcher on an HPatches-format folder (the real "
        "HPatches or one made by `featloc make-hpatches`): pairs (1, k), MMA with the D2-Net "
        "protocol, homography accuracy and corner-error AUC at 1/3/5 px. Writes results.json, "
        "summary.json, summary.md and mma.png to OUTPUT and prints the table. A detector-free "
        "matcher (--matcher samnet|coam) matches the images directly: --features and "
        "--extractor-conf are then unused.",
        formatter_class=formatter,
    )
    p.add_argument("--data", type=Path, required=True, help="HPatches-format folder")
    p.add_argument("--output", type=Path, required=True, help="output folder (also the cache)")
    # The protocol's keypoint budget is explicit here, not left to the extractor default.
    common.add_extractor_args(p, max_keypoints=2048)
    common.add_matcher_args(p, dense=True)
    common.add_ransac_args(p)
    p.add_argument("--keep-high-res", action="store_true",
                   help="keep the 8 high-resolution HPatches sequences that D2-Net excludes")
    p.add_argument("--detector-top-k", type=int, default=0, metavar="K",
                   help="detector repeatability and localisation error on each image's K "
                   "best keypoints by score, as SuperPoint (300 at 240x320, 1000 at 480x640); "
                   "0: on all keypoints. Matching always uses all of them")
    common.add_refine_args(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from ..eval.hpatches import run_homography_benchmark, summaries_to_markdown

    summary = run_homography_benchmark(
        args.data, args.output, args.features, args.matcher,
        extractor_conf=common.extractor_conf(args), matcher_conf=common.matcher_conf(args),
        ransac=common.ransac_conf(args), keep_high_res=args.keep_high_res,
        detector_top_k=args.detector_top_k, refine=common.refine_conf(args),
    )
    sys.stdout.write(summaries_to_markdown([summary]))
    return 1 if summary["missing_pairs"] else 0
