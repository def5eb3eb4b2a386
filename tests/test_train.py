"""The trainer, its data pipeline and the SAMFeat task, on tiny synthetic images.

A stand-in network honouring the SAMFeat output contract keeps these tests independent of the
real networks and fast (64x64 crops, a few steps).
"""

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from featloc.config import ConfigError
from featloc.geometry.homography import warp_points
from featloc.train import checkpoint
from featloc.train.conf import load_config
from featloc.train.data.augment import PhotometricConf, photometric
from featloc.train.data.homographies import (
    HomographyConf,
    sample_homography,
    sample_patch,
)
from featloc.train.data.sampler import EpochSampler
from featloc.train.tasks import samfeat as samfeat_task

SMOKE = Path(__file__).resolve().parents[1] / "configs" / "train" / "smoke.yaml"
REAL_NET_API = samfeat_task._net_api  # the tests below use a stand-in unless they restore it


class StandInSAMFeat(nn.Module):
    """Tiny network with the SAMFeat output contract (logits, desc_map, weight_map, distill,
    edge)."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.c4 = nn.Conv2d(16, 16, 3, stride=2, padding=1)
        self.c8 = nn.Conv2d(16, 32, 3, stride=2, padding=1)
        self.det = nn.Conv2d(8, 1, 3, padding=1)
        self.desc = nn.Conv2d(16, 128, 1)
        self.weight = nn.Conv2d(16, 1, 1)
        self.distill = nn.Conv2d(32, 256, 1)
        self.edge = nn.Conv2d(16, 1, 1)

    def forward(self, image):
        x1 = F.relu(self.c1(image))
        x4 = F.relu(self.c4(F.relu(self.c2(x1))))
        x8 = F.relu(self.c8(x4))
        return {"logits": self.det(x1), "desc_map": self.desc(x4),
                "weight_map": F.softplus(self.weight(x4)), "distill": self.distill(x8),
                "edge": torch.sigmoid(self.edge(x4))}


def standin_sample_descriptors(desc_map, weight_map, points, image_hw):
    h, w = image_hw
    grid = torch.stack([(2 * points[..., 0] + 1) / w - 1, (2 * points[..., 1] + 1) / h - 1], -1)
    grid = grid[:, :, None].to(desc_map.dtype)
    desc = F.grid_sample(desc_map, grid, padding_mode="border", align_corners=False)
    weights = F.grid_sample(weight_map, grid, padding_mode="border", align_corners=False)
    return F.normalize(desc[..., 0].transpose(1, 2), dim=-1), weights[:, 0, :, 0]


@pytest.fixture(autouse=True)
def standin_net(monkeypatch):
    monkeypatch.setattr(samfeat_task, "_net_api",
                        lambda: (lambda conf: StandInSAMFeat(), standin_sample_descriptors))


def _texture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    image = np.full((h, w, 3), 127, np.uint8)
    for _ in range(25):
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
        if rng.random() < 0.5:
            cv2.rectangle(image, (x, y), (x + int(rng.integers(5, 30)), y + int(rng.integers(5, 30))),
                          color, -1)
        else:
            cv2.circle(image, (x, y), int(rng.integers(3, 15)), color, -1)
    return image


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for i in range(4):
        cv2.imwrite(str(root / f"img{i}.png"), _texture(rng, 96, 128))
    return root


def _overrides(image_dir: Path, tmp: Path, *extra: str) -> list[str]:
    return [f"data.image_dirs=[{image_dir}]", f"data.cache_dir={tmp / 'cache'}",
            f"train.output_dir={tmp / 'run'}", *extra]


# ------------------------------------------------------------------------------------ config

def test_config_rejects_unknown_keys_and_wrong_types(image_dir, tmp_path):
    conf = load_config(SMOKE, _overrides(image_dir, tmp_path))
    assert conf.task == "samfeat" and conf.data.image_size == 64
    with pytest.raises(ConfigError, match="data.homography.max_angle"):
        load_config(SMOKE, ["data.homography.max_angle=3"])
    with pytest.raises(ConfigError, match="train.steps"):
        load_config(SMOKE, ["train.steps=many"])
    with pytest.raises(ConfigError, match="unknown training task"):
        load_config(SMOKE, ["task=nope"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("task: samfeat\nlosses:\n  detectr: 1.0\ntrain:\n  steps: 1\n")
    with pytest.raises(ConfigError, match="losses.detectr"):
        load_config(bad)


# -------------------------------------------------------------------- homographies, augment

def test_homography_sampler_is_deterministic_and_in_range():
    conf = HomographyConf(perspective=False, translation=False, scale_min=0.5, scale_max=2.0,
                          max_angle_deg=45.0)
    H1 = sample_homography((64, 48), conf, np.random.default_rng(3))
    H2 = sample_homography((64, 48), conf, np.random.default_rng(3))
    np.testing.assert_array_equal(H1, H2)
    for seed in range(50):
        quad = sample_patch(conf, np.random.default_rng(seed))
        edge = quad[1] - quad[0]
        angle = np.degrees(np.arctan2(edge[1], edge[0]))
        scale = np.linalg.norm(edge) / conf.patch_ratio
        assert abs(angle) <= 45.0 + 1e-6
        assert 0.5 - 1e-6 <= scale <= 2.0 + 1e-6
    # the patch corners of image 0 land on the corners of image 1
    rng = np.random.default_rng(7)
    quad = sample_patch(HomographyConf(), rng) * [63, 47]
    H = sample_homography((64, 48), HomographyConf(), np.random.default_rng(7))
    np.testing.assert_allclose(warp_points(quad, H), [[0, 0], [63, 0], [63, 47], [0, 47]],
                               atol=1e-4)


def test_photometric_is_deterministic_and_valid():
    image = _texture(np.random.default_rng(0), 64, 64)
    conf = PhotometricConf(probability=1.0, shade_kernel_min=11, shade_kernel_max=21)
    a = photometric(image, conf, np.random.default_rng(1))
    b = photometric(image, conf, np.random.default_rng(1))
    c = photometric(image, conf, np.random.default_rng(2))
    assert a.dtype == np.uint8 and a.shape == image.shape
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c) and not np.array_equal(a, image)
    off = photometric(image, PhotometricConf(probability=0.0), np.random.default_rng(1))
    np.testing.assert_array_equal(off, image)


def test_epoch_sampler_splits_ranks_and_resumes_inside_an_epoch():
    full = EpochSampler(10, 2, seed=0, epoch=3).indices()
    assert len(full) == 10 and sorted(full) == list(range(10))
    np.testing.assert_array_equal(EpochSampler(10, 2, 0, 3, start_batch=2).indices(), full[4:])
    r0 = EpochSampler(10, 2, 0, 3, rank=0, world_size=2).indices()
    r1 = EpochSampler(10, 2, 0, 3, rank=1, world_size=2).indices()
    assert len(r0) == len(r1) == 4 and not set(r0) & set(r1)
    assert list(EpochSampler(10, 2, 0, 3))[0] == (3, int(full[0]))


# ---------------------------------------------------------------------------- pair dataset

def test_pair_dataset_correspondences_follow_H(image_dir, tmp_path):
    conf = load_config(SMOKE, _overrides(image_dir, tmp_path, "data.photometric.probability=0",
                                         "data.image_size=64"))
    dataset = samfeat_task.build_datasets(conf)["train"]
    item = dataset[(0, 1)]
    again = dataset[(0, 1)]
    for key in item:
        assert torch.equal(item[key], again[key]), key
    assert not torch.equal(dataset[(1, 1)]["H_0to1"], item["H_0to1"])
    H = item["H_0to1"].double().numpy()
    p0, p1 = item["points0"].numpy(), item["points1"].numpy()
    valid = item["valid"].numpy() > 0
    assert valid.sum() > 5
    np.testing.assert_allclose(warp_points(p0[valid], H), p1[valid], atol=1e-3)
    assert np.all((p1[valid] >= 0) & (p1[valid] <= 63))
    ns = item["not_search"].numpy()
    assert ns.diagonal().all() and ns[:, ~valid].all()
    # the images agree at corresponding points (no photometric change, interior points)
    img0, img1 = item["image0"].float().numpy(), item["image1"].float().numpy()
    inner = valid & np.all((p1 >= 2) & (p1 <= 61), 1) & np.all((p0 >= 2) & (p0 <= 61), 1)
    q0 = np.round(p0[inner]).astype(int)
    q1 = np.round(p1[inner]).astype(int)
    v0 = img0[:, q0[:, 1], q0[:, 0]]
    v1 = img1[:, q1[:, 1], q1[:, 0]]
    assert np.median(np.abs(v0 - v1)) < 20
    # pseudo-labels exist and lie inside the valid area of each view
    for v in (0, 1):
        heat, mask = item[f"heatmap{v}"], item[f"valid_mask{v}"]
        assert heat.sum() > 0 and torch.all(heat <= mask)
    assert item["image0"].dtype == torch.uint8 and item["image0"].shape == (3, 64, 64)


def test_teacher_targets_are_cached_and_warped(image_dir, tmp_path, monkeypatch):
    from featloc.train.data import targets as targets_module

    class Targets:
        def __init__(self, image):
            h, w = image.shape[:2]
            self.groups = (np.arange(w)[None].repeat(h, 0) // 32 + 1).astype(np.int32)
            self.edges = np.zeros((h, w), np.float32)
            self.edges[:, ::32] = 1
            self.embedding = np.random.default_rng(0).random((16, 8, 8)).astype(np.float16)

    calls = []

    def stub(conf):
        def teacher(image, name):
            calls.append(name)
            return Targets(image)
        return teacher

    monkeypatch.setattr(targets_module, "build_teacher_from_conf", stub)
    extra = ["data.teacher={kind: stub}", "data.photometric.probability=0"]
    conf = load_config(SMOKE, _overrides(image_dir, tmp_path, *extra))
    dataset = samfeat_task.build_datasets(conf)["train"]
    assert len(calls) == 4 and calls[0].endswith("img0.png")
    samfeat_task.build_datasets(conf)  # cached: the teacher is not called again
    assert len(calls) == 4
    item = dataset[(0, 0)]
    assert item["has_groups1"] == 1 and item["has_embedding0"] == 1
    assert item["embedding0"].shape == (16, 8, 8) and item["edge1"].shape == (16, 16)
    g0, g1 = item["point_groups0"].numpy(), item["point_groups1"].numpy()
    valid = item["valid"].numpy() > 0
    agree = (g0 == g1)[valid & (g1 >= 0)]
    assert agree.mean() > 0.9  # groups were warped with H along with the image


# ---------------------------------------------------------------------------- training

def _params(path: Path) -> dict:
    return torch.load(path, weights_only=False)["model"]


@pytest.fixture(scope="module")
def straight_run(image_dir, tmp_path_factory):
    """10 steps straight through the CLI, checkpoints at steps 5 and 10."""
    from featloc.cli import main

    tmp = tmp_path_factory.mktemp("straight")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(samfeat_task, "_net_api",
                   lambda: (lambda conf: StandInSAMFeat(), standin_sample_descriptors))
        args = ["--quiet", "train", "--config", str(SMOKE), *_overrides(image_dir, tmp)]
        assert main(args) == 0
    return tmp


def test_training_run_writes_logs_checkpoints_and_export(straight_run):
    run = straight_run / "run"
    assert [p.name for p in checkpoint.checkpoints(run)] == ["ckpt_00000005.pt",
                                                              "ckpt_00000010.pt"]
    assert (run / "config.yaml").exists()
    lines = (run / "metrics.csv").read_text().splitlines()
    header = lines[0].split(",")
    for key in ("loss", "loss_det", "loss_des", "loss_wsc", "loss_dis", "loss_edge", "lr"):
        assert key in header
    assert len(lines) == 11
    weights = torch.load(run / "samfeat.pt", weights_only=True)["state_dict"]
    assert all(v.dtype == torch.float16 for v in weights.values() if v.is_floating_point())
    meta = (run / "samfeat.json").read_text()
    assert '"step": 10' in meta and '"commit"' in meta


def test_training_loss_goes_down(image_dir, tmp_path):
    """100 tiny steps lower the loss on a held-out batch (items of an epoch never trained on)
    and raise the descriptor match accuracy."""
    from torch.utils.data import default_collate

    from featloc.train.trainer import train

    overrides = _overrides(image_dir, tmp_path, "train.steps=100", "optim.lr=3e-3",
                           "train.ckpt_interval=1000", "train.log_interval=10")
    run = train(SMOKE, overrides)
    conf = load_config(SMOKE, overrides)
    dataset = samfeat_task.build_datasets(conf)["train"]
    batch = default_collate([dataset[(999, i)] for i in range(4)])
    torch.manual_seed(conf.train.seed)  # the trainer's initialisation
    before = StandInSAMFeat()
    after = StandInSAMFeat()
    after.load_state_dict(_params(run / "ckpt_00000100.pt"))
    with torch.no_grad():
        loss0, metrics0 = samfeat_task.compute_loss(before, batch, conf)
        loss1, metrics1 = samfeat_task.compute_loss(after, batch, conf)
    assert loss1.item() < 0.95 * loss0.item()
    assert metrics1["match_acc"] > metrics0["match_acc"]


def test_resume_is_exact_and_ignores_leftover_tmp(straight_run, image_dir, tmp_path):
    from featloc.train.trainer import train

    run = tmp_path / "run"
    shutil.copytree(straight_run / "run", run)
    (run / "ckpt_00000010.pt").unlink()  # "killed" after the checkpoint of step 5
    (run / "ckpt_00000010.pt.tmp").write_bytes(b"partial write")  # interrupted save
    shutil.copytree(straight_run / "cache", tmp_path / "cache")
    train(SMOKE, _overrides(image_dir, tmp_path), resume=True)
    resumed = _params(run / "ckpt_00000010.pt")
    straight = _params(straight_run / "run" / "ckpt_00000010.pt")
    for key in straight:
        assert torch.equal(resumed[key], straight[key]), key
    rows = (run / "metrics.csv").read_text().splitlines()
    assert len(rows) == 11  # the log was cut back to step 5 and continued


def test_signal_stops_at_a_step_boundary_and_resume_is_exact(straight_run, image_dir, tmp_path,
                                                            monkeypatch):
    import os
    import signal

    from featloc.train.trainer import train

    real = samfeat_task.compute_loss
    calls = []

    def interrupted(model, batch, conf):
        calls.append(1)
        if len(calls) == 3:  # SIGINT in the middle of step 3 (mid-epoch)
            os.kill(os.getpid(), signal.SIGINT)
        return real(model, batch, conf)

    monkeypatch.setattr(samfeat_task, "compute_loss", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(SMOKE, _overrides(image_dir, tmp_path))
    run = tmp_path / "run"
    assert [p.name for p in checkpoint.checkpoints(run)] == ["ckpt_00000003.pt"]
    monkeypatch.setattr(samfeat_task, "compute_loss", real)
    train(SMOKE, _overrides(image_dir, tmp_path), resume=True)
    resumed = _params(run / "ckpt_00000010.pt")
    straight = _params(straight_run / "run" / "ckpt_00000010.pt")
    for key in straight:
        assert torch.equal(resumed[key], straight[key]), key


def test_loader_workers_give_the_same_training(straight_run, image_dir, tmp_path):
    """Per-item seeding: a spawned DataLoader worker yields the very same batches."""
    from featloc.train.trainer import train

    shutil.copytree(straight_run / "cache", tmp_path / "cache")
    train(SMOKE, _overrides(image_dir, tmp_path, "train.num_workers=1", "train.steps=5"))
    with_worker = _params(tmp_path / "run" / "ckpt_00000005.pt")
    straight = _params(straight_run / "run" / "ckpt_00000005.pt")
    for key in straight:
        assert torch.equal(with_worker[key], straight[key]), key


def test_fresh_run_refuses_existing_checkpoints(straight_run, image_dir, tmp_path):
    from featloc.train.trainer import train

    shutil.copytree(straight_run / "run", tmp_path / "run")
    with pytest.raises(FileExistsError, match="--resume"):
        train(SMOKE, _overrides(image_dir, tmp_path))


def test_init_from_starts_a_new_run_from_a_checkpoint(straight_run, image_dir, tmp_path):
    """Fine-tuning: a fresh run (own step count) whose model starts from another run's
    parameters; with lr 0 one step leaves them exactly as loaded."""
    from featloc.train.trainer import train

    shutil.copytree(straight_run / "cache", tmp_path / "cache")
    source = straight_run / "run" / "ckpt_00000005.pt"
    train(SMOKE, _overrides(image_dir, tmp_path, f"train.init_from={source}", "train.steps=1",
                            "optim.lr=0", "optim.warmup_steps=0"))
    tuned = _params(tmp_path / "run" / "ckpt_00000001.pt")
    loaded = _params(source)
    fresh = StandInSAMFeat().state_dict()
    learned = [k for k in loaded if "running" not in k and "num_batches" not in k]
    assert learned and all(torch.equal(tuned[k], loaded[k]) for k in learned)
    assert any(not torch.equal(fresh[k], loaded[k]) for k in learned)
    with pytest.raises(FileNotFoundError, match="init_from"):
        train(SMOKE, _overrides(image_dir, tmp_path / "b", f"train.init_from={tmp_path / 'no'}"))
    torch.save({"state_dict": {}}, tmp_path / "empty.pt")
    with pytest.raises(ValueError, match="nor exported weights"):
        train(SMOKE, _overrides(image_dir, tmp_path / "c",
                                f"train.init_from={tmp_path / 'empty.pt'}"))
    torch.save({"state_dict": {"other.weight": torch.zeros(2)}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="does not fit"):
        train(SMOKE, _overrides(image_dir, tmp_path / "d",
                                f"train.init_from={tmp_path / 'other.pt'}"))


def test_init_from_exported_weights(straight_run, image_dir, tmp_path):
    """Fine-tuning shipped weights: the exported fp16 file seeds a new run in float32."""
    from featloc.train.trainer import train

    shutil.copytree(straight_run / "cache", tmp_path / "cache")
    exported = straight_run / "run" / "samfeat.pt"
    blob = torch.load(exported, weights_only=True)
    assert any(v.dtype == torch.float16 for v in blob["state_dict"].values())
    train(SMOKE, _overrides(image_dir, tmp_path, f"train.init_from={exported}", "train.steps=1",
                            "optim.lr=0", "optim.warmup_steps=0"))
    tuned = _params(tmp_path / "run" / "ckpt_00000001.pt")
    learned = [k for k in blob["state_dict"] if "running" not in k and "num_batches" not in k]
    assert learned
    for key in learned:
        assert tuned[key].dtype == torch.float32
        assert torch.equal(tuned[key], blob["state_dict"][key].float()), key


def test_export_only_from_the_latest_checkpoint(straight_run, image_dir, tmp_path):
    from featloc.train.trainer import train

    shutil.copytree(straight_run / "run", tmp_path / "run")
    (tmp_path / "run" / "samfeat.pt").unlink()
    train(SMOKE, _overrides(image_dir, tmp_path, "train.export_dtype=fp32"), export_only=True)
    blob = torch.load(tmp_path / "run" / "samfeat.pt", weights_only=True)
    assert all(v.dtype != torch.float16 for v in blob["state_dict"].values())


def test_lr_schedules():
    from featloc.train.optim import OptimConf, lr_factor

    samfeat = OptimConf(schedule="samfeat")
    # 30 epochs of 10 steps: factor(e) = 1 - e / 31, constant within an epoch
    assert lr_factor(0, samfeat, 300, 10) == 1.0
    assert lr_factor(19, samfeat, 300, 10) == pytest.approx(1 - 1 / 31)
    assert lr_factor(299, samfeat, 300, 10) == pytest.approx(1 - 29 / 31)
    linear = OptimConf(schedule="linear", warmup_steps=10, decay_start=0.5)
    assert lr_factor(0, linear, 100, 10) == pytest.approx(0.1)
    assert lr_factor(40, linear, 100, 10) == 1.0
    assert lr_factor(75, linear, 100, 10) == pytest.approx(0.5)


def test_missing_data_folder_is_a_clear_error(tmp_path):
    from featloc.train.trainer import train

    with pytest.raises(FileNotFoundError, match="nowhere"):
        train(SMOKE, _overrides(tmp_path / "nowhere", tmp_path))


def test_checkpoint_atomic_save_and_fallback(tmp_path):
    checkpoint.save(tmp_path, {"step": 1, "x": torch.ones(2)})
    checkpoint.save(tmp_path, {"step": 2, "x": torch.zeros(2)})
    (tmp_path / "ckpt_00000003.pt.tmp").write_bytes(b"junk")
    (tmp_path / "ckpt_00000004.pt").write_bytes(b"corrupt")  # not ours, but be robust
    state, path = checkpoint.load_latest(tmp_path)
    assert state["step"] == 2 and path.name == "ckpt_00000002.pt"
    checkpoint.save(tmp_path, {"step": 5}, keep_last_k=2)
    assert [p.name for p in checkpoint.checkpoints(tmp_path)] == ["ckpt_00000004.pt",
                                                                  "ckpt_00000005.pt"]


# ---------------------------------------------------------------------------- validation

def test_validate_on_hpatches_folder(tmp_path):
    from featloc.train.validate import ValConf, evaluate_hpatches

    rng = np.random.default_rng(0)
    for name in ("i_one", "v_one"):
        seq = tmp_path / name
        seq.mkdir()
        image = _texture(rng, 96, 128)
        cv2.imwrite(str(seq / "1.png"), image)
        for k in (2, 3):
            H = np.eye(3) if name.startswith("i_") else np.array(
                [[1.0, 0.05, 3.0], [-0.05, 1.0, 2.0], [0.0, 0.0, 1.0]])
            warped = cv2.warpPerspective(image, H, (128, 96))
            if name.startswith("i_"):
                warped = np.clip(warped.astype(int) + 20 * k, 0, 255).astype(np.uint8)
            cv2.imwrite(str(seq / f"{k}.png"), warped)
            np.savetxt(seq / f"H_1_{k}", H)
    from featloc.models.samfeat import SAMFeatNetConf, build_samfeat_net

    torch.manual_seed(0)
    model = build_samfeat_net(SAMFeatNetConf(arch="lite"))  # random init: exercises the code
    conf = ValConf(hpatches_dir=str(tmp_path), resize_max=128, max_keypoints=64,
                   detection_threshold=0.0)
    out = evaluate_hpatches(model, conf, torch.device("cpu"))
    assert model.training  # restored after validation
    for key in ("mma@3_i", "mma@3_v", "mma@3", "h_acc@3_v", "keypoints_i"):
        assert key in out
    assert all(0 <= out[k] <= 1 for k in out if k.startswith(("mma", "h_acc")))
    assert out["keypoints_i"] > 0


def test_label_peaks_are_refined_to_subpixel_positions():
    from featloc.train.labels import LabelConf, refine_peaks, select_keypoints

    # a smooth blob centred off the pixel grid: integer maxima are off by up to half a pixel
    ys, xs = np.mgrid[0:40, 0:50].astype(np.float64)
    centres = [(12.3, 9.8), (33.6, 27.45)]
    response = sum(np.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * 1.5 ** 2)) for cx, cy in centres)
    integer = select_keypoints(response.astype(np.float32), LabelConf(threshold=0.5))
    refined = select_keypoints(response.astype(np.float32), LabelConf(threshold=0.5, subpixel=True))
    order = np.argsort(integer[:, 0])
    truth = np.array(centres)
    assert np.abs(integer[order, :2] - truth).max() >= 0.3
    assert np.abs(refined[order, :2] - truth).max() < 0.1
    np.testing.assert_array_equal(refined[:, 2], integer[:, 2])  # same points, same scores
    # a flat profile or the image border: no shift
    flat = np.ones((5, 5))
    np.testing.assert_array_equal(np.stack(refine_peaks(flat, np.array([0, 2]), np.array([2, 4]))),
                                  [[0, 2], [2, 4]])


def test_label_cache_digest_unchanged_without_subpixel(tmp_path):
    """Caches made before the `subpixel` option existed stay valid; turning it on makes new ones."""
    from featloc.train.labels import LabelConf, build_labels

    class Images:
        digest, keys = "x", []

    plain = build_labels(Images(), LabelConf(), tmp_path).root
    refined = build_labels(Images(), LabelConf(subpixel=True), tmp_path).root
    assert plain.name == "labels-91d7bfb4fa19"  # the name the code before the option gave
    assert refined != plain and '"subpixel": true' in (refined / "settings.json").read_text()


def test_label_cache_digest_unchanged_by_later_fields_at_defaults(tmp_path):
    """`weights` and `normalise_percentile` at their defaults keep old cache names valid."""
    from featloc.train.labels import LabelConf, build_labels

    class Images:
        digest, keys = "x", []

    assert build_labels(Images(), LabelConf(weights="", normalise_percentile=99.9),
                        tmp_path).root.name == "labels-91d7bfb4fa19"
    assert build_labels(Images(), LabelConf(normalise_percentile=100),
                        tmp_path).root.name != "labels-91d7bfb4fa19"
    with pytest.raises(ValueError, match="normalise_percentile"):
        LabelConf(normalise_percentile=0)
    with pytest.raises(ValueError, match="num_homographies"):
        LabelConf(num_homographies=0)
    with pytest.raises(ValueError, match="network teacher"):
        LabelConf(detector="harris", weights="net.pt")


def test_samfeat_teacher_labels_are_its_own_detections():
    """With the identity warp only, a SAMFeat teacher's labels are the keypoints its extractor
    finds at the same threshold and NMS radius (the shipped samfeat-lite weights)."""
    from featloc.features.samfeat import SAMFeat, SAMFeatConf
    from featloc.train.labels import LabelConf, build_detector, label_image

    # gray (the labels are computed on gray images), sides multiples of 16 (no resize)
    image = cv2.cvtColor(_texture(np.random.default_rng(3), 192, 256), cv2.COLOR_RGB2GRAY)
    extractor = SAMFeat(SAMFeatConf(arch="lite", subpixel=False, detection_threshold=0.5,
                                    max_num_keypoints=0))
    prob = extractor.score_map(image)
    assert prob.shape == image.shape[:2] and prob.dtype == np.float32
    assert 0 <= prob.min() and prob.max() <= 1
    assert extractor.score_map(image[:100, :150]).shape == (100, 150)  # resized back
    conf = LabelConf(detector="samfeat-lite", num_homographies=1, threshold=0.5,
                     normalise_percentile=100, top_k=0, image_border_px=4, nms_radius=4)
    np.testing.assert_allclose(build_detector(conf)(image.astype(np.float32) / 255), prob,
                               atol=1e-6)
    labels = label_image(image, conf)[:, :2]
    keypoints = extractor.extract(image).keypoints
    assert len(labels) > 50
    # every label is a detection; the extractor's iterative NMS (SuperPoint's) also restores
    # maxima whose suppressor was itself suppressed, so it finds more
    found = np.linalg.norm(labels[:, None] - keypoints[None], axis=-1).min(1) < 1e-3
    assert found.mean() > 0.95
    assert 0.6 < len(labels) / len(keypoints) <= 1
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        build_detector(LabelConf(detector="samfeat", weights="missing.pt"))


def test_reprojection_term_is_optional_and_logged(image_dir, tmp_path):
    from torch.utils.data import default_collate

    base = _overrides(image_dir, tmp_path)
    batch = None
    for weight in (0.0, 1.0):
        conf = load_config(SMOKE, [*base, f"losses.reprojection={weight}"])
        if batch is None:
            dataset = samfeat_task.build_datasets(conf)["train"]
            batch = default_collate([dataset[(0, i)] for i in range(2)])
        torch.manual_seed(0)
        loss, metrics = samfeat_task.compute_loss(StandInSAMFeat(), batch, conf)
        assert ("loss_rep" in metrics) == (weight > 0)
    assert torch.isfinite(loss) and metrics["loss_rep"] > 0


def test_label_heatmap_nearest_and_bilinear():
    from featloc.train.data.pairs import label_heatmap

    points = np.array([[3.25, 4.5], [0.0, 0.0], [np.nan, 1.0], [9.6, 2.0]])
    nearest = label_heatmap(points, 8, "nearest")
    assert nearest[4, 3] == 1 and nearest[0, 0] == 1 and nearest.sum() == 2  # 9.6 is off the map
    bilinear = label_heatmap(points, 8, "bilinear")
    np.testing.assert_allclose(bilinear[4:6, 3:5], [[0.375, 0.125], [0.375, 0.125]])
    assert bilinear[0, 0] == 1 and bilinear.sum() == pytest.approx(2.0)
    # the weighted mean of the target is the label's sub-pixel position
    ys, xs = np.mgrid[3:7, 2:6]
    patch = bilinear[3:7, 2:6]
    assert (patch * xs).sum() / patch.sum() == pytest.approx(3.25)
    assert (patch * ys).sum() / patch.sum() == pytest.approx(4.5)
    # labels that share a pixel are capped at 1; a point just outside keeps its inside weight
    assert label_heatmap(np.array([[2.0, 2.0], [2.0, 2.0]]), 4, "bilinear")[2, 2] == 1
    edge = label_heatmap(np.array([[-0.5, 1.0]]), 4, "bilinear")
    assert edge[1, 0] == pytest.approx(0.5) and edge.sum() == pytest.approx(0.5)
    with pytest.raises(ValueError, match="data.heatmap"):
        load_config(SMOKE, ["data.heatmap=gaussian"])


def test_freeze_except_trains_the_detector_alone():
    from featloc.models.samfeat import SAMFeatNetConf, build_samfeat_net
    from featloc.train.optim import OptimConf, build_optimizer

    torch.manual_seed(0)
    net = build_samfeat_net(SAMFeatNetConf(arch="lite", lite_fine_channels=4))
    samfeat_task.freeze_except(net, ["heatmap", "alphas", "fine"])
    before = {k: v.clone() for k, v in net.state_dict().items()}
    optimizer = build_optimizer(net, OptimConf(lr=1e-2))
    net.train()
    x = torch.rand(2, 3, 32, 48) * 2 - 1
    out = net(x)
    (out["logits"].mean() + out["desc_map"].mean()).backward()
    optimizer.step()
    after = net.state_dict()
    changed = {k for k in after if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith(("heatmap", "alphas", "fine")) for k in changed)
    assert "fine.0.1.running_mean" in changed  # the new branch's BatchNorm still learns
    assert "block2.0.1.running_mean" not in changed  # frozen BatchNorm: statistics kept
    net.eval()
    with torch.no_grad():
        torch.testing.assert_close(net(x)["desc_map"], out["desc_map"].detach())
    with pytest.raises(ValueError, match="model.trainable"):
        samfeat_task.freeze_except(net, ["no_such_layer"])


def test_detector_branch_fine_tune_keeps_the_descriptors(image_dir, tmp_path, monkeypatch):
    """The v1 recipe in miniature: a real samfeat-lite run, then init_from it with the
    full-resolution branch added (parameters the checkpoint lacks keep their initialisation)
    and only the detector trainable: every descriptor parameter and statistic is unchanged."""
    from featloc.train.trainer import train

    monkeypatch.setattr(samfeat_task, "_net_api", REAL_NET_API)
    base = _overrides(image_dir, tmp_path / "a", "train.steps=2", "train.ckpt_interval=2")
    train(SMOKE, base)
    source = tmp_path / "a" / "run" / "ckpt_00000002.pt"
    tuned = _overrides(image_dir, tmp_path / "b", "train.steps=2", "train.ckpt_interval=2",
                       f"train.init_from={source}", "model.options.lite_fine_channels=4",
                       "model.trainable=[heatmap,alphas,fine]", "losses.descriptor=0",
                       "losses.wsc=0", "losses.distill=0", "losses.edge=0", "optim.lr=1e-2")
    shutil.copytree(tmp_path / "a" / "cache", tmp_path / "b" / "cache")
    train(SMOKE, tuned)
    before, after = _params(source), _params(tmp_path / "b" / "run" / "ckpt_00000002.pt")
    assert set(after) - set(before) >= {"heatmap1.weight", "fine.0.0.weight"}
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith(("heatmap", "alphas")) for k in changed)
    with pytest.raises(ValueError, match="does not fit"):  # unexpected keys stay an error
        train(SMOKE, _overrides(image_dir, tmp_path / "c", "train.steps=1",
                                f"train.init_from={tmp_path / 'b' / 'run' / 'ckpt_00000002.pt'}"))


def test_bf16_on_a_cpu_without_native_bfloat16_warns(monkeypatch, caplog):
    from featloc.features import samfeat as features
    from featloc.train.loop import make_scaler

    monkeypatch.setattr(features, "native_bfloat16", lambda device: False)
    with caplog.at_level("WARNING"):
        make_scaler(torch.device("cpu"), "bf16")
    assert "train.precision=fp32" in caplog.text
    caplog.clear()
    monkeypatch.setattr(features, "native_bfloat16", lambda device: True)
    with caplog.at_level("WARNING"):
        make_scaler(torch.device("cpu"), "bf16")
        make_scaler(torch.device("cpu"), "fp32")
    assert "train.precision=fp32" not in caplog.text
