"""End to end on a generated image pair with a known homography (seeded, asserted thresholds)."""

import numpy as np
import pytest

import featloc
from featloc.geometry import estimate_homography
from featloc.geometry.homography import homography_corner_error, warp_points


@pytest.mark.parametrize(
    "features, matcher_conf, min_matches, min_precision, max_corner_err",
    [
        ("sift", {}, 150, 0.85, 1.0),
        ("rootsift", {}, 150, 0.85, 1.0),
        ("orb", {}, 150, 0.7, 2.0),
        ("sift", {"ratio_thresh": 0.8}, 100, 0.95, 1.0),
    ],
)
def test_known_homography(warped_pair, features, matcher_conf, min_matches, min_precision,
                          max_corner_err):
    image0, image1, H = warped_pair
    extractor = featloc.load_extractor(features, max_num_keypoints=1024)
    matcher = featloc.load_matcher("nn", **matcher_conf)
    f0, f1, matches = featloc.match_pair(extractor, matcher, image0, image1)
    p0, p1 = matches.matched_points(f0, f1)
    assert len(p0) >= min_matches
    precision = np.mean(np.linalg.norm(warp_points(p0, H) - p1, axis=1) < 3)
    assert precision >= min_precision
    est = estimate_homography(p0, p1, {"threshold_px": 3.0})
    assert est.success
    h, w = image0.shape[:2]
    assert homography_corner_error(est.model, H, (w, h)) < max_corner_err


def test_resize_keeps_keypoints_in_original_pixels(warped_pair):
    image0, image1, H = warped_pair
    extractor = featloc.load_extractor("sift", resize_max=160)
    f0, f1, matches = featloc.match_pair(extractor, featloc.load_matcher("nn"), image0, image1)
    assert f0.image_size == (image0.shape[1], image0.shape[0])
    p0, p1 = matches.matched_points(f0, f1)
    err = np.linalg.norm(warp_points(p0, H) - p1, axis=1)
    assert np.median(err) < 2.0  # coordinates consistent with the full-size H


def test_input_formats_give_consistent_features(scene_image):
    sift = featloc.load_extractor("sift")
    ref = sift.extract(scene_image)
    import cv2

    gray = cv2.cvtColor(scene_image, cv2.COLOR_RGB2GRAY)
    assert np.array_equal(sift.extract(gray).keypoints, ref.keypoints)
    rgba = np.dstack([scene_image, np.full(gray.shape, 255, np.uint8)])
    assert np.array_equal(sift.extract(rgba).keypoints, ref.keypoints)
    assert np.array_equal(sift.extract(scene_image.astype(np.uint16) * 257).keypoints, ref.keypoints)
    f = sift.extract(np.full((64, 64), 128, np.uint8))  # no texture: empty but well-formed
    assert len(f) == 0 and f.descriptors.shape == (0, 128)
