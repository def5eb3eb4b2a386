"""featloc localize-xy --db DIR --db-csv FILE --queries DIR --output FILE"""

from __future__ import annotations

from pathlib import Path

from ..loc import DEFAULT_FEATURES, DEFAULT_MATCHER
from . import common
from .retrieve import add_global_args


def add_parser(sub, formatter):
    p = sub.add_parser(
        "localize-xy",
        help="(x, y) coordinates of query images from a database of images with coordinates",
        description="Retrieval (global descriptors), local matching of each query with its "
        "top --num-matched database images, fundamental-matrix verification (inlier count "
        "n_k, at least --min-inliers), then the per-axis weighted median of the verified "
        "neighbours' coordinates with weights n_k^p (optionally within the best cluster of "
        "radius --cluster-radius), or the coordinates of the best match (--estimator best). "
        "Both estimates are computed: the chosen one goes to OUTPUT, the other to "
        "OUTPUT_STEM.<estimator>.csv, and per-query details to OUTPUT_STEM.log.json. A query "
        "without a verified neighbour gets its top retrieval's coordinates and is flagged as "
        "a fallback in the log. CSVs are 'id,x,y' (id: file name with or without extension).",
        formatter_class=formatter,
    )
    p.add_argument("--db", type=Path, required=True, help="database image folder")
    p.add_argument("--db-csv", type=Path, required=True, help="database coordinates (id,x,y)")
    p.add_argument("--queries", type=Path, required=True, help="query image folder")
    p.add_argument("--output", type=Path, required=True, help="predictions CSV (id,x,y)")
    common.add_extractor_args(p, default=DEFAULT_FEATURES)
    common.add_matcher_args(p, default=DEFAULT_MATCHER, dense=True)
    add_global_args(p)
    p.add_argument("--num-matched", type=int, default=20, help="retrieved candidates per query")
    p.add_argument("--estimator", default="weighted-median", choices=["weighted-median", "best"],
                   help="estimate written to OUTPUT")
    p.add_argument("--min-inliers", type=int, default=15, help="inliers for a verified candidate")
    p.add_argument("--weight-power", type=float, default=1.0, help="p of the weights n_k^p")
    p.add_argument("--cluster-radius", type=float, default=0.0,
                   help="> 0: weighted median within the heaviest cluster of this radius "
                   "(map units)")
    p.add_argument("--ransac-th-px", type=float, default=2.0,
                   help="epipolar threshold of the fundamental-matrix verification")
    p.add_argument("--work", type=Path, default=None,
                   help="cache folder (default: OUTPUT_STEM-work next to OUTPUT)")
    p.set_defaults(func=run)


def run(args) -> int:
    import json

    from ..loc.xy import run_localize_xy

    conf = {"num_matched": args.num_matched, "estimator": args.estimator,
            "min_inliers": args.min_inliers, "weight_power": args.weight_power,
            "cluster_radius": args.cluster_radius, "ransac_th_px": args.ransac_th_px,
            "index": args.index}
    out = run_localize_xy(
        args.db, args.db_csv, args.queries, args.output, args.work, args.features, args.matcher,
        common.extractor_conf(args), common.matcher_conf(args), args.global_name,
        common.parse_kv(args.global_conf), conf)
    log = json.loads(out.with_name(f"{out.stem}.log.json").read_text(encoding="utf-8"))
    return 1 if log["summary"]["num_failed"] else 0
