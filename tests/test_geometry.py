import numpy as np
import pytest

from featloc.geometry import (
    Pose,
    estimate_fundamental,
    estimate_homography,
    estimate_relative_pose,
)
from featloc.geometry.homography import (
    homography_corner_error,
    homography_jacobian,
    scale_homography,
    warp_points,
)
from featloc.geometry.metrics import error_auc, relative_pose_error
from featloc.geometry.pose import quaternion_to_rotation, rotation_to_quaternion

H_TRUE = np.array([[1.05, 0.04, 12.0], [-0.03, 0.97, -7.0], [1e-4, -5e-5, 1.0]])


def _noisy_homography_data(rng, n=300, outliers=0.3, noise=0.3):
    p0 = rng.uniform([0, 0], [640, 480], (n, 2))
    p1 = warp_points(p0, H_TRUE) + rng.normal(0, noise, (n, 2))
    bad = rng.random(n) < outliers
    p1[bad] = rng.uniform([0, 0], [640, 480], (bad.sum(), 2))
    return p0, p1, ~bad


def test_warp_roundtrip(rng):
    p = rng.uniform(0, 500, (100, 2))
    back = warp_points(warp_points(p, H_TRUE), np.linalg.inv(H_TRUE))
    assert np.abs(back - p).max() < 1e-9


def test_corner_error_and_scaling():
    assert homography_corner_error(H_TRUE, H_TRUE, (640, 480)) == 0
    shifted = np.array([[1, 0, 2.0], [0, 1, 0], [0, 0, 1]]) @ H_TRUE
    assert homography_corner_error(shifted, H_TRUE, (640, 480)) == pytest.approx(2.0)
    # scaling both images by 1/2: points map consistently under the pixel-centre rule
    Hs = scale_homography(H_TRUE, (0.5, 0.5), (0.5, 0.5))
    p = np.array([[100.0, 50.0]])
    ps = (p + 0.5) * 0.5 - 0.5
    assert np.allclose(warp_points(ps, Hs), (warp_points(p, H_TRUE) + 0.5) * 0.5 - 0.5)


@pytest.mark.parametrize("backend", ["opencv", "poselib"])
def test_homography_estimation_with_outliers(rng, backend):
    p0, p1, good = _noisy_homography_data(rng)
    est = estimate_homography(p0, p1, {"backend": backend, "threshold_px": 2.0})
    assert est.success
    assert homography_corner_error(est.model, H_TRUE, (640, 480)) < 1.0
    assert (est.inliers == good).mean() > 0.97


@pytest.mark.parametrize("backend", ["opencv", "poselib"])
def test_estimators_are_seeded(rng, backend):
    p0, p1, _ = _noisy_homography_data(rng, outliers=0.5, noise=1.0)
    a = estimate_homography(p0, p1, {"backend": backend, "seed": 3})
    b = estimate_homography(p0, p1, {"backend": backend, "seed": 3})
    assert np.array_equal(a.model, b.model) and np.array_equal(a.inliers, b.inliers)


@pytest.mark.parametrize("backend", ["opencv", "poselib"])
def test_failures_are_results_not_exceptions(backend):
    conf = {"backend": backend}
    few = estimate_homography(np.zeros((3, 2)), np.zeros((3, 2)), conf)
    assert not few.success and few.inliers.shape == (3,) and np.array_equal(few.model, np.eye(3))
    same = np.ones((50, 2))  # every point identical: degenerate
    assert not estimate_homography(same, same, conf).success
    nan = np.full((20, 2), np.nan)
    assert not estimate_fundamental(nan, nan, conf).success
    K = np.diag([500.0, 500.0, 1.0])
    rel = estimate_relative_pose(np.zeros((4, 2)), np.zeros((4, 2)), K, K, conf)
    assert not rel.success and isinstance(rel.model, Pose)


def test_threshold_names_carry_units():
    with pytest.raises(ValueError, match="threshold_px"):
        estimate_homography(np.zeros((5, 2)), np.zeros((5, 2)), {"threshold": 2})
    with pytest.raises(ValueError, match="backend"):
        estimate_homography(np.zeros((5, 2)), np.zeros((5, 2)), {"backend": "magic"})


def _two_view(rng, n=300, outliers=0.2, noise=0.5):
    X = rng.uniform([-2, -2, 4], [2, 2, 8], (n, 3))
    K0 = np.array([[500.0, 0, 320], [0, 500, 240], [0, 0, 1]])
    K1 = np.array([[600.0, 0, 310], [0, 600, 250], [0, 0, 1]])
    T = Pose(quaternion_to_rotation([1, 0.05, 0.1, 0.02]), [0.5, 0.1, 0.05])

    def project(points, K):
        x = points @ K.T
        return x[:, :2] / x[:, 2:]

    p0 = project(X, K0) + rng.normal(0, noise, (n, 2))
    p1 = project(T.transform(X), K1) + rng.normal(0, noise, (n, 2))
    bad = rng.random(n) < outliers
    p1[bad] = rng.uniform([0, 0], [640, 480], (bad.sum(), 2))
    return p0, p1, K0, K1, T


@pytest.mark.parametrize("backend, max_err_deg", [("opencv", 5.0), ("poselib", 2.0)])
def test_relative_pose_synthetic(rng, backend, max_err_deg):
    p0, p1, K0, K1, T = _two_view(rng)
    est = estimate_relative_pose(p0, p1, K0, K1, {"backend": backend, "threshold_px": 1.0})
    assert est.success
    err_R, err_t = relative_pose_error(T, est.model.R, est.model.t)
    assert max(err_R, err_t) < max_err_deg
    E = est.info["E"]
    assert E.shape == (3, 3)


def test_pose_roundtrips(rng):
    q = rng.normal(size=4)
    R = quaternion_to_rotation(q)
    q2 = rotation_to_quaternion(R)
    assert np.allclose(quaternion_to_rotation(q2), R) and q2[0] >= 0
    T = Pose(R, rng.normal(size=3))
    assert np.allclose((T.inv() @ T).matrix(), np.eye(4))
    assert np.allclose(Pose.from_matrix(T.matrix()).t, T.t)


def test_error_auc_reference_values():
    # Values of SuperGlue's pose_auc for these errors (methods.md 7.6).
    assert error_auc([1, 2, 3, 100], [5, 10, 20]) == pytest.approx([0.525, 0.6375, 0.69375], abs=1e-9)
    assert error_auc([np.inf, np.inf], [5]) == [0.0]
    assert error_auc([0, 0], [5]) == pytest.approx([1.0])


def test_homography_jacobian_matches_finite_differences():
    H = np.array([[1.1, 0.2, 5.0], [-0.1, 0.9, -3.0], [1e-3, -5e-4, 1.0]])
    points = np.array([[10.0, 20.0], [200.0, 100.0], [-30.0, 400.0]])
    eps = 1e-4
    numeric = np.stack([(warp_points(points + d, H) - warp_points(points - d, H)) / (2 * eps)
                        for d in (np.array([eps, 0.0]), np.array([0.0, eps]))], axis=2)
    np.testing.assert_allclose(homography_jacobian(H, points), numeric, rtol=1e-6, atol=1e-8)
    # an affine H has its linear part as Jacobian everywhere
    A = np.array([[2.0, 0.5, 1.0], [0.0, 3.0, 2.0], [0.0, 0.0, 1.0]])
    np.testing.assert_allclose(homography_jacobian(A, points), np.broadcast_to(A[:2, :2], (3, 2, 2)))
