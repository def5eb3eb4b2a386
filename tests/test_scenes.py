"""Synthetic posed scenes: exact depth, projection consistency, outputs of make-scenes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from featloc.cli import main
from featloc.geometry.camera import Camera
from featloc.geometry.depth import (
    gt_matches_from_pose_depth,
    project_with_depth,
    sample_depth,
)
from featloc.geometry.pose import relative_pose
from featloc.io.images import write_image
from featloc.synth.scenes import (
    KINDS,
    build_scene,
    camera_path,
    overlap_matrix,
    render_view,
)
from featloc.synth.textures import random_scene_image


@pytest.fixture(scope="module")
def textures(tmp_path_factory):
    root = tmp_path_factory.mktemp("textures")
    rng = np.random.default_rng(7)
    for i in range(6):
        write_image(root / f"t{i}.png", random_scene_image(rng, 192, 256, num_shapes=60))
    return root


@pytest.fixture(scope="module")
def gallery(textures):
    return build_scene("gallery", textures, seed=0)


CAMERA = Camera.from_fov(65, 320, 240)


def _rendered_pair(scene, i, j, num_views=100):
    poses = camera_path(scene, "db", num_views, seed=0)
    image0, depth0 = render_view(scene, CAMERA, poses[i])
    image1, depth1 = render_view(scene, CAMERA, poses[j])
    return image0, depth0, image1, depth1, relative_pose(poses[i], poses[j])


def _pixel_grid(step=3):
    ys, xs = np.mgrid[0 : CAMERA.height : step, 0 : CAMERA.width : step]
    return np.stack([xs.ravel(), ys.ravel()], 1).astype(np.float64)


@pytest.mark.parametrize("kind", KINDS)
def test_scene_kinds_render_with_valid_depth(kind, textures):
    scene = build_scene(kind, textures, seed=1)
    poses = camera_path(scene, "db", 12, seed=1)
    image, depth = render_view(scene, CAMERA, poses[0], noise_std=1.0, rng=np.random.default_rng(0))
    assert image.shape == (240, 320, 3) and image.dtype == np.uint8
    assert depth.shape == (240, 320) and depth.dtype == np.float32
    assert np.isfinite(depth).all() and (depth >= 0).all()
    if kind == "facade":
        assert 0.3 < (depth > 0).mean() < 1.0  # sky has no depth
    else:
        assert (depth > 0).all()  # closed rooms
    assert image.std() > 10  # textured, not blank
    # every camera lies inside the scene bounds
    centers = np.stack([p.center for p in poses])
    assert (centers >= scene.bounds[0]).all() and (centers <= scene.bounds[1]).all()


def test_scene_is_deterministic_and_paths_share_geometry(textures):
    a = build_scene("room", textures, seed=3)
    b = build_scene("room", textures, seed=3)
    assert len(a.quads) == len(b.quads)
    assert all(np.array_equal(p.origin, q.origin) for p, q in zip(a.quads, b.quads, strict=True))
    pa, pb = camera_path(a, "db", 5, 3), camera_path(b, "db", 5, 3)
    img_a, _ = render_view(a, CAMERA, pa[2])
    img_b, _ = render_view(b, CAMERA, pb[2])
    assert np.array_equal(img_a, img_b)
    query = camera_path(a, "query", 5, 3)
    assert not np.allclose(query[0].matrix(), pa[0].matrix())
    c = build_scene("room", textures, seed=4)
    assert not all(np.array_equal(p.origin, q.origin) for p, q in zip(a.quads, c.quads, strict=False))


@pytest.mark.parametrize("pair", [(0, 1), (10, 12), (20, 21)])
def test_depth_reprojection_consistency(gallery, pair):
    """A pixel back-projected with the depth of view 0 lands where the depth of view 1 says:
    the round trip through depth1 returns within 0.05 px for unoccluded points."""
    _, depth0, _, depth1, T = _rendered_pair(gallery, *pair)
    pts = _pixel_grid()
    p1, visible = project_with_depth(pts, depth0, CAMERA.K, T, CAMERA.K, depth1=depth1)
    assert visible.mean() > 0.2
    z0, _ = sample_depth(depth0, pts[visible])
    z_proj = T.transform(CAMERA.unproject(pts[visible], z0))[:, 2]
    z1, ok = sample_depth(depth1, p1[visible])
    assert ok.all()
    # unoccluded and away from depth edges: both depth maps agree on the 3D point
    agree = np.abs(z1 - z_proj) < 1e-4 * z1
    assert agree.mean() > 0.9
    back = CAMERA.project(T.inv().transform(CAMERA.unproject(p1[visible][agree], z1[agree])))
    err = np.linalg.norm(back - pts[visible][agree], axis=1)
    assert err.max() < 0.05


def test_rendered_images_are_photometrically_consistent(gallery):
    image0, depth0, image1, depth1, T = _rendered_pair(gallery, 10, 11)
    pts = _pixel_grid(5)
    p1, visible = project_with_depth(pts, depth0, CAMERA.K, T, CAMERA.K, depth1=depth1)
    import cv2

    gray0 = cv2.cvtColor(image0, cv2.COLOR_RGB2GRAY).astype(np.float32)
    gray1 = cv2.cvtColor(image1, cv2.COLOR_RGB2GRAY).astype(np.float32)
    v0 = gray0[pts[visible, 1].astype(int), pts[visible, 0].astype(int)]
    m = p1[visible].astype(np.float32).reshape(-1, 1, 2)
    v1 = cv2.remap(gray1, m[..., 0], m[..., 1], cv2.INTER_LINEAR).ravel()
    # same surface radiance in both views (texture filtering differs a little)
    assert np.median(np.abs(v0 - v1)) < 6
    # the pose is wrong for a shuffled pairing: the difference is much larger
    assert np.median(np.abs(v0 - np.random.default_rng(0).permutation(v1))) > 15


def test_gt_matches_on_rendered_pair(gallery):
    _, depth0, _, depth1, T = _rendered_pair(gallery, 10, 11)
    rng = np.random.default_rng(0)
    kpts0 = rng.uniform([0, 0], [319, 239], (300, 2))
    p1, visible = project_with_depth(kpts0, depth0, CAMERA.K, T, CAMERA.K, depth1=depth1)
    kpts1 = np.concatenate([p1[visible] + rng.normal(0, 0.5, (visible.sum(), 2)),
                            rng.uniform([0, 0], [319, 239], (50, 2))])
    m0 = gt_matches_from_pose_depth(kpts0, kpts1, depth0, depth1, CAMERA.K, CAMERA.K, T)
    positives = np.flatnonzero(m0 >= 0)
    assert len(positives) > 0.8 * visible.sum()
    assert np.linalg.norm(p1[positives] - kpts1[m0[positives]], axis=1).max() < 3
    assert (m0[~visible] < 0).all()


def test_overlap_matrix(gallery):
    poses = camera_path(gallery, "db", 100, seed=0)[:6]
    depths = [render_view(gallery, CAMERA, p)[1] for p in poses]
    overlap = overlap_matrix(depths, [CAMERA] * 6, poses, stride=8)
    assert np.allclose(np.diag(overlap), 1) and np.allclose(overlap, overlap.T)
    assert ((overlap >= 0) & (overlap <= 1)).all()
    assert overlap[0, 1] > overlap[0, 5]  # neighbours on the path overlap more


def test_make_scenes_cli(tmp_path, textures):
    out = tmp_path / "scene"
    code = main(["--quiet", "make-scenes", "--textures", str(textures), "--output", str(out),
                 "--kind", "room", "--num-views", "8", "--width", "160", "--height", "120",
                 "--num-pairs", "6", "--lighting", "random"])
    assert code == 0
    names = sorted(p.name for p in (out / "images").iterdir())
    assert names == [f"db_{i:04d}.png" for i in range(8)]
    depth = np.load(out / "depth" / "db_0003.npy")
    assert depth.shape == (120, 160) and depth.dtype == np.float32 and (depth > 0).all()

    from featloc.eval.pose import read_pose_pairs
    from featloc.io.colmap import camera_from_colmap, read_model
    from featloc.io.kapture_io import read_kapture_poses

    model = read_model(out / "sparse")
    assert len(model.images) == 8 and len(model.cameras) == 1
    camera = camera_from_colmap(model.cameras[1])
    assert camera.size == (160, 120)
    poses = {im.name: im.cam_from_world for im in model.images.values()}
    pairs = read_pose_pairs(out / "pairs_gt.txt")
    assert 0 < len(pairs) <= 6
    for pair in pairs:
        expected = relative_pose(poses[pair.name0], poses[pair.name1])
        assert np.allclose(pair.T_0to1.matrix(), expected.matrix(), atol=1e-9)
        assert np.allclose(pair.K0, camera.K) and pair.rot0 == pair.rot1 == 0
    info = json.loads((out / "pairs_info.json").read_text())
    assert len(info) == len(pairs) and all(0.1 <= p["overlap"] < 0.8 for p in info)
    cameras_k, poses_k = read_kapture_poses(out / "kapture")
    assert sorted(poses_k) == names
    assert cameras_k["db_0000.png"] == camera
    assert np.allclose(poses_k["db_0005.png"].matrix(), poses["db_0005.png"].matrix())
    assert (out / "kapture" / "sensors" / "records_data" / "db_0000.png").is_file()
    summary = json.loads((out / "scene.json").read_text())
    assert summary["conf"]["kind"] == "room" and summary["num_pairs"] == len(pairs)
