"""featloc benchmark pose --pairs PAIRS_GT.txt --images DIR --features NAME --matcher NAME
--output OUT"""

from __future__ import annotations

import sys
from pathlib import Path

from . import common


def add_parser(sub, formatter):
    p = sub.add_parser(
        "pose",
        help="relative pose AUC@5/10/20 deg on pairs with ground truth (ScanNet/MegaDepth style)",
        description="SuperGlue/LoFTR relative-pose protocol: per pair, match, estimate the "
        "essential matrix (OpenCV RANSAC by default), pose error = max(rotation, translation "
        "angle), AUC at 5/10/20 deg; also match precision under the epipolar ground truth. "
        "PAIRS: SuperGlue 'pairs with GT' text (name0 name1 rot0 rot1 K0 K1 T_0to1), "
        "glue-factory pairs_calibrated text, or a LoFTR scene-info .npz. Writes results.json, "
        "summary.json and summary.md to OUTPUT and prints the table. A detector-free matcher "
        "(--matcher samnet|coam) matches the images directly: --features and "
        "--extractor-conf are then unused.",
        formatter_class=formatter,
    )
    p.add_argument("--pairs", type=Path, required=True, help="pairs with ground truth")
    p.add_argument("--images", type=Path, required=True, help="image root of the pair names")
    p.add_argument("--output", type=Path, required=True, help="output folder (also the cache)")
    p.add_argument("--resize", default=None,
                   help="WxH (ScanNet-1500: 640x480) or a long side in px (MegaDepth-1500: "
                   "1200; LoFTR 840, LightGlue 1600); intrinsics are scaled to match")
    # The protocol's keypoint budget is explicit here, not left to the extractor default.
    common.add_extractor_args(p, max_keypoints=2048)
    common.add_matcher_args(p, dense=True)
    common.add_ransac_args(p, threshold_px=0.5)
    p.set_defaults(ransac_method="ransac")  # SuperGlue/LoFTR: classic RANSAC
    p.add_argument("--ransac-confidence", type=float, default=0.99999, help="RANSAC confidence")
    p.add_argument("--ransac-max-iters", type=int, default=1000,
                   help="RANSAC iterations (1000: OpenCV's default, as in the reference code)")
    p.add_argument("--poselib-refine", action="store_true",
                   help="OpenCV backend: refine the pose on the inliers with PoseLib")
    p.add_argument("--epipolar-th", type=float, default=5e-4,
                   help="match precision threshold on the symmetric epipolar error in "
                   "normalised coordinates (5e-4 ScanNet, 1e-4 MegaDepth)")
    p.add_argument("--workers", type=int, default=None,
                   help="pairs estimated at once, in threads (default: one per CPU core); "
                   "the results do not depend on it")
    common.add_refine_args(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from ..eval.pose import run_pose_benchmark, summaries_to_markdown

    ransac = {**common.ransac_conf(args), "confidence": args.ransac_confidence,
              "max_iterations": args.ransac_max_iters, "poselib_refine": args.poselib_refine}
    summary = run_pose_benchmark(
        args.pairs, args.images, args.output, args.features, args.matcher,
        extractor_conf=common.extractor_conf(args), matcher_conf=common.matcher_conf(args),
        ransac=ransac, resize=args.resize, epipolar_th=args.epipolar_th,
        refine=common.refine_conf(args), workers=args.workers,
    )
    sys.stdout.write(summaries_to_markdown([summary]))
    return 1 if summary["missing_pairs"] else 0
