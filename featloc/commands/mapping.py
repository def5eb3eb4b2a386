"""featloc map (--kapture DIR | --colmap MODEL_DIR --images DIR | --images DIR) --output MAP_DIR"""

from __future__ import annotations

from pathlib import Path

from ..loc import DEFAULT_FEATURES, DEFAULT_MATCHER
from . import common
from .retrieve import add_global_args


def add_parser(sub, formatter):
    p = sub.add_parser(
        "map",
        help="build a 3D map of database images (triangulation with known poses, or SfM)",
        description="With known poses (--kapture, rigs included, or --colmap with --images): "
        "mapping pairs (pose neighbours by default), local features and matches, matches "
        "checked against the known epipolar geometry, COLMAP triangulation with the poses "
        "fixed. With --images alone: retrieval pairs, COLMAP verification and incremental "
        "SfM. Writes MAP_DIR/map.json, MAP_DIR/model (COLMAP text) and the caches; a re-run "
        "reuses stored features and matches.",
        formatter_class=formatter,
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument("--kapture", type=Path, help="kapture folder with poses")
    src.add_argument("--colmap", type=Path, help="COLMAP text model with poses (needs --images)")
    p.add_argument("--images", type=Path, default=None,
                   help="database image folder (alone: poses unknown, incremental SfM)")
    p.add_argument("--output", type=Path, required=True, help="map folder")
    common.add_extractor_args(p, default=DEFAULT_FEATURES)
    common.add_matcher_args(p, default=DEFAULT_MATCHER, dense=True)
    add_global_args(p)
    p.add_argument("--mapping-pairs", default="poses", choices=["poses", "retrieval", "exhaustive"],
                   help="how database images are paired (poses need known poses)")
    p.add_argument("--num-pairs", type=int, default=20, help="mapping pairs per image")
    p.add_argument("--verbose-colmap", action="store_true", help="show COLMAP's own log")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..loc.sfm import run_map

    if args.colmap is not None and args.images is None:
        raise ValueError("--colmap needs --images (the folder of the model's images)")
    if args.kapture is None and args.colmap is None and args.images is None:
        raise ValueError("give --kapture, --colmap with --images, or --images")
    run_map(args.output, image_dir=args.images, colmap_model=args.colmap, kapture=args.kapture,
            features=args.features, matcher=args.matcher,
            extractor_conf=common.extractor_conf(args), matcher_conf=common.matcher_conf(args),
            global_name=args.global_name, global_conf=common.parse_kv(args.global_conf),
            conf={"mapping_pairs": args.mapping_pairs, "num_pairs": args.num_pairs},
            verbose=args.verbose_colmap)
    return 0
