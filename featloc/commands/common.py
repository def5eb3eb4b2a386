"""Arguments shared by several subcommands."""

from __future__ import annotations

import argparse

from ..config import ConfigError


def parse_kv(items: list[str] | None) -> dict:
    """KEY=VALUE strings to a dict (values parsed as YAML scalars: 0.8, true, null, text)."""
    import yaml

    out = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"expected KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        out[key.strip()] = yaml.safe_load(value)
    return out


def add_extractor_args(
    p: argparse.ArgumentParser, default: str = "sift", max_keypoints: int | None = None
) -> None:
    from ..config import available

    p.add_argument("--features", default=default,
                   help=f"extractor name: {', '.join(available('extractor'))}")
    p.add_argument("--max-keypoints", type=int, default=max_keypoints,
                   help="keep at most N keypoints (None: the extractor's own default)")
    p.add_argument("--resize-max", type=int, default=None,
                   help="resize so the longer side is at most PX before extraction "
                   "(keypoints are still returned in original pixels; None: no resize)")
    p.add_argument("--extractor-conf", nargs="*", metavar="KEY=VALUE", default=[],
                   help="other extractor options, e.g. rootsift=true")


def extractor_conf(args) -> dict:
    conf = parse_kv(args.extractor_conf)
    if args.max_keypoints is not None:
        conf["max_num_keypoints"] = args.max_keypoints
    if args.resize_max is not None:
        conf["resize_max"] = args.resize_max
    return conf


def add_matcher_args(p: argparse.ArgumentParser, default: str = "nn",
                     dense: bool = False) -> None:
    """--matcher and --matcher-conf; `dense`: the command also takes the detector-free
    matchers (listed in the help)."""
    from ..config import available

    names = ", ".join(available("matcher"))
    if dense:
        names += f"; detector-free: {', '.join(available('dense'))}"
    p.add_argument("--matcher", default=default, help=f"matcher name: {names}")
    p.add_argument("--matcher-conf", nargs="*", metavar="KEY=VALUE", default=[],
                   help="matcher options, e.g. ratio_thresh=0.8 mutual_check=false")


def matcher_conf(args) -> dict:
    return parse_kv(args.matcher_conf)


def add_ransac_args(p: argparse.ArgumentParser, threshold_px: float = 3.0) -> None:
    p.add_argument("--ransac-backend", default="opencv", choices=["opencv", "poselib"],
                   help="robust estimator backend")
    p.add_argument("--ransac-method", default="usac_magsac",
                   help="OpenCV method (usac_magsac, usac_default, usac_accurate, ransac, lmeds)")
    p.add_argument("--ransac-th-px", type=float, default=threshold_px,
                   help="RANSAC inlier threshold in pixels")
    p.add_argument("--seed", type=int, default=0, help="RANSAC seed")


def ransac_conf(args) -> dict:
    return {"backend": args.ransac_backend, "method": args.ransac_method,
            "threshold_px": args.ransac_th_px, "seed": args.seed}


def add_refine_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--refine", action="store_true",
                   help="refine each match to sub-pixel accuracy by local affine patch "
                   "alignment before estimation (featloc.matching.refine; not part of the "
                   "published protocols)")
    p.add_argument("--refine-conf", nargs="*", metavar="KEY=VALUE", default=[],
                   help="refinement options (imply --refine), e.g. radius=6 min_ncc=0.95")


def refine_conf(args) -> dict | None:
    """None: no refinement; otherwise the `RefineConf` overrides."""
    conf = parse_kv(args.refine_conf)
    return conf if args.refine or conf else None
