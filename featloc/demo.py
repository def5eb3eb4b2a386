"""The end-to-end demo on images the project generates itself (no downloads, no data set):
generated scenes -> an HPatches-format set -> extract, match, estimate with SIFT, RootSIFT
and ORB -> a benchmark table and a picture of matches."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from .io.images import write_image
from .synth.textures import random_scene_image

logger = logging.getLogger(__name__)

DEMO_FEATURES = ("sift", "rootsift", "orb")


def run_demo(output: str | Path, num_images: int = 6, seed: int = 0,
             features: tuple[str, ...] = DEMO_FEATURES) -> tuple[str, Path]:
    """Run the demo into `output`; returns the markdown table and the match picture path."""
    from . import load_extractor, load_matcher
    from .eval.hpatches import (
        list_pairs,
        run_homography_benchmark,
        summaries_to_markdown,
    )
    from .geometry import estimate_homography
    from .geometry.homography import homography_corner_error
    from .io.images import read_image
    from .synth.hpatches import make_hpatches
    from .viz import save_matches

    output = Path(output)
    source = output / "source"
    rng = np.random.default_rng(seed)
    for i in range(num_images):
        path = source / f"scene{i:02d}.png"
        image = random_scene_image(rng, 480, 640)  # drawn even if the file exists: same images
        if not path.exists():
            write_image(path, image)
    data = make_hpatches(source, output / "hpatches", seed=seed)
    summaries = []
    for name in features:
        logger.info("benchmark: %s + mutual NN", name)
        summaries.append(run_homography_benchmark(data, output / "benchmark" / name, name, "nn"))
    table = summaries_to_markdown(summaries)
    (output / "summary.md").write_text(table)

    # A picture of the hardest viewpoint pair with SIFT, inliers of the estimated homography.
    pair = [p for p in list_pairs(data) if p.k == 6 and p.split == "v"][0]
    image0, image1 = read_image(data / pair.name0), read_image(data / pair.name1)
    extractor, matcher = load_extractor("sift"), load_matcher("nn")
    f0, f1 = extractor.extract(image0), extractor.extract(image1)
    p0, p1 = matcher.match(f0, f1).matched_points(f0, f1)
    est = estimate_homography(p0, p1)
    err = homography_corner_error(est.model, pair.H, f0.image_size) if est.success else float("inf")
    picture = save_matches(
        output / "matches.png", image0, image1, p0, p1, est.inliers if est.success else None,
        text=[f"{pair.name0} - {pair.name1}: SIFT + mutual NN, {len(p0)} matches",
              f"homography: {est.num_inliers} inliers, corner error {err:.2f} px"],
    )
    return table, picture
