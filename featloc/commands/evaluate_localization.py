"""featloc evaluate-localization --mode xy|pose --predictions FILE --ground-truth PATH"""

from __future__ import annotations

import sys
from pathlib import Path


def add_parser(sub, formatter):
    p = sub.add_parser(
        "evaluate-localization",
        help="score localization results: (x, y) MAE or 6-DoF recall at (0.25 m, 2 deg), "
        "(0.5 m, 5 deg), (5 m, 10 deg)",
        description="--mode xy: predictions and ground truth are 'id,x,y' CSVs; MAE = mean of "
        "|dx| + |dy|. --mode pose: predictions are 'name qw qx qy qz tx ty tz' lines "
        "(cam_from_world); ground truth is such a file, a COLMAP text model folder or a kapture "
        "folder. Queries without a prediction count as failures. Prints a table; --output "
        "writes the summary and per-query errors as JSON.",
        formatter_class=formatter,
    )
    p.add_argument("--mode", required=True, choices=["xy", "pose"], help="what is evaluated")
    p.add_argument("--predictions", type=Path, required=True, help="predictions file")
    p.add_argument("--ground-truth", type=Path, required=True, help="ground truth")
    p.add_argument("--output", type=Path, default=None, help="JSON summary to write")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..eval.localization import evaluate_poses, evaluate_xy, localization_markdown
    from ..eval.report import write_json

    if args.mode == "xy":
        summary = evaluate_xy(args.predictions, args.ground_truth)
    else:
        summary = evaluate_poses(args.predictions, args.ground_truth)
    if args.output is not None:
        write_json(args.output, summary)
    sys.stdout.write(localization_markdown(summary))
    return 0
