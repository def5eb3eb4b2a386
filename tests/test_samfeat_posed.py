"""Posed pairs (depth + pose) as a SAMFeat training source: correspondences, occlusion,
determinism, mixing with homographic pairs, and a short training run.

Two scenes: a `make_scenes` room (real rendering, checked against depth and
`gt_matches_from_pose_depth`) and a hand-written folder in the documented format whose
geometry is analytic (a wall with a square in front of it, two cameras side by side), so
that occlusion and out-of-view points can be checked exactly.
"""

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import default_collate

from featloc.eval.pose import PosePair, format_pose_pair_line
from featloc.geometry.depth import (
    DEFAULT_REL_DEPTH_TOL,
    gt_matches_from_pose_depth,
    sample_depth,
)
from featloc.geometry.homography import warp_points
from featloc.geometry.pose import Pose
from featloc.io.images import write_image
from featloc.synth.textures import random_scene_image
from featloc.train.conf import load_config
from featloc.train.tasks import samfeat as samfeat_task

SMOKE = Path(__file__).resolve().parents[1] / "configs" / "train" / "smoke.yaml"

# the analytic scene: camera 1 is camera 0 moved 0.5 m to the right (no rotation)
WALL_Z, SQUARE_Z, SQUARE_HALF, BASELINE = 4.0, 2.0, 0.3, 0.5
W, H, F = 128, 96, 100.0
K = np.array([[F, 0, (W - 1) / 2], [0, F, (H - 1) / 2], [0, 0, 1]])


@pytest.fixture(scope="module")
def room(tmp_path_factory) -> Path:
    from featloc.synth.scenes import make_scenes

    root = tmp_path_factory.mktemp("room")
    rng = np.random.default_rng(3)
    for i in range(5):
        write_image(root / "textures" / f"t{i}.png",
                    random_scene_image(rng, 192, 256, num_shapes=80))
    return make_scenes(root / "textures", root / "scene", kind="room", num_views=12,
                       width=256, height=192, num_pairs=6, write_kapture=False)


def _square_hit(centre_x: float, rays: np.ndarray) -> np.ndarray:
    """Whether rays [..., 2] (x/z, y/z in the camera) from a camera at world x = centre_x
    hit the square before the wall."""
    at = SQUARE_Z * rays
    return (np.abs(centre_x + at[..., 0]) <= SQUARE_HALF) & (np.abs(at[..., 1]) <= SQUARE_HALF)


def _rays(points: np.ndarray) -> np.ndarray:
    return (np.asarray(points, np.float64) - K[:2, 2]) / F


@pytest.fixture(scope="module")
def wall(tmp_path_factory) -> Path:
    """A scene folder written by hand in the documented format."""
    root = tmp_path_factory.mktemp("wall")
    rng = np.random.default_rng(5)
    u, v = np.meshgrid(np.arange(W), np.arange(H))
    pixels = np.stack([u, v], -1)
    for name, centre_x in (("a", 0.0), ("b", BASELINE)):
        write_image(root / "images" / f"{name}.png", random_scene_image(rng, H, W))
        depth = np.where(_square_hit(centre_x, _rays(pixels)), SQUARE_Z, WALL_Z)
        (root / "depth").mkdir(exist_ok=True)
        np.save(root / "depth" / f"{name}.npy", depth.astype(np.float32))
    pair = PosePair("a.png", "b.png", K, K, Pose(np.eye(3), [-BASELINE, 0, 0]))
    (root / "pairs_gt.txt").write_text(format_pose_pair_line(pair) + "\n")
    return root


def _dataset(tmp_path: Path, scenes: list[Path], *extra: str, image_dirs=()):
    conf = load_config(SMOKE, [f"data.image_dirs=[{','.join(map(str, image_dirs))}]",
                               f"data.posed_scenes=[{','.join(map(str, scenes))}]",
                               f"data.cache_dir={tmp_path / 'cache'}",
                               f"train.output_dir={tmp_path / 'run'}", *extra])
    return conf, samfeat_task.build_datasets(conf)["train"]


def _full_res(points: np.ndarray, A: np.ndarray) -> np.ndarray:
    """View pixels -> full-resolution pixels of the view's image."""
    return warp_points(points, np.linalg.inv(A))


def _backproject(points: np.ndarray, depth: np.ndarray, K: np.ndarray) -> np.ndarray:
    z, ok = sample_depth(depth, points)
    assert ok.all()
    return np.concatenate([points, np.ones((len(points), 1))], 1) @ np.linalg.inv(K).T * z[:, None]


# ------------------------------------------------------------------------------- items

def test_room_correspondences_match_depth_and_pose(room, tmp_path):
    _, ds = _dataset(tmp_path, [room], "data.photometric.probability=0")
    assert len(ds) == 6 and ds.num_homographic == 0
    valid_total = 0
    for index in range(len(ds)):
        item = ds[(0, index)]
        p, views = ds.posed_views(0, index)
        pair = ds.posed.pairs[p].pair
        depth0, depth1 = ds.posed.depth(p, 0), ds.posed.depth(p, 1)
        assert torch.isnan(item["H_0to1"]).all()
        assert item["image0"].shape == (3, 64, 64) and item["image0"].dtype == torch.uint8
        valid = item["valid"].numpy() > 0
        valid_total += valid.sum()
        p0, p1 = item["points0"].numpy()[valid], item["points1"].numpy()[valid]
        assert np.all((p1 >= 0) & (p1 <= 63))
        # the same 3D point, seen from camera 1 through the depth of either image: exact on
        # planes, within the occlusion tolerance where depth1 is interpolated across a crease
        q0, q1 = _full_res(p0, views.A0), _full_res(p1, views.A1)
        X1 = pair.T_0to1.transform(_backproject(q0, depth0, pair.K0))
        Y1 = _backproject(q1, depth1, pair.K1)
        error = np.linalg.norm(X1 - Y1, axis=1) / X1[:, 2]
        assert np.all(error < DEFAULT_REL_DEPTH_TOL) and np.mean(error < 1e-4) > 0.9
        m0 = gt_matches_from_pose_depth(q0, q1, depth0, depth1, pair.K0, pair.K1, pair.T_0to1,
                                        pos_th_px=0.5, neg_th_px=0.5)
        # the reference labels agree (a crease point may be ignored, -2, never unmatched)
        assert np.all((m0 == np.arange(len(q0))) | (m0 == -2)) and np.mean(m0 >= 0) > 0.9
        # the rendered views agree at corresponding points (no augmentation here)
        img0, img1 = item["image0"].float().numpy(), item["image1"].float().numpy()
        c0, c1 = np.round(p0).astype(int), np.round(p1).astype(int)
        diff = np.abs(img0[:, c0[:, 1], c0[:, 0]] - img1[:, c1[:, 1], c1[:, 0]])
        assert np.median(diff) < 8
        # NS: the diagonal and every invalid column
        ns = item["not_search"].numpy()
        assert ns.diagonal().all() and ns[:, ~(item["valid"].numpy() > 0)].all()
        # each view has the pseudo-labels of its own image, and image content everywhere
        for v in (0, 1):
            assert item[f"heatmap{v}"].sum() > 0 and item[f"valid_mask{v}"].min() == 1
    assert valid_total > 100


def test_occluded_and_out_of_view_points_are_invalid(wall, tmp_path):
    """Exact visibility from the analytic scene, away from depth edges and view borders."""
    _, ds = _dataset(tmp_path, [wall], "data.posed_repeat=12")
    counts = {"valid": 0, "occluded": 0, "outside": 0}
    for index in range(len(ds)):
        item = ds[(0, index)]
        _, views = ds.posed_views(0, index)
        p0 = item["points0"].numpy()
        rays0 = _rays(_full_res(p0, views.A0))
        on_square = _square_hit(0.0, rays0)
        X0 = np.concatenate([rays0, np.ones((len(p0), 1))], 1) \
            * np.where(on_square, SQUARE_Z, WALL_Z)[:, None]
        X1 = X0 - [BASELINE, 0, 0]
        rays1 = X1[:, :2] / X1[:, 2:]
        p1 = warp_points(rays1 * F + K[:2, 2], views.A1)
        occluded = ~on_square & _square_hit(BASELINE, rays1)
        inside = np.all((p1 >= 0) & (p1 <= 63), 1)
        expected = inside & ~occluded
        # leave out points within 2 full-resolution pixels of a depth edge in either image,
        # where the depth maps mix both surfaces, and points on view 1's border
        margin = 2 / F
        near_edge = np.any((np.abs(p1) < 0.01) | (np.abs(p1 - 63) < 0.01), 1)
        for rays, centre_x in ((rays0, 0.0), (rays1, BASELINE)):
            for dx in (-margin, 0, margin):
                for dy in (-margin, 0, margin):
                    near_edge |= _square_hit(centre_x, rays + [dx, dy]) \
                        != _square_hit(centre_x, rays)
        check = ~near_edge
        valid = item["valid"].numpy() > 0
        np.testing.assert_array_equal(valid[check], expected[check])
        np.testing.assert_allclose(item["points1"].numpy()[valid & check],
                                   p1[valid & check], atol=1e-3)
        counts["valid"] += (valid & check).sum()
        counts["occluded"] += (occluded & inside & check).sum()
        counts["outside"] += (~inside & check).sum()
    assert all(n > 0 for n in counts.values()), counts


def test_items_are_deterministic_per_seed_epoch_index(room, tmp_path):
    _, ds = _dataset(tmp_path, [room])
    item, again = ds[(3, 2)], ds[(3, 2)]
    assert list(item) == list(again)
    for key in item:
        assert torch.equal(item[key].nan_to_num(), again[key].nan_to_num()), key
    # DataLoader workers get a pickled copy: the same items
    copy = pickle.loads(pickle.dumps(ds))
    assert all(torch.equal(copy[(3, 2)][k].nan_to_num(), item[k].nan_to_num()) for k in item)
    other = ds[(4, 2)]
    assert not torch.equal(other["points0"], item["points0"])
    assert not torch.equal(other["image0"], item["image0"])


# ---------------------------------------------------------------------- mixing, teacher

def test_mixed_with_homographic_pairs_and_teacher_targets(room, tmp_path, monkeypatch):
    from featloc.train.data import targets as targets_module

    class Targets:
        def __init__(self, image):
            h, w = image.shape[:2]
            self.groups = (np.arange(w)[None].repeat(h, 0) // 32 + 1).astype(np.int32)
            self.edges = np.zeros((h, w), np.float32)
            self.edges[:, ::32] = 1
            self.embedding = np.ones((16, 8, 8), np.float16)

    calls = []

    def stub(conf):
        def teacher(image, name):
            calls.append(name)
            return Targets(image)
        return teacher

    monkeypatch.setattr(targets_module, "build_teacher_from_conf", stub)
    images = tmp_path / "images"
    rng = np.random.default_rng(0)
    for i in range(3):
        write_image(images / f"img{i}.png", random_scene_image(rng, 96, 128))
    conf, ds = _dataset(tmp_path, [room], "data.teacher={kind: stub}", "data.posed_repeat=2",
                        image_dirs=[images])
    assert ds.num_homographic == 3 and len(ds) == 3 + 2 * 6
    posed_names = [n for n in calls if n.startswith(f"{room.name}/")]
    assert len(posed_names) == len(ds.posed.images) and len(calls) == 3 + len(posed_names)
    homographic, posed = ds[(0, 1)], ds[(0, 3)]
    assert torch.isfinite(homographic["H_0to1"]).all() and torch.isnan(posed["H_0to1"]).all()
    assert list(homographic) == list(posed)
    for v in (0, 1):
        assert posed[f"has_groups{v}"] == 1 and posed[f"has_embedding{v}"] == 1
        assert posed[f"embedding{v}"].shape == (16, 8, 8)
        assert posed[f"edge{v}"].shape == (16, 16) and posed[f"edge{v}"].max() > 0
    assert (posed["point_groups0"] >= 1).all()
    batch = default_collate([homographic, posed])
    torch.manual_seed(0)
    loss, metrics = samfeat_task.compute_loss(samfeat_task.build_model(conf), batch, conf)
    assert torch.isfinite(loss)
    assert {"loss_det", "loss_des", "loss_wsc", "loss_dis", "loss_edge"} <= set(metrics)


def test_config_errors(tmp_path):
    conf = load_config(SMOKE, [f"data.cache_dir={tmp_path}"])
    with pytest.raises(ValueError, match="no training data"):
        samfeat_task.build_datasets(conf)
    conf = load_config(SMOKE, [f"data.posed_scenes=[{tmp_path}]", f"data.cache_dir={tmp_path}"])
    with pytest.raises(FileNotFoundError, match="pairs_gt.txt"):
        samfeat_task.build_datasets(conf)


# ---------------------------------------------------------------------------- training

def test_training_on_posed_pairs_only(room, tmp_path):
    """A short samfeat-lite run from posed scenes alone, with a classical teacher (all five
    loss terms): finite losses, and a lower loss on held-out items (an epoch never trained
    on) than at initialisation."""
    from featloc.train.trainer import train

    overrides = ["data.image_dirs=[]", f"data.posed_scenes=[{room}]", "data.posed_repeat=4",
                 "data.teacher={kind: classical}", f"data.cache_dir={tmp_path / 'cache'}",
                 f"train.output_dir={tmp_path / 'run'}", "train.steps=150",
                 "train.ckpt_interval=1000", "train.log_interval=10"]
    run = train(SMOKE, overrides)
    rows = (run / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    assert len(rows) == 16
    for name in ("loss", "loss_det", "loss_des", "loss_wsc", "loss_dis", "loss_edge"):
        values = [float(r.split(",")[header.index(name)]) for r in rows[1:]]
        assert np.isfinite(values).all() and max(values) > 0, name
    conf = load_config(SMOKE, overrides)
    ds = samfeat_task.build_datasets(conf)["train"]
    batch = default_collate([ds[(999, i)] for i in range(0, 24, 3)])
    torch.manual_seed(conf.train.seed)
    before, after = samfeat_task.build_model(conf), samfeat_task.build_model(conf)
    after.load_state_dict(torch.load(run / "ckpt_00000150.pt", weights_only=False)["model"])
    with torch.no_grad():
        loss0, metrics0 = samfeat_task.compute_loss(before.eval(), batch, conf)
        loss1, metrics1 = samfeat_task.compute_loss(after.eval(), batch, conf)
    assert loss1.item() < 0.9 * loss0.item()
    assert metrics1["match_acc"] > metrics0["match_acc"]
