"""3D geometry: poses, cameras, COLMAP/pose text formats, AUC, epipolar errors, relative-pose
accuracy, depth-based ground-truth correspondences."""

from __future__ import annotations

import numpy as np
import pytest

from featloc.geometry import estimate_relative_pose
from featloc.geometry.camera import CAMERA_MODELS, Camera, inplane_rotation
from featloc.geometry.depth import (
    gt_matches_from_pose_depth,
    project_with_depth,
    sample_depth,
)
from featloc.geometry.epipolar import (
    epipolar_errors,
    match_precision,
    sym_epipolar_error,
)
from featloc.geometry.homography import gt_matches_from_homography, warp_points
from featloc.geometry.metrics import error_auc, relative_pose_error
from featloc.geometry.pose import (
    Pose,
    is_rotation,
    quaternion_to_rotation,
    relative_pose,
    rotation_angle_deg,
    rotation_to_quaternion,
)
from featloc.io import colmap
from featloc.types import IGNORE, UNMATCHED


def random_pose(rng, rot_sigma=0.5, t_sigma=1.0) -> Pose:
    return Pose(quaternion_to_rotation(rng.normal(size=4)) if rot_sigma is None else
                _rotvec(rng.normal(0, rot_sigma, 3)), rng.normal(0, t_sigma, 3))


def _rotvec(w):
    theta = np.linalg.norm(w)
    k = w / theta
    Kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(theta) * Kx + (1 - np.cos(theta)) * Kx @ Kx


# -- poses ---------------------------------------------------------------------------------
def test_pose_inverse_compose_and_quaternions(rng):
    for _ in range(20):
        A, B = random_pose(rng, None), random_pose(rng, None)
        assert np.allclose((A.inv() @ A).matrix(), np.eye(4), atol=1e-12)
        assert np.allclose((A @ B).matrix(), A.matrix() @ B.matrix())
        X = rng.normal(size=(5, 3))
        assert np.allclose((A @ B).transform(X), A.transform(B.transform(X)))
        q = rotation_to_quaternion(A.R)
        assert q[0] >= 0 and np.isclose(np.linalg.norm(q), 1)
        assert np.allclose(quaternion_to_rotation(q), A.R, atol=1e-12)
        assert np.allclose(Pose.from_qt(A.qvec, A.t).matrix(), A.matrix(), atol=1e-12)
        assert is_rotation(A.R)
    # q and -q are the same rotation
    q = rng.normal(size=4)
    assert np.allclose(quaternion_to_rotation(q), quaternion_to_rotation(-q))
    # a 180-degree rotation (qw = 0) survives the round trip
    R = np.diag([1.0, -1.0, -1.0])
    assert np.allclose(quaternion_to_rotation(rotation_to_quaternion(R)), R)
    assert rotation_angle_deg(R) == pytest.approx(180)


def test_relative_pose_of_absolute_poses(rng):
    P0, P1 = random_pose(rng), random_pose(rng)
    T = relative_pose(P0, P1)
    X = rng.normal(size=(10, 3))
    assert np.allclose(T.transform(P0.transform(X)), P1.transform(X))
    assert np.allclose(P0.center, -P0.R.T @ P0.t)


# -- cameras --------------------------------------------------------------------------------
CAMERAS = [
    Camera("SIMPLE_PINHOLE", 640, 480, [500, 319.5, 239.5]),
    Camera("PINHOLE", 640, 480, [510, 490, 322.0, 236.0]),
    Camera("SIMPLE_RADIAL", 640, 480, [500, 319.5, 239.5, -0.08]),
    Camera("OPENCV", 640, 480, [510, 495, 321.0, 241.0, -0.12, 0.03, 0.001, -0.0015]),
]


@pytest.mark.parametrize("camera", CAMERAS, ids=[c.model for c in CAMERAS])
def test_camera_project_unproject_roundtrip(camera, rng):
    uv = rng.uniform([0, 0], [camera.width - 1, camera.height - 1], (200, 2))
    depth = rng.uniform(0.5, 20, 200)
    X = camera.unproject(uv, depth)
    assert np.allclose(X[:, 2], depth)
    assert np.abs(camera.project(X) - uv).max() < 1e-8
    rays = camera.unproject(uv)
    assert np.allclose(rays[:, 2], 1)
    assert np.abs(camera.normalized_from_image(camera.image_from_normalized(rays[:, :2])) - rays[:, :2]).max() < 1e-10
    # points behind the camera have no projection
    assert np.isnan(camera.project(np.array([[0.1, 0.2, -1.0]]))).all()


@pytest.mark.parametrize("camera", CAMERAS[2:], ids=[c.model for c in CAMERAS[2:]])
def test_distortion_matches_colmap(camera, rng):
    pytest.importorskip("pycolmap")
    from featloc.io.pycolmap_api import cam_from_img, img_from_cam

    X = np.c_[rng.uniform(-0.5, 0.5, (50, 2)), np.ones(50)] * rng.uniform(1, 5, (50, 1))
    ours = colmap.to_colmap_pixels(camera.project(X))
    theirs = img_from_cam(colmap.camera_to_colmap(camera), X)
    assert np.abs(ours - theirs).max() < 1e-8
    back = cam_from_img(colmap.camera_to_colmap(camera), theirs)
    assert np.abs(back - X[:, :2] / X[:, 2:]).max() < 1e-6


def test_camera_validation_and_K():
    with pytest.raises(ValueError):
        Camera("FISHEYE", 10, 10, [1, 2, 3])
    with pytest.raises(ValueError):
        Camera("PINHOLE", 10, 10, [1, 2, 3])
    K = np.array([[500.0, 0, 320], [0, 510, 240], [0, 0, 1]])
    cam = Camera.from_K(K, 640, 480)
    assert cam.model == "PINHOLE" and np.allclose(cam.K, K)
    assert set(CAMERA_MODELS) == {"SIMPLE_PINHOLE", "PINHOLE", "SIMPLE_RADIAL", "OPENCV"}
    assert Camera.from_fov(90, 640, 480).fx == pytest.approx(320)
    assert cam.in_image(np.array([[-0.5, 0], [-0.51, 0], [639.49, 479.49], [639.5, 0]])).tolist() == [
        True, False, True, False]


@pytest.mark.parametrize("camera", CAMERAS, ids=[c.model for c in CAMERAS])
def test_camera_scale_pixel_centre_convention(camera, rng):
    sx, sy = 0.5, 0.75
    scaled = camera.scale(sx, sy)
    assert (scaled.width, scaled.height) == (320, 360)
    X = np.c_[rng.uniform(-1, 1, (20, 2)), rng.uniform(2, 4, 20)]
    expected = (camera.project(X) + 0.5) * [sx, sy] - 0.5
    assert np.abs(scaled.project(X) - expected).max() < 1e-9
    # a SIMPLE_* model with two focal lengths becomes PINHOLE / OPENCV
    assert scaled.model in ("PINHOLE", "OPENCV")
    assert camera.scale(0.5).model == camera.model
    assert camera.resize(640, 480) == camera


@pytest.mark.parametrize("camera", CAMERAS, ids=[c.model for c in CAMERAS])
@pytest.mark.parametrize("k", [1, 2, 3])
def test_camera_rot90_matches_numpy(camera, k, rng):
    """A pixel (x, y) of the original image lands where np.rot90 puts it, and the rotated
    camera projects the rotated-frame point there."""
    w, h = camera.size
    image = np.zeros((h, w), np.int64)
    x, y = 17, 5
    image[y, x] = 1
    yy, xx = np.nonzero(np.rot90(image, k))
    X = camera.unproject(np.array([[x, y]], float), [3.0])
    R = inplane_rotation(k)
    rotated = camera.rot90(k)
    assert rotated.size == ((h, w) if k % 2 else (w, h))
    assert np.abs(rotated.project(R.transform(X)) - [xx[0], yy[0]]).max() < 1e-8


# -- COLMAP text models ----------------------------------------------------------------------
def test_colmap_pixel_shift_lives_in_colmap_module():
    kp = np.array([[0.0, 0.0], [10.25, 3.5]])
    assert np.allclose(colmap.to_colmap_pixels(kp), kp + 0.5)
    assert np.allclose(colmap.from_colmap_pixels(colmap.to_colmap_pixels(kp)), kp)
    cam = Camera.pinhole(500, 500, 319.5, 239.5, 640, 480)
    ccam = colmap.camera_to_colmap(cam, 3)
    assert ccam.id == 3 and ccam.params.tolist() == [500, 500, 320, 240]
    assert colmap.camera_from_colmap(ccam) == cam


def _model(rng) -> colmap.ColmapModel:
    model = colmap.ColmapModel()
    for cam in CAMERAS:
        c = colmap.camera_to_colmap(cam, len(model.cameras) + 1)
        model.cameras[c.id] = c
    for i in range(1, 4):
        n = 5 * i
        model.images[i] = colmap.ColmapImage(
            i, random_pose(rng), 1 + i % 4, f"dir/img {i}.jpg" if i == 2 else f"dir/img{i}.jpg",
            rng.uniform(0, 600, (n, 2)), np.where(rng.random(n) < 0.5, -1, rng.integers(0, 9, n)),
        )
    model.images[9] = colmap.ColmapImage(9, random_pose(rng), 1, "empty.png")  # no keypoints
    model.points3D[7] = colmap.ColmapPoint3D(7, rng.normal(size=3), [255, 0, 3], 0.25, [[1, 0], [2, 4]])
    model.points3D[8] = colmap.ColmapPoint3D(8, rng.normal(size=3))
    return model


def _assert_models_equal(a: colmap.ColmapModel, b: colmap.ColmapModel, names_with_spaces=True):
    assert sorted(a.cameras) == sorted(b.cameras)
    for k, cam in a.cameras.items():
        other = b.cameras[k]
        assert (cam.model, cam.width, cam.height) == (other.model, other.width, other.height)
        assert np.allclose(cam.params, other.params, rtol=0, atol=1e-12)
    assert sorted(a.images) == sorted(b.images)
    for k, im in a.images.items():
        other = b.images[k]
        if names_with_spaces:
            assert im.name == other.name
        assert im.camera_id == other.camera_id
        assert np.allclose(im.cam_from_world.matrix(), other.cam_from_world.matrix(), atol=1e-12)
        assert np.allclose(im.points2D, other.points2D) and (im.point3D_ids == other.point3D_ids).all()
    assert sorted(a.points3D) == sorted(b.points3D)
    for k, p in a.points3D.items():
        q = b.points3D[k]
        assert np.allclose(p.xyz, q.xyz) and (p.rgb == q.rgb).all() and (p.track == q.track).all()


def test_colmap_text_roundtrip(tmp_path, rng):
    model = _model(rng)
    colmap.write_model(model, tmp_path / "sparse")
    _assert_models_equal(model, colmap.read_model(tmp_path / "sparse"))


def test_colmap_reads_handwritten_files(tmp_path):
    (tmp_path / "cameras.txt").write_text(
        "# comment\n1 SIMPLE_RADIAL 100 80 90.0 50.0 40.0 0.01\n2 FULL_OPENCV 10 10 1 1 1 1 0 0 0 0 0 0 0 0\n"
    )
    (tmp_path / "images.txt").write_text(
        "# Image list\n"
        "1 1 0 0 0 0.5 0 0 1 a.png\n"
        "10.5 20.5 -1 30.5 40.5 7\n"
        "2 0.7071067811865476 0 0.7071067811865476 0 1 2 3 1 b.png\n"
        "\n"
    )
    model = colmap.read_model(tmp_path)
    assert model.cameras[2].model == "FULL_OPENCV"  # read as stored, even if unsupported
    with pytest.raises(ValueError, match="not supported"):
        colmap.camera_from_colmap(model.cameras[2])
    cam = colmap.camera_from_colmap(model.cameras[1])
    assert (cam.cx, cam.cy) == (49.5, 39.5)
    a, b = model.image_by_name("a.png"), model.image_by_name("b.png")
    assert np.allclose(a.points2D, [[10.5, 20.5], [30.5, 40.5]]) and a.point3D_ids.tolist() == [-1, 7]
    assert np.allclose(colmap.from_colmap_pixels(a.points2D)[0], [10, 20])
    assert len(b.points2D) == 0 and np.allclose(b.cam_from_world.t, [1, 2, 3])
    assert rotation_angle_deg(b.cam_from_world.R) == pytest.approx(90)
    assert model.points3D == {}
    (tmp_path / "points3D.txt").write_text("1 0 0 0 255 255 255 0.5 1 0 1\n")
    with pytest.raises(colmap.ColmapFormatError, match="points3D.txt:1"):
        colmap.read_model(tmp_path)


def test_colmap_model_through_pycolmap(tmp_path, rng):
    pytest.importorskip("pycolmap")
    from featloc.io import pycolmap_api

    model = _model(rng)
    for im in model.images.values():  # pycolmap needs tracks consistent with points2D
        im.point3D_ids[:] = -1
        im.name = im.name.replace(" ", "_")  # COLMAP's text format has no spaces in names
    model.points3D = {}
    rec = pycolmap_api.reconstruction_from_model(model)
    assert rec.num_images() == len(model.images) and rec.num_cameras() == len(model.cameras)
    back = pycolmap_api.model_from_reconstruction(rec)
    _assert_models_equal(model, back)


def test_pose_text_lines(tmp_path, rng):
    poses = {"query/day/a.jpg": random_pose(rng), "name with space.png": random_pose(rng)}
    path = colmap.write_poses(tmp_path / "poses.txt", poses)
    read = colmap.read_poses(path)
    assert list(read) == list(poses)
    for name in poses:
        assert np.allclose(read[name].matrix(), poses[name].matrix(), atol=1e-12)
    line = colmap.format_pose_line("x.jpg", Pose.identity())
    assert line == "x.jpg 1.0 0.0 0.0 0.0 0.0 0.0 0.0"
    with pytest.raises(ValueError):
        colmap.parse_pose_line("x.jpg 1 0 0")


def test_model_from_views_shares_cameras(rng):
    cam = CAMERAS[1]
    poses = {f"{i}.png": random_pose(rng) for i in range(3)}
    model = colmap.model_from_views(dict.fromkeys(poses, cam), poses)
    assert len(model.cameras) == 1 and len(model.images) == 3
    assert colmap.camera_from_colmap(model.cameras[1]).params.tolist() == cam.params.tolist()


# -- AUC ---------------------------------------------------------------------------------------
def _trapezoid_auc(errors, threshold):
    """An independent plain-Python implementation of the SuperGlue AUC."""
    errors = sorted(float(e) for e in errors)
    n = len(errors)
    xs, ys = [0.0], [0.0]
    for k, e in enumerate(errors, 1):
        if e >= threshold:
            break
        xs.append(e)
        ys.append(k / n)
    xs.append(threshold)
    ys.append(ys[-1])
    area = sum((xs[i + 1] - xs[i]) * (ys[i + 1] + ys[i]) / 2 for i in range(len(xs) - 1))
    return area / threshold


def test_error_auc_superglue_reference_and_second_vector():
    assert error_auc([1, 2, 3, 100], [5, 10, 20]) == pytest.approx([0.525, 0.6375, 0.69375], abs=1e-6)
    errors = [0.5, 4.0, 4.0, 12.0, np.inf, 7.5]
    # By hand. Curve points (error, recall): (0, 0) (0.5, 1/6) (4, 2/6) (4, 3/6) (7.5, 4/6)
    # (12, 5/6). At 5: 0.5*(1/6)/2 + 3.5*(1/6+2/6)/2 + 0 + 1*(3/6) = 1/24 + 7/8 + 1/2.
    # At 10: 1/24 + 7/8 + 3.5*(3/6+4/6)/2 + 2.5*(4/6) = 4.625.
    # At 20: 4.625 - 2.5*(4/6) + 4.5*(4/6+5/6)/2 + 8*(5/6) = 13.0.
    by_hand = [(1 / 24 + 7 / 8 + 1 / 2) / 5, 4.625 / 10, 13.0 / 20]
    assert error_auc(errors, [5, 10, 20]) == pytest.approx(by_hand, abs=1e-12)
    independent = [_trapezoid_auc(errors, t) for t in (5, 10, 20)]
    assert error_auc(errors, [5, 10, 20]) == pytest.approx(independent, abs=1e-12)
    rng = np.random.default_rng(5)
    random_errors = np.where(rng.random(50) < 0.1, np.inf, rng.exponential(8, 50))
    assert error_auc(random_errors, [5, 10, 20]) == pytest.approx(
        [_trapezoid_auc(random_errors, t) for t in (5, 10, 20)], abs=1e-12)


# -- epipolar errors ---------------------------------------------------------------------------
def test_sym_epipolar_error_values(rng):
    # Pure x translation: epipolar lines are rows; the error is 2 * (dy)^2 (squared form).
    T = Pose(np.eye(3), [1.0, 0, 0])
    K = np.eye(3)
    p0 = np.array([[0.1, 0.2]])
    p1 = np.array([[0.4, 0.21]])
    assert epipolar_errors(p0, p1, T, K, K)[0] == pytest.approx(2 * 0.01**2)
    # exact correspondences have zero error
    K0 = np.array([[500.0, 0, 320], [0, 500, 240], [0, 0, 1]])
    T = random_pose(rng, 0.2)
    X = np.c_[rng.uniform(-1, 1, (30, 2)), rng.uniform(3, 6, 30)]
    cam = Camera.from_K(K0, 640, 480)
    e = epipolar_errors(cam.project(X), cam.project(T.transform(X)), T, K0, K0)
    assert e.max() < 1e-20
    assert match_precision(e, 5e-4) == 1.0 and match_precision([], 5e-4) == 0.0
    assert sym_epipolar_error(np.zeros((0, 2)), np.zeros((0, 2)), np.eye(3)).shape == (0,)


# -- relative pose accuracy ----------------------------------------------------------------------
def _two_view(seed, n=300, noise=0.5, outliers=0.3):
    rng = np.random.default_rng(seed)
    cam0 = Camera.pinhole(600, 600, 319.5, 239.5, 640, 480)
    cam1 = Camera.pinhole(500, 520, 300, 250, 640, 480)
    X = rng.uniform([-3, -2, 4], [3, 2, 9], (n, 3))
    T = Pose(_rotvec(rng.normal(0, 0.2, 3)), rng.normal(0, 1, 3))
    p0 = cam0.project(X) + rng.normal(0, noise, (n, 2))
    p1 = cam1.project(T.transform(X)) + rng.normal(0, noise, (n, 2))
    bad = rng.random(n) < outliers
    p1[bad] = rng.uniform([0, 0], [640, 480], (bad.sum(), 2))
    return p0, p1, cam0.K, cam1.K, T, ~bad


PROTOCOL = {"method": "ransac", "threshold_px": 1.0, "confidence": 0.99999, "max_iterations": 1000}


@pytest.mark.parametrize(
    "conf, median_max, worst_max",
    [
        (PROTOCOL, (1.0, 3.0), 10.0),  # OpenCV RANSAC: the best minimal sample, not refined
        ({**PROTOCOL, "poselib_refine": True}, (0.5, 1.5), 5.0),
        ({"backend": "poselib", "threshold_px": 1.0}, (0.3, 0.6), 2.0),
    ],
    ids=["opencv-ransac", "opencv-ransac+poselib-refine", "poselib"],
)
def test_relative_pose_accuracy_noise_and_outliers(conf, median_max, worst_max):
    errors, inlier_recall = [], []
    for seed in range(8):
        p0, p1, K0, K1, T, good = _two_view(seed)
        est = estimate_relative_pose(p0, p1, K0, K1, conf)
        assert est.success
        errors.append(relative_pose_error(T, est.model.R, est.model.t))
        assert np.linalg.norm(est.model.t) == pytest.approx(1)
        inlier_recall.append((est.inliers & good).sum() / good.sum())
        assert (est.inliers & ~good).sum() < 0.05 * (~good).sum() + 3
    errors = np.array(errors)
    assert np.median(errors[:, 0]) < median_max[0] and np.median(errors[:, 1]) < median_max[1]
    assert errors.max() < worst_max
    assert np.mean(inlier_recall) > 0.8


def test_relative_pose_fails_cleanly():
    est = estimate_relative_pose(np.zeros((4, 2)), np.zeros((4, 2)), np.eye(3), np.eye(3), PROTOCOL)
    assert not est.success and est.num_inliers == 0


# -- ground truth from depth and pose --------------------------------------------------------------
def _plane_depth(cam: Camera, n_cam, d):
    """Depth of the plane n . X = d (camera frame) at every pixel centre."""
    ys, xs = np.mgrid[0 : cam.height, 0 : cam.width]
    rays = cam.unproject(np.stack([xs.ravel(), ys.ravel()], 1).astype(float))
    z = d / (rays @ n_cam)
    return np.where(z > 0, z, 0).reshape(cam.height, cam.width)


def test_sample_depth_is_exact_on_planes_and_rejects_holes():
    cam = Camera.from_fov(60, 80, 60)
    n = np.array([0.3, -0.2, 1.0])
    depth = _plane_depth(cam, n / np.linalg.norm(n), 3.0)
    pts = np.array([[10.3, 20.7], [0, 0], [79, 59], [40.5, 30.25]])
    z, ok = sample_depth(depth, pts)
    assert ok.all()
    rays = cam.unproject(pts)
    assert np.allclose(z, 3.0 / (rays @ (n / np.linalg.norm(n))), rtol=1e-12)
    holes = depth.copy()
    holes[21, 10] = 0
    z, ok = sample_depth(holes, pts)
    assert ok.tolist() == [False, True, True, True] and z[0] == 0
    _, ok = sample_depth(depth, np.array([[-0.1, 5], [5, 59.01], [np.nan, 3]]))
    assert not ok.any()


def _depth_scene():
    """Two views of a tilted plane plus a small occluding square in front of view 1."""
    cam = Camera.from_fov(60, 160, 120)
    P0 = Pose.identity()
    T = Pose(_rotvec(np.array([0.02, 0.1, 0.01])), [0.6, 0.05, 0.1])
    n_w, d_w = np.array([0.1, 0.05, 1.0]) / np.linalg.norm([0.1, 0.05, 1.0]), 4.0
    depth0 = _plane_depth(cam, P0.R @ n_w, d_w)
    # plane in camera 1: n1 . X1 = d1 with n1 = R n, d1 = d + n1 . t
    n1 = T.R @ n_w
    depth1 = _plane_depth(cam, n1, d_w + n1 @ T.t)
    return cam, T, depth0, depth1


def test_project_with_depth_visibility_and_occlusion(rng):
    cam, T, depth0, depth1 = _depth_scene()
    pts = rng.uniform([0, 0], [159, 119], (300, 2))
    p1, valid = project_with_depth(pts, depth0, cam.K, T, cam.K, depth1=depth1)
    z, _ = sample_depth(depth0, pts)
    expected = cam.project(T.transform(cam.unproject(pts, z)))
    # depth1 is sampled bilinearly, so only [0, W-1] x [0, H-1] can be checked
    inside = cam.in_image(expected, margin=0.5)
    assert (valid == inside).all()
    assert np.abs(p1[valid] - expected[valid]).max() < 1e-9
    # an occluder in front of the plane in view 1 hides what projects behind it
    occluded = depth1.copy()
    occluded[40:80, 60:100] *= 0.5
    _, valid_occ = project_with_depth(pts, depth0, cam.K, T, cam.K, depth1=occluded)
    behind = valid & (expected[:, 0] > 61) & (expected[:, 0] < 98) & (expected[:, 1] > 41) & (expected[:, 1] < 78)
    assert behind.sum() > 10 and not valid_occ[behind].any()
    assert (valid_occ == (valid & ~np.isin(np.arange(len(pts)), np.flatnonzero(behind)))).sum() > 0.9 * len(pts)
    # without depth1 only the image bounds are checked
    _, valid_nodepth = project_with_depth(pts, depth0, cam.K, T, cam.K, size1=(160, 120))
    assert (valid_nodepth == cam.in_image(expected)).all()


def test_gt_matches_from_pose_depth_labels(rng):
    cam, T, depth0, depth1 = _depth_scene()
    kpts0 = rng.uniform([0, 0], [159, 119], (200, 2))
    z, _ = sample_depth(depth0, kpts0)
    proj = cam.project(T.transform(cam.unproject(kpts0, z)))
    visible = cam.in_image(proj, margin=2.0)
    # image 1 keypoints: true projections (+0.5 px noise) of the visible ones, plus clutter
    true_idx = np.flatnonzero(visible)[:120]
    clutter = rng.uniform([0, 0], [159, 119], (40, 2))
    kpts1 = np.concatenate([proj[true_idx] + rng.normal(0, 0.3, (len(true_idx), 2)), clutter])
    depth0_holes = depth0.copy()
    depth0_holes[:, :20] = 0  # no depth on the left border of image 0
    m0, m1 = gt_matches_from_pose_depth(kpts0, kpts1, depth0_holes, depth1, cam.K, cam.K, T,
                                         return_matches1=True)
    assert m0.dtype == np.int64 and set(np.unique(m0)) <= set(range(len(kpts1))) | {UNMATCHED, IGNORE}
    no_depth = kpts0[:, 0] < 21
    assert (m0[no_depth] == IGNORE).all()
    for rank, i in enumerate(true_idx):
        if not no_depth[i]:
            # ambiguous when another keypoint of image 1 lies about as close
            others = np.delete(kpts1, rank, axis=0)
            close = np.linalg.norm(others - proj[i], axis=1).min() < 1.5
            assert m0[i] == rank or close
    positives = np.flatnonzero(m0 >= 0)
    assert len(positives) > 80
    assert (m1[m0[positives]] == positives).all()
    err = np.linalg.norm(proj[positives] - kpts1[m0[positives]], axis=1)
    assert err.max() < 3.0
    # a point with depth whose projection falls outside image 1 is unmatched
    outside = ~cam.in_image(proj, margin=-5.0) & ~no_depth
    assert outside.any() and (m0[outside] == UNMATCHED).all()


def test_gt_matches_from_homography(rng):
    H = np.array([[1.1, 0.05, 5.0], [-0.02, 0.95, -3.0], [1e-4, 0, 1.0]])
    kpts0 = np.concatenate([rng.uniform(0, 200, (60, 2)), rng.uniform(1000, 1200, (40, 2))])
    kpts1 = np.concatenate([warp_points(kpts0[:60], H) + rng.normal(0, 0.5, (60, 2)),
                            rng.uniform(0, 200, (30, 2)) + 400])
    m0, m1 = gt_matches_from_homography(kpts0, kpts1, H, return_matches1=True)
    assert (m0[:60] == np.arange(60)).all()
    assert (m0[60:] == UNMATCHED).all()  # far from every keypoint of image 1
    assert (m1[60:] == UNMATCHED).all()
    empty = gt_matches_from_homography(kpts0, np.zeros((0, 2)), H)
    assert (empty == UNMATCHED).all()
    # points near (but not within pos_th of) a keypoint are ignored
    m0 = gt_matches_from_homography(kpts0[:1], warp_points(kpts0[:1], H) + [4.0, 0], H)
    assert m0.tolist() == [IGNORE]
