"""featloc localize --map MAP_DIR (--kapture-queries DIR | --queries LIST --query-images DIR)
--output poses.txt"""

from __future__ import annotations

from pathlib import Path


def add_parser(sub, formatter):
    p = sub.add_parser(
        "localize",
        help="6-DoF poses of query images against a map (retrieval, matching, PnP)",
        description="Per query: retrieve the top --num-loc database images of the map, match "
        "them with the map's features and matcher, gather 2D-3D correspondences and solve the "
        "absolute pose (P3P LO-RANSAC, --ransac-th-px, then refinement) with the query's "
        "intrinsics. Writes 'name qw qx qy qz tx ty tz' (cam_from_world) per localized "
        "query; unlocalized queries are '# unlocalized: name (reason)' comment lines and are "
        "listed in OUTPUT_STEM.log.json. Queries: a kapture folder (cameras in sensors.txt, "
        "images under sensors/records_data) or hloc's query list 'name MODEL w h params...' "
        "(COLMAP convention) with --query-images.",
        formatter_class=formatter,
    )
    p.add_argument("--map", type=Path, required=True, help="map folder from `featloc map`")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--kapture-queries", type=Path, help="kapture folder of the queries")
    src.add_argument("--queries", type=Path, help="query list with intrinsics")
    p.add_argument("--query-images", type=Path, default=None, help="image folder of --queries")
    p.add_argument("--output", type=Path, required=True, help="poses file to write")
    p.add_argument("--num-loc", type=int, default=10, help="retrieved database images per query")
    p.add_argument("--ransac-th-px", type=float, default=12.0, help="PnP RANSAC threshold (px)")
    p.add_argument("--min-inliers", type=int, default=12, help="PnP inliers to accept a pose")
    p.add_argument("--fallback", default="none", choices=["none", "retrieval"],
                   help="retrieval: unlocalized queries get the top retrieved image's pose "
                   "(flagged in the log and counted separately)")
    p.add_argument("--index", default="flat", choices=["flat", "ivf", "hnsw"], help="faiss index")
    p.add_argument("--assign-px", type=float, default=2.0,
                   help="maps of a detector-free matcher: a database point takes the nearest map "
                   "keypoint within this radius (px)")
    p.add_argument("--refine-matches", action="store_true",
                   help="move each matched query point to sub-pixel accuracy by patch alignment "
                   "with its database point before PnP (featloc.matching.refine; maps of local "
                   "features; needs the map's database images)")
    p.add_argument("--work", type=Path, default=None,
                   help="cache folder (default: OUTPUT_STEM-work next to OUTPUT)")
    p.add_argument("--log", type=Path, default=None, help="JSON log (default: OUTPUT_STEM.log.json)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..loc.localize import read_query_cameras, run_localize

    if args.queries is not None and args.query_images is None:
        raise ValueError("--queries needs --query-images (the folder of the listed images)")
    query_dir, cameras = read_query_cameras(args.kapture_queries, args.queries, args.query_images)
    conf = {"num_loc": args.num_loc, "ransac_max_error_px": args.ransac_th_px,
            "min_inliers": args.min_inliers, "fallback": args.fallback, "index": args.index,
            "assign_px": args.assign_px, "refine_matches": args.refine_matches}
    _, results = run_localize(args.map, query_dir, cameras, args.output, args.work, conf, args.log)
    return 1 if any(r.info.get("failed") for r in results.values()) else 0
