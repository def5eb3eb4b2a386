"""featloc match-dense --pairs PAIRS.txt --images DIR --matcher samnet|coam --output MATCHES.h5"""

from __future__ import annotations

from pathlib import Path

from . import common


def add_parser(sub, formatter):
    from ..config import available

    p = sub.add_parser(
        "match-dense",
        help="match image pairs with a detector-free matcher (SAM-Net, CoAM)",
        description="Match each pair listed in PAIRS (one 'name0 name1' per line, names below "
        "IMAGES) with a detector-free matcher and write the keypoints per image and the "
        "matches per pair in the same HDF5 layout as `featloc extract` + `featloc match` "
        "(hloc's approach for dense matchers: each image's matched points over all its pairs "
        "are merged on a --cell-px grid into one keypoint list). The costly per-pair results "
        "are kept in <OUTPUT>.dense-raw.h5, so a re-run only matches new or changed pairs. "
        "Unreadable images are reported and their pairs skipped.",
        formatter_class=formatter,
    )
    p.add_argument("--pairs", type=Path, required=True, help="pairs file")
    p.add_argument("--images", type=Path, required=True, help="image root of the pair names")
    p.add_argument("--matcher", default="samnet",
                   help=f"dense matcher name: {', '.join(available('dense'))}")
    p.add_argument("--matcher-conf", nargs="*", metavar="KEY=VALUE", default=[],
                   help="matcher options, e.g. weights=PATH resize_max=800 max_matches=2048")
    p.add_argument("--output", type=Path, required=True, help="match file (.h5) to write")
    p.add_argument("--features-output", type=Path, default=None,
                   help="keypoint file (.h5) to write; default: <OUTPUT stem>-keypoints.h5")
    p.add_argument("--cell-px", type=float, default=1.0,
                   help="keypoints of one image closer than this grid (px) are merged")
    p.add_argument("--overwrite", action="store_true", help="re-match pairs already stored")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..match_dense import run_match_dense

    report = run_match_dense(args.pairs, args.images, args.output, args.matcher,
                             common.parse_kv(args.matcher_conf),
                             features_output=args.features_output, overwrite=args.overwrite,
                             cell_px=args.cell_px)
    return 0 if report.ok else 1
