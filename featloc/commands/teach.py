"""featloc teach --teacher sam|classical [--weights DIR] --images DIR --output DIR"""

from __future__ import annotations

from pathlib import Path

from ..config import ConfigError
from . import common


def add_parser(sub, formatter):
    p = sub.add_parser(
        "teach",
        help="precompute training-time teacher targets (groups, edges, embeddings) of a folder",
        description="Run a teacher on every image below --images (recursively) and store its "
        "targets in --output in the layout the `masks` teacher reads: "
        "segments/<name>.png (16-bit group ids, 0 = no group), edges/<name>.png (8-bit, "
        "255 * edge) and, for sam, embeddings/<name>.npy (float16 [C, h, w]). Images already "
        "done are skipped, so an interrupted run resumes; bad images are reported and skipped "
        "(exit status 1).",
        formatter_class=formatter,
    )
    p.add_argument(
        "--teacher",
        choices=["sam", "classical"],
        default="sam",
        help="sam: Segment Anything from --weights; classical: image regions, no weights",
    )
    p.add_argument(
        "--weights",
        type=Path,
        default=None,
        help="local SAM folder (config.json + model.safetensors); nothing is downloaded",
    )
    p.add_argument(
        "--images",
        type=Path,
        required=True,
        help="folder of images (searched recursively)",
    )
    p.add_argument("--output", type=Path, required=True, help="cache folder to write")
    p.add_argument(
        "--points-per-side",
        type=int,
        default=None,
        help="sam: prompt grid of N x N points (None: the teacher's default, 32)",
    )
    p.add_argument(
        "--device", default=None, help="sam: cpu, cuda, cuda:N or auto (None: auto)"
    )
    p.add_argument(
        "--teacher-conf",
        nargs="*",
        metavar="KEY=VALUE",
        default=[],
        help="other teacher options, e.g. pred_iou_thresh=0.86 or method=slic",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="recompute every image (also needed to change the configuration of a cache)",
    )
    p.set_defaults(func=run)


def run(args) -> int:
    from ..teachers.cache import run_teach

    conf = common.parse_kv(args.teacher_conf)
    sam_only = {
        "weights": args.weights,
        "points_per_side": args.points_per_side,
        "device": args.device,
    }
    for key, value in sam_only.items():
        if value is None:
            continue
        if args.teacher != "sam":
            raise ConfigError(f"--{key.replace('_', '-')} is only for --teacher sam")
        conf[key] = str(value) if key == "weights" else value
    if args.teacher == "sam" and "weights" not in conf:
        raise ConfigError("--teacher sam needs --weights (a local SAM folder)")
    report = run_teach(
        args.images, args.output, args.teacher, conf, overwrite=args.overwrite
    )
    return 0 if report.ok else 1
