"""Teachers (featloc.teachers): masks cache reader, classical regions, SAM through transformers
with a tiny randomly initialised model (no weights, no network), and `featloc teach`."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from featloc.config import ConfigError
from featloc.teachers import (
    TeacherTargets,
    build_teacher,
    edges_from_groups,
    masks_to_groups,
)
from featloc.teachers.cache import cache_paths, write_targets


def _write_png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), array)


# -- helpers -----------------------------------------------------------------------------------


class TestGroupHelpers:
    def test_edges_from_groups_marks_both_sides_then_dilates(self):
        groups = np.ones((7, 8), np.int32)
        groups[:, 4:] = 2
        edges = edges_from_groups(groups, dilation_px=0)
        assert edges.dtype == np.float32
        assert np.array_equal(np.flatnonzero(edges.any(0)), [3, 4])
        dilated = edges_from_groups(groups, dilation_px=1)
        assert np.array_equal(np.flatnonzero(dilated.any(0)), [2, 3, 4, 5])
        assert not edges_from_groups(np.zeros((5, 5), np.int32)).any()

    def test_masks_to_groups_finest_wins(self):
        masks = np.zeros((3, 6, 6), bool)
        masks[0] = True  # whole image
        masks[1, :3, :3] = True  # 9 px
        masks[2, 1:3, 1:3] = True  # 4 px, inside mask 1
        groups = masks_to_groups(masks)
        assert groups.dtype == np.int32
        assert groups[0, 5] == 1 and groups[0, 0] == 2 and groups[1, 1] == 3
        # equal areas: the lower index wins; uncovered pixels are 0
        tie = np.zeros((2, 4, 4), bool)
        tie[0, :2] = True
        tie[1, 1:3] = True
        g = masks_to_groups(tie)
        assert g[1, 0] == 1 and g[2, 0] == 2 and g[3, 0] == 0
        assert masks_to_groups(np.zeros((0, 3, 4), bool)).shape == (3, 4)


# -- masks -------------------------------------------------------------------------------------


@pytest.fixture
def cache(tmp_path):
    """A tiny cache: 16-bit ids above 255, an 8-bit soft edge map, a subfolder name."""
    root = tmp_path / "cache"
    seg = np.zeros((12, 16), np.uint16)
    seg[:, :8] = 300
    seg[:, 8:] = 70000 - 65536 + 1000  # 5464
    seg[:2, :2] = 0
    edges = np.zeros((12, 16), np.uint8)
    edges[:, 7:9] = 128
    _write_png(root / "segments" / "train" / "a.png", seg)
    _write_png(root / "edges" / "train" / "a.png", edges)
    return root, seg, edges


class TestMasksTeacher:
    def test_reads_16bit_ids_and_soft_edges(self, cache):
        root, seg, edges = cache
        teacher = build_teacher("masks", root=str(root))
        assert teacher.provides == {"groups", "edges"}
        out = teacher(np.zeros((12, 16, 3), np.uint8), "train/a.jpg")
        assert out.groups.dtype == np.int32 and out.edges.dtype == np.float32
        assert np.array_equal(out.groups, seg.astype(np.int32))
        assert out.groups.max() == 5464 and out.groups[0, 0] == 0
        np.testing.assert_allclose(out.edges, edges / 255.0, atol=1e-6)
        assert out.embedding is None

    def test_resizes_to_the_image(self, cache):
        root, _, _ = cache
        out = build_teacher("masks", root=str(root))(
            np.zeros((24, 32, 3), np.uint8), "train/a.png"
        )
        assert out.groups.shape == (24, 32) and out.edges.shape == (24, 32)
        assert set(np.unique(out.groups)) == {0, 300, 5464}  # nearest: no blended ids
        assert out.edges.max() <= 128 / 255 + 1e-6 and out.edges[:, 14:18].max() > 0.3

    def test_missing_files_are_named(self, cache):
        root, _, _ = cache
        teacher = build_teacher("masks", root=str(root))
        with pytest.raises(FileNotFoundError, match=r"segments/train/b\.png"):
            teacher(np.zeros((12, 16, 3), np.uint8), "train/b.jpg")
        (root / "embeddings").mkdir()
        teacher = build_teacher("masks", root=str(root))
        assert "embedding" in teacher.provides
        with pytest.raises(FileNotFoundError, match=r"embeddings/train/a\.npy"):
            teacher(np.zeros((12, 16, 3), np.uint8), "train/a.jpg")
        with pytest.raises(FileNotFoundError, match="edges"):
            build_teacher("masks", root=str(root / "segments"))

    def test_conf_is_validated(self, cache):
        with pytest.raises(ConfigError, match="rooot"):
            build_teacher("masks", rooot="x")
        with pytest.raises(ConfigError, match="unknown teacher"):
            build_teacher("sam2")
        # one mapping, as a training YAML gives it
        root, _, _ = cache
        assert build_teacher({"kind": "masks", "root": str(root)}).root == root
        with pytest.raises(ConfigError, match="kind"):
            build_teacher({"root": str(root)})

    def test_write_targets_round_trip(self, tmp_path):
        groups = np.arange(12 * 16, dtype=np.int32).reshape(12, 16) * 300  # up to 57300
        targets = TeacherTargets(
            groups=groups,
            edges=edges_from_groups(groups),
            embedding=np.random.default_rng(0)
            .normal(size=(4, 3, 2))
            .astype(np.float32),
        )
        write_targets(tmp_path, "x/y.jpg", targets)
        assert (
            cache_paths(tmp_path, "x/y.jpg").segments == tmp_path / "segments/x/y.png"
        )
        out = build_teacher("masks", root=str(tmp_path))(
            np.zeros((12, 16, 3), np.uint8), "x/y.jpg"
        )
        assert np.array_equal(out.groups, groups)
        assert np.array_equal(out.edges, targets.edges)
        assert out.embedding.dtype == np.float16
        np.testing.assert_array_equal(
            out.embedding, targets.embedding.astype(np.float16)
        )


@pytest.mark.shared_data
def test_masks_teacher_reads_bsds500():
    from conftest import require_shared_data

    from featloc.io.images import read_image

    root = require_shared_data("bsds500")
    name = "train/100075.jpg"
    if not (root / "images" / name).exists():
        pytest.skip(f"{root / 'images' / name} is absent")
    image = read_image(root / "images" / name)
    out = build_teacher("masks", root=str(root))(image, name)
    assert out.groups.shape == image.shape[:2] and out.groups.min() >= 1
    assert 0 < out.edges.mean() < 0.2 and out.edges.max() <= 1


# -- classical ---------------------------------------------------------------------------------


def _two_regions(h=64, w=80, split=37):
    image = np.full((h, w, 3), (40, 60, 200), np.uint8)
    image[:, split:] = (220, 200, 30)
    return image, split


@pytest.mark.parametrize("method", ["felzenszwalb", "slic"])
def test_classical_two_flat_regions(method):
    image, split = _two_regions()
    teacher = build_teacher("classical", method=method, n_segments=2, compactness=0.1)
    out = teacher(image, "synthetic.png")
    assert out.groups.dtype == np.int32 and out.groups.shape == image.shape[:2]
    assert out.groups.min() >= 1 and out.embedding is None
    left, right = out.groups[:, : split - 2], out.groups[:, split + 2 :]
    assert len(np.unique(left)) == 1 and len(np.unique(right)) == 1
    assert left[0, 0] != right[0, 0]
    cols = np.flatnonzero(out.edges.any(0))
    assert cols.min() >= split - 3 and cols.max() <= split + 2  # on the boundary only
    assert out.edges[:, split - 1 : split + 1].all()


def test_classical_canny_and_resize():
    image, split = _two_regions(128, 160, 75)
    out = build_teacher("classical", canny=True, resize_max=64)(image, "")
    assert out.groups.shape == (128, 160)
    assert out.edges[:, split - 1 : split + 1].all() and not out.edges[:, :60].any()
    with pytest.raises(ConfigError, match="method"):
        build_teacher("classical", method="watershed")


# -- sam ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sam_weights(tmp_path_factory):
    """A tiny randomly initialised SAM (128 px input, 8 x 8 embedding), saved locally."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    config = transformers.SamConfig(
        vision_config=dict(
            hidden_size=32,
            output_channels=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=128,
            patch_size=16,
            window_size=4,
            global_attn_indexes=[1],
            num_pos_feats=16,
            mlp_dim=64,
            initializer_range=0.02,
        ),
        prompt_encoder_config=dict(
            hidden_size=32, image_size=128, patch_size=16, mask_input_channels=4
        ),
        mask_decoder_config=dict(
            hidden_size=32,
            mlp_dim=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            iou_head_hidden_dim=32,
        ),
    )
    torch.manual_seed(0)
    model = transformers.SamModel(config).eval()
    with torch.no_grad():
        # random init gives mask logits ~1e-5; scale them to ~1 so that masks have
        # structure and the stability score is not 0 everywhere
        for mlp in model.mask_decoder.output_hypernetworks_mlps:
            mlp.proj_out.weight.mul_(1e5)
    path = tmp_path_factory.mktemp("sam-tiny")
    model.save_pretrained(path)
    return path


def _photo(h, w, seed):
    rng = np.random.default_rng(seed)
    image = cv2.resize(
        rng.integers(0, 255, (6, 8, 3), dtype=np.uint8),
        (w, h),
        interpolation=cv2.INTER_CUBIC,
    )
    return image


# generator settings that keep many masks of the random model (its noisy masks all have
# image-sized boxes, so box NMS would keep one)
LOOSE = dict(
    points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.3, nms="mask"
)


class TestSamTeacher:
    def test_outputs(self, sam_weights):
        teacher = build_teacher("sam", weights=str(sam_weights), device="cpu", **LOOSE)
        assert teacher.provides == {"groups", "edges", "embedding"}
        image = _photo(60, 100, 0)
        out = teacher(image, "a.jpg")
        # 100 px -> 128, 60 px -> 77: 8 x 5 of the 8 x 8 encoder cells cover the image
        assert out.embedding.dtype == np.float16 and out.embedding.shape == (32, 5, 8)
        assert out.groups.dtype == np.int32 and out.groups.shape == (60, 100)
        assert out.edges.dtype == np.float32 and out.edges.shape == (60, 100)
        assert out.groups.max() > 1
        full = build_teacher(
            "sam",
            weights=str(sam_weights),
            device="cpu",
            groups=False,
            crop_embedding=False,
        )
        emb = full(image, "a.jpg")
        assert emb.provided == {"embedding"} and emb.embedding.shape == (32, 8, 8)
        np.testing.assert_array_equal(emb.embedding[:, :5], out.embedding)

    def test_groups_follow_the_kept_masks(self, sam_weights):
        teacher = build_teacher("sam", weights=str(sam_weights), device="cpu", **LOOSE)
        image = _photo(50, 70, 1)
        found = teacher.generate_masks(image)
        k = len(found)
        assert 2 <= k <= 3 * 16
        assert found.masks.shape == (k, 50, 70) and found.masks.dtype == bool
        assert (found.iou_scores[:-1] >= found.iou_scores[1:]).all()
        assert (found.stability_scores > 0.3).all()
        assert found.masks.reshape(k, -1).any(1).all()
        out = teacher(image, "b.png")
        assert np.array_equal(out.groups, masks_to_groups(found.masks))
        # brute force: each covered pixel has the id of the smallest mask covering it
        areas = found.masks.reshape(k, -1).sum(1)
        cover = np.where(found.masks, areas[:, None, None], np.iinfo(np.int64).max)
        finest = cover.argmin(0) + 1
        covered = found.masks.any(0)
        assert np.array_equal(out.groups[covered], finest[covered])
        assert not out.groups[~covered].any()
        assert np.array_equal(out.edges, edges_from_groups(out.groups, 1))
        # NMS: no two kept masks overlap by more than the threshold (0.7)
        flat = found.masks.reshape(k, -1).astype(np.float64)
        inter = flat @ flat.T
        iou = inter / (areas[:, None] + areas[None, :] - inter)
        np.fill_diagonal(iou, 0)
        assert iou.max() <= 0.7
        # default (SAM) thresholds are stricter: never more masks
        strict = build_teacher(
            "sam", weights=str(sam_weights), device="cpu", points_per_side=4
        )
        assert len(strict.generate_masks(image)) <= k

    def test_preprocessing_matches_transformers(self, sam_weights):
        pil_sam = pytest.importorskip(
            "transformers.models.sam.image_processing_pil_sam"
        )
        teacher = build_teacher(
            "sam", weights=str(sam_weights), device="cpu", groups=False
        )
        image = _photo(45, 90, 2)
        processor = pil_sam.SamImageProcessorPil(
            size={"longest_edge": 128}, pad_size={"height": 128, "width": 128}
        )
        ref = processor(images=image, return_tensors="np")
        ours, resized = teacher.preprocess(image)
        assert tuple(ref["reshaped_input_sizes"][0]) == resized == (64, 128)
        np.testing.assert_allclose(ours, ref["pixel_values"][0], atol=1e-5)

    def test_nms_helpers(self):
        import torch

        from featloc.teachers.sam import box_iou, mask_iou, masks_to_boxes, nms

        masks = torch.zeros((3, 10, 10), dtype=torch.bool)
        masks[0, 2:6, 1:5] = True
        masks[1, 2:6, 1:6] = True
        masks[2, 8:, 8:] = True
        boxes = masks_to_boxes(masks)
        assert boxes.tolist() == [[1, 2, 4, 5], [1, 2, 5, 5], [8, 8, 9, 9]]
        iou = box_iou(boxes, boxes)
        assert iou[0, 1].item() == pytest.approx(9 / 12)
        keep = nms(iou, torch.tensor([0.5, 0.9, 0.1]), 0.7)
        assert keep.tolist() == [1, 2]
        assert nms(mask_iou(masks), torch.tensor([0.5, 0.9, 0.1]), 0.85).tolist() == [
            1,
            0,
            2,
        ]

    def test_missing_weights(self, tmp_path):
        with pytest.raises(FileNotFoundError, match="config.json"):
            build_teacher("sam", weights=str(tmp_path / "nope"))
        with pytest.raises(ConfigError, match="weights"):
            build_teacher("sam")


# -- featloc teach -----------------------------------------------------------------------------


def test_teach_cli_sam_writes_the_masks_layout(sam_weights, tmp_path):
    from featloc.cli import main

    images, output = tmp_path / "images", tmp_path / "cache"
    _write_png(images / "one.png", cv2.cvtColor(_photo(40, 64, 3), cv2.COLOR_RGB2BGR))
    _write_png(
        images / "sub" / "two.jpg", cv2.cvtColor(_photo(48, 36, 4), cv2.COLOR_RGB2BGR)
    )
    (images / "sub" / "broken.jpg").write_bytes(b"not a jpeg")
    args = [
        "--quiet",
        "teach",
        "--teacher",
        "sam",
        "--weights",
        str(sam_weights),
        "--images",
        str(images),
        "--output",
        str(output),
        "--points-per-side",
        "4",
        "--device",
        "cpu",
        "--teacher-conf",
        "pred_iou_thresh=0",
        "stability_score_thresh=0.3",
    ]
    assert main(args) == 1  # the broken image is reported, the others are done
    for stem in ("one", "sub/two"):
        seg = cv2.imread(str(output / "segments" / f"{stem}.png"), cv2.IMREAD_UNCHANGED)
        edge = cv2.imread(str(output / "edges" / f"{stem}.png"), cv2.IMREAD_UNCHANGED)
        assert seg.dtype == np.uint16 and edge.dtype == np.uint8
        assert set(np.unique(edge)) <= {0, 255}
        assert np.load(output / "embeddings" / f"{stem}.npy").dtype == np.float16
    assert not (output / "segments" / "sub" / "broken.png").exists()
    assert not list(output.rglob(".*.tmp"))
    record = json.loads((output / "teacher.json").read_text())
    assert record["teacher"] == "sam" and record["conf"]["points_per_side"] == 4

    # the masks teacher reads back exactly what the sam teacher computes
    from featloc.io.images import read_image

    sam = build_teacher(
        "sam",
        weights=str(sam_weights),
        device="cpu",
        points_per_side=4,
        pred_iou_thresh=0.0,
        stability_score_thresh=0.3,
    )
    cached = build_teacher("masks", root=str(output))
    assert cached.provides == {"groups", "edges", "embedding"}
    image = read_image(images / "sub" / "two.jpg")
    direct, read = sam(image, "sub/two.jpg"), cached(image, "sub/two.jpg")
    assert np.array_equal(read.groups, direct.groups) and read.groups.max() > 0
    assert np.array_equal(read.edges, direct.edges)
    assert np.array_equal(read.embedding, direct.embedding)

    # resumable: a rerun skips what is stored; another configuration is refused
    before = (output / "segments" / "one.png").stat().st_mtime_ns
    assert main(args) == 1
    assert (output / "segments" / "one.png").stat().st_mtime_ns == before
    assert main(args[:-2] + ["pred_iou_thresh=0.5"]) == 2
    assert (
        main(
            [
                "--quiet",
                "teach",
                "--teacher",
                "classical",
                "--weights",
                "x",
                "--images",
                str(images),
                "--output",
                str(tmp_path / "c"),
            ]
        )
        == 2
    )


def test_teach_cli_classical(tmp_path):
    from featloc.cli import main

    images, output = tmp_path / "images", tmp_path / "cache"
    image, split = _two_regions()
    _write_png(images / "a.png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    assert (
        main(
            [
                "--quiet",
                "teach",
                "--teacher",
                "classical",
                "--images",
                str(images),
                "--output",
                str(output),
            ]
        )
        == 0
    )
    out = build_teacher("masks", root=str(output))(image, "a.png")
    assert out.groups[0, 0] != out.groups[0, -1] and out.edges[:, split].all()
    assert not (output / "embeddings").exists()
