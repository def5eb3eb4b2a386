"""featloc show IMG0 IMG1 [...]: a picture of the matches of image pairs."""

from __future__ import annotations

import logging
from pathlib import Path

from . import common

logger = logging.getLogger(__name__)


def add_parser(sub, formatter):
    p = sub.add_parser(
        "show",
        help="draw the matches of image pairs into PNG files",
        description="Extract, match and verify IMG0 against each following image, and write a "
        "PNG with the matches drawn: inliers of the estimated model in green, outliers in red.",
        formatter_class=formatter,
    )
    p.add_argument("images", nargs="+", type=Path, help="IMG0 IMG1 [IMG2 ...]: IMG0 is paired with each other image")
    p.add_argument("--output", type=Path, default=Path("matches.png"),
                   help="PNG to write (with several pairs: NAME-1.png, NAME-2.png, ...)")
    common.add_extractor_args(p)
    common.add_matcher_args(p, dense=True)
    p.add_argument("--model", choices=["homography", "fundamental", "none"], default="fundamental",
                   help="geometric model used to split inliers from outliers")
    common.add_ransac_args(p, threshold_px=3.0)
    p.set_defaults(func=run)


def run(args) -> int:
    from .. import load_dense_matcher, load_extractor, load_matcher
    from ..geometry import estimate_fundamental, estimate_homography
    from ..io.images import read_image
    from ..match_dense import is_dense_matcher
    from ..viz import save_matches

    if len(args.images) < 2:
        raise ValueError("show needs at least two images")
    dense = is_dense_matcher(args.matcher)
    if dense:  # detector-free: matched points straight from the image pair
        matcher = load_dense_matcher(args.matcher, **common.matcher_conf(args))
        label = args.matcher
    else:
        extractor = load_extractor(args.features, **common.extractor_conf(args))
        matcher = load_matcher(args.matcher, **common.matcher_conf(args))
        label = f"{args.features} + {args.matcher}"
    image0 = read_image(args.images[0])
    features0 = None if dense else extractor.extract(image0)
    outputs = []
    for k, path1 in enumerate(args.images[1:], 1):
        image1 = read_image(path1)
        if dense:
            points = matcher.match_points(image0, image1)
            p0, p1, kpts0, kpts1 = points["keypoints0"], points["keypoints1"], None, None
        else:
            features1 = extractor.extract(image1)
            matches = matcher.match(features0, features1)
            p0, p1 = matches.matched_points(features0, features1)
            kpts0, kpts1 = features0.keypoints, features1.keypoints
        inliers, text = None, [f"{label}: {len(p0)} matches"]
        if args.model != "none":
            estimate = (estimate_homography if args.model == "homography" else estimate_fundamental)(
                p0, p1, common.ransac_conf(args))
            if estimate.success:
                inliers = estimate.inliers
                text.append(f"{args.model}: {estimate.num_inliers} inliers")
            else:
                text.append(f"{args.model}: failed ({estimate.info.get('reason')})")
        output = args.output if len(args.images) == 2 else args.output.with_name(
            f"{args.output.stem}-{k}{args.output.suffix}")
        save_matches(output, image0, image1, p0, p1, inliers, kpts0, kpts1, text)
        logger.info("%s", " | ".join(text))
        logger.info("wrote %s", output)
        outputs.append(output)
    return 0
