"""Sub-pixel match refinement (featloc.matching.refine)."""

import cv2
import numpy as np
import pytest

from featloc.config import ConfigError
from featloc.matching.refine import RefineConf, refine_conf, refine_matches


def _texture(seed=0, size=(240, 320)):
    rng = np.random.default_rng(seed)
    noise = rng.normal(0, 1, size).astype(np.float32)
    smooth = cv2.GaussianBlur(noise, (0, 0), 2.0)
    smooth = (smooth - smooth.min()) / (smooth.max() - smooth.min())
    return (40 + 170 * smooth).astype(np.uint8)


def _warped_pair(angle_deg=12.0, scale=1.15, shift=(3.3, -2.7), gain=1.2, bias=-15.0):
    """Image 1 = an affine warp of image 0 with a brightness change; returns both images and
    the 2x3 map from image-0 to image-1 pixels."""
    image0 = _texture()
    h, w = image0.shape
    M = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), angle_deg, scale)
    M[:, 2] += shift
    warped = cv2.warpAffine(image0.astype(np.float32), M, (w, h), flags=cv2.INTER_CUBIC)
    image1 = np.clip(gain * warped + bias, 0, 255).astype(np.uint8)
    return image0, image1, M


def _grid_points(M, step=20):
    xs, ys = np.meshgrid(np.arange(110, 211, step), np.arange(70, 171, step))
    p0 = np.stack([xs.ravel(), ys.ravel()], 1).astype(np.float32) + 0.37
    truth = p0 @ M[:, :2].T + M[:, 2]
    return p0, truth.astype(np.float32)


def test_refine_recovers_subpixel_points_under_affine_and_lighting_change():
    image0, image1, M = _warped_pair()
    p0, truth = _grid_points(M)
    rng = np.random.default_rng(1)
    start = truth + rng.uniform(-1.5, 1.5, truth.shape).astype(np.float32)
    out = refine_matches(image0, image1, p0, start)
    before = np.linalg.norm(start - truth, axis=1)
    after = np.linalg.norm(out.points1 - truth, axis=1)
    assert np.median(before) > 0.7
    assert out.refined.mean() > 0.9
    assert np.median(after[out.refined]) < 0.05
    assert np.all(out.ncc[out.refined] >= RefineConf().min_ncc)
    # rejected points keep their input position exactly
    assert np.array_equal(out.points1[~out.refined], start[~out.refined])


def test_affine_model_beats_translation_only_under_rotation():
    image0, image1, M = _warped_pair(angle_deg=20.0, scale=1.25, gain=1.0, bias=0.0)
    p0, truth = _grid_points(M)
    start = truth + np.float32([0.8, -0.6])
    start_at_identity = {"init": "identity", "min_ncc": -1.0}
    affine = refine_matches(image0, image1, p0, start, start_at_identity)
    translation = refine_matches(image0, image1, p0, start,
                                 {**start_at_identity, "affine": False, "photometric": False})
    err_affine = np.median(np.linalg.norm(affine.points1 - truth, axis=1))
    err_translation = np.median(np.linalg.norm(translation.points1 - truth, axis=1))
    assert err_affine < 0.05
    assert err_translation > 2 * err_affine


def test_wrong_matches_are_rejected_and_left_unchanged():
    image0, image1, M = _warped_pair()
    p0, truth = _grid_points(M)
    rng = np.random.default_rng(2)
    wrong = truth[rng.permutation(len(truth))]  # partners of other points, 20 px or more away
    far = np.linalg.norm(wrong - truth, axis=1) > 15
    out = refine_matches(image0, image1, p0[far], wrong[far], {"drop_failed": False})
    assert out.refined.mean() < 0.1
    assert np.array_equal(out.points1[~out.refined], wrong[far][~out.refined])
    assert out.keep.all()  # kept unless asked otherwise
    # drop_failed: failed alignments flag wrong matches, correct ones stay
    mixed0, mixed1 = np.concatenate([p0[far], p0]), np.concatenate([wrong[far], truth + 1.0])
    dropped = refine_matches(image0, image1, mixed0, mixed1, {"drop_failed": True,
                                                              "init": "identity"})
    n = far.sum()
    assert (~dropped.keep[:n]).mean() > 0.9 and dropped.keep[n:].all()


def test_edge_cases():
    image0, image1, M = _warped_pair()
    empty = refine_matches(image0, image1, np.zeros((0, 2)), np.zeros((0, 2)))
    assert empty.points1.shape == (0, 2) and empty.refined.shape == (0,)
    assert empty.ncc.shape == (0,)
    # a template that leaves image 0 and a textureless image are skipped, not guessed
    border = refine_matches(image0, image1, np.float32([[2.0, 2.0]]), np.float32([[5.0, 5.0]]))
    assert not border.refined.any() and (border.ncc == -1).all()
    flat = np.full_like(image0, 128)
    p0, truth = _grid_points(M)
    out = refine_matches(flat, flat, p0, truth + 0.5)
    assert not out.refined.any()
    assert np.array_equal(out.points1, truth + 0.5)
    # colour and float input give the same result as grey uint8
    rgb = refine_matches(np.dstack([image0] * 3), image1.astype(np.float32) / 255, p0, truth + 0.5)
    grey = refine_matches(image0, image1, p0, truth + 0.5)
    np.testing.assert_allclose(rgb.points1, grey.points1, atol=1e-3)
    # degenerate input (every partner at one point, partners far outside image 1) is
    # rejected, not an exception
    for partners in (np.tile(truth[:1], (len(truth), 1)), truth + 1e4):
        odd = refine_matches(image0, image1, p0[1:], partners[1:], {"init": "neighbours"})
        assert not odd.refined.any() and np.array_equal(odd.points1, partners[1:])
    with pytest.raises(ValueError, match="point counts differ"):
        refine_matches(image0, image1, np.zeros((3, 2)), np.zeros((2, 2)))


def test_conf_validation():
    assert refine_conf({"radius": 4}).radius == 4
    with pytest.raises(ConfigError, match="valid keys"):
        refine_conf({"raduis": 4})
    with pytest.raises(ValueError, match="radius"):
        RefineConf(radius=0)


def test_neighbour_start_handles_a_large_scale_and_rotation_change():
    """Under a 1.7x zoom and 35 degrees, the identity start fails where the similarity shown
    by the neighbouring matches (a fifth of them wrong) converges."""
    image0, image1, M = _warped_pair(angle_deg=35.0, scale=1.7, shift=(0, 0))
    p0, truth = _grid_points(M, step=8)
    rng = np.random.default_rng(3)
    start = truth + rng.uniform(-1.5, 1.5, truth.shape).astype(np.float32)
    wrong = rng.random(len(start)) < 0.2
    start[wrong] += rng.uniform(-40, 40, (wrong.sum(), 2)).astype(np.float32)
    good = ~wrong & (np.abs(start - 160) < 140).all(1)
    plain = refine_matches(image0, image1, p0, start, {"init": "identity"})
    seeded = refine_matches(image0, image1, p0, start, {"init": "neighbours"})
    err = np.linalg.norm(seeded.points1 - truth, axis=1)
    assert seeded.refined[good].mean() > 0.8 > plain.refined[good].mean() + 0.2
    assert np.median(err[good & seeded.refined]) < 0.05


def test_neighbour_similarity():
    """The start map is the neighbours' scale and rotation, and the identity where too few
    neighbours are far enough apart (no warning for them)."""
    import warnings

    from featloc.matching.refine import _similarity_from_neighbours

    rng = np.random.default_rng(0)
    p0 = rng.uniform(0, 200, (40, 2))
    R = 1.5 * np.array([[np.cos(0.3), -np.sin(0.3)], [np.sin(0.3), np.cos(0.3)]])
    A = _similarity_from_neighbours(p0, p0 @ R.T + 7, 8)
    np.testing.assert_allclose(A, np.broadcast_to(R, A.shape), atol=1e-5)
    clustered = np.zeros((6, 2))  # no neighbour 4 px away or more
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        A = _similarity_from_neighbours(clustered, clustered + 1, 8)
    np.testing.assert_allclose(A, np.broadcast_to(np.eye(2), (6, 2, 2)))


def test_inverse_falls_back_on_singular_systems():
    from featloc.matching.refine import _inverse

    H = np.stack([np.eye(3) * 2, np.diag([1.0, 1.0, 0.0])])
    inv = _inverse(H)
    np.testing.assert_allclose(inv[0], np.eye(3) / 2)
    np.testing.assert_allclose(inv[1], np.diag([1.0, 1.0, 0.0]))
