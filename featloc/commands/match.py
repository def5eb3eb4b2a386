"""featloc match --features FEATS.h5 --pairs PAIRS.txt --matcher NAME --output MATCHES.h5"""

from __future__ import annotations

from pathlib import Path

from . import common


def add_parser(sub, formatter):
    p = sub.add_parser(
        "match",
        help="match the features of every pair of a pairs file",
        description="Match each pair listed in PAIRS (one 'name0 name1' per line) and store "
        "matches0/matching_scores0 per pair in an HDF5 file (hloc layout). Pairs already "
        "stored, in either order, are skipped.",
        formatter_class=formatter,
    )
    p.add_argument("--features", type=Path, required=True, help="feature file (.h5)")
    p.add_argument("--pairs", type=Path, required=True, help="pairs file")
    p.add_argument("--output", type=Path, required=True, help="match file (.h5) to write")
    common.add_matcher_args(p)
    p.add_argument("--overwrite", action="store_true", help="recompute pairs already stored")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..match import run_match

    report = run_match(args.features, args.pairs, args.output, args.matcher,
                       common.matcher_conf(args), overwrite=args.overwrite)
    return 0 if report.ok else 1
