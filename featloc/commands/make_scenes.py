"""featloc make-scenes --textures DIR --output DIR [--kind room|gallery|facade] [--seed S]"""

from __future__ import annotations

from pathlib import Path

# Mirrors featloc.synth.scenes (which validates them again); not imported here so that
# building the parser stays light.
KINDS = ("room", "gallery", "facade")
PATHS = ("db", "query")
LIGHTINGS = ("neutral", "evening", "bright", "random")


def add_parser(sub, formatter):
    p = sub.add_parser(
        "make-scenes",
        help="render a synthetic posed image set with exact depth (room, gallery, facade)",
        description="Build a piecewise-planar textured scene from a folder of images and "
        "render it from a camera path, with exact depth maps. Writes images/, depth/ "
        "(float32 .npy, metres), sparse/ (COLMAP text model), pairs_gt.txt (SuperGlue pairs "
        "with ground truth, for `featloc benchmark pose`), pairs_info.json, kapture/ and "
        "scene.json. The geometry depends only on --kind and --seed, so a query set of the "
        "same scene is rendered with --path query (and another --lighting).",
        formatter_class=formatter,
    )
    p.add_argument("--textures", type=Path, required=True, help="folder of texture images")
    p.add_argument("--output", type=Path, required=True, help="output folder")
    p.add_argument("--kind", default="gallery", choices=KINDS, help="scene type")
    p.add_argument("--seed", type=int, default=0, help="scene seed (layout and textures)")
    p.add_argument("--num-views", type=int, default=100, help="number of rendered views")
    p.add_argument("--width", type=int, default=640, help="image width (px)")
    p.add_argument("--height", type=int, default=480, help="image height (px)")
    p.add_argument("--hfov", type=float, default=65.0, help="horizontal field of view (deg)")
    p.add_argument("--path", default="db", choices=PATHS, help="camera path")
    p.add_argument("--lighting", default="neutral", choices=LIGHTINGS,
                   help="scene lights and camera response (random: per view)")
    p.add_argument("--noise", type=float, default=1.0, help="sensor noise std (8-bit levels)")
    p.add_argument("--num-pairs", type=int, default=300,
                   help="pairs in pairs_gt.txt, balanced over the overlap bins")
    p.add_argument("--format", default="png", choices=["png", "jpg"], help="image format")
    p.add_argument("--no-kapture", action="store_true", help="skip the kapture copy")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..synth.scenes import make_scenes

    make_scenes(
        args.textures, args.output, kind=args.kind, seed=args.seed, num_views=args.num_views,
        width=args.width, height=args.height, hfov_deg=args.hfov, path=args.path,
        lighting=args.lighting, noise_std=args.noise, num_pairs=args.num_pairs,
        image_format=args.format, write_kapture=not args.no_kapture,
    )
    return 0
