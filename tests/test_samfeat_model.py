"""SAMFeat networks, shared sampling/detection functions, extractor contract, ONNX backend.

Networks are random-init (no trained weights are needed); images are small.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from featloc.config import build, make_conf
from featloc.features import samfeat as samfeat_features
from featloc.features.samfeat import SAMFeat, SAMFeatConf, round_to_multiple
from featloc.models.samfeat import (
    OUTPUT_KEYS,
    SAMFeatNetConf,
    _simple_nms_opencv,
    _simple_nms_torch,
    bilinear_sample,
    build_samfeat_net,
    detect_keypoints,
    fold_distillation,
    load_samfeat_net,
    max_pool_same,
    refine_subpixel,
    sample_descriptors,
    save_samfeat_net,
    simple_nms,
    widen_narrow_convs,
)
from featloc.types import Features


@pytest.fixture(scope="module")
def lite_net():
    torch.manual_seed(0)
    return build_samfeat_net(SAMFeatNetConf(arch="lite")).eval()


@pytest.fixture(scope="module")
def vgg_net():
    torch.manual_seed(0)
    return build_samfeat_net(SAMFeatNetConf(arch="vgg")).eval()


def _texture(h, w, seed=0):
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (h // 4 + 1, w // 4 + 1, 3)).astype(np.float32)
    big = torch.nn.functional.interpolate(
        torch.from_numpy(small).permute(2, 0, 1)[None], scale_factor=4, mode="bilinear"
    )[0].permute(1, 2, 0).numpy()
    return np.ascontiguousarray(big[:h, :w]).clip(0, 255).astype(np.uint8)


def _extractor(net, **conf):
    return SAMFeat(make_conf(SAMFeatConf, {"arch": net.conf.arch}, conf), net=net)


# ------------------------------------------------------------------------------------------
# Networks


def _check_shapes(out, b, h, w):
    assert set(out) == set(OUTPUT_KEYS)
    assert out["logits"].shape == (b, 1, h, w)
    assert out["desc_map"].shape == (b, 128, h // 4, w // 4)
    assert out["weight_map"].shape == (b, 1, h // 4, w // 4)
    assert out["distill"].shape == (b, 256, h // 8, w // 8)
    assert out["edge"].shape == (b, 1, h // 4, w // 4)
    assert (out["weight_map"] > 0).all()
    assert ((out["edge"] > 0) & (out["edge"] < 1)).all()


@pytest.mark.parametrize("hw", [(400, 400), (480, 640)])
def test_forward_shapes_vgg(vgg_net, hw):
    x = torch.rand(1, 3, *hw) * 2 - 1
    with torch.inference_mode():
        _check_shapes(vgg_net(x), 1, *hw)


@pytest.mark.parametrize("hw", [(400, 400), (480, 640)])
@pytest.mark.parametrize("eag_mode", ["spatial", "row_official"])
def test_forward_shapes_lite(hw, eag_mode):
    torch.manual_seed(0)
    net = build_samfeat_net(SAMFeatNetConf(arch="lite", eag_mode=eag_mode)).eval()
    x = torch.rand(2, 3, *hw) * 2 - 1
    with torch.inference_mode():
        _check_shapes(net(x), 2, *hw)


def test_forward_shapes_vgg_spatial_eag():
    net = build_samfeat_net(SAMFeatNetConf(arch="vgg", eag_mode="spatial", spatial_kv_pool=2))
    with torch.inference_mode():
        _check_shapes(net(torch.rand(2, 3, 64, 96) * 2 - 1), 2, 64, 96)


@pytest.mark.parametrize("eag_mode", ["row_official", "spatial"])
def test_vgg_parameter_count_is_published(eag_mode):
    net = build_samfeat_net(SAMFeatNetConf(arch="vgg", eag_mode=eag_mode))
    assert sum(p.numel() for p in net.parameters()) == 2_109_267  # methods.md 7.2


def test_lite_is_small_and_trainable(lite_net):
    assert sum(p.numel() for p in lite_net.parameters()) < 500_000
    net = build_samfeat_net(SAMFeatNetConf(arch="lite")).train()
    out = net(torch.rand(2, 3, 32, 48) * 2 - 1)
    sum(v.float().mean() for v in out.values()).backward()
    assert all(p.grad is not None for p in net.parameters())


@pytest.mark.parametrize("arch", ["lite", "vgg"])
def test_eag_off_cuts_the_edge_out_of_detection_and_description(arch):
    """The ablation baseline (eag=False): logits and descriptors no longer depend on the edge
    head, which still gives its map; with EAG on they do."""
    x = torch.rand(1, 3, 32, 48) * 2 - 1
    for eag in (False, True):
        torch.manual_seed(0)
        net = build_samfeat_net(SAMFeatNetConf(arch=arch, eag=eag)).eval()
        out = net(x)
        _check_shapes(out, 1, 32, 48)
        (out["logits"].sum() + out["desc_map"].sum()).backward()
        touched = net.edge_head.weight.grad is not None and net.edge_head.weight.grad.abs().sum() > 0
        assert touched == eag
        assert (net.edge_attention is not None) == eag


def test_input_must_be_multiple_of_16(lite_net):
    with pytest.raises(ValueError, match="multiples of 16"):
        lite_net(torch.zeros(1, 3, 40, 48))


def test_bad_net_conf():
    with pytest.raises(ValueError, match="arch"):
        SAMFeatNetConf(arch="resnet")
    with pytest.raises(ValueError, match="eag_mode"):
        SAMFeatNetConf(eag_mode="rows")


# ------------------------------------------------------------------------------------------
# Sampling convention (methods.md 7.1)


def test_sample_descriptors_constant_gradient():
    """Maps holding a linear function of the pixel position are sampled exactly."""
    h, w = 32, 48
    for stride in (1, 4, 8):
        hs, ws = h // stride, w // stride
        # cell centre of cell (i, j) at full resolution: stride * j + (stride - 1) / 2
        xs = stride * torch.arange(ws, dtype=torch.float32) + (stride - 1) / 2
        ys = stride * torch.arange(hs, dtype=torch.float32) + (stride - 1) / 2
        gx, gy = xs[None].expand(hs, ws), ys[:, None].expand(hs, ws)
        k = 100.0
        desc_map = torch.stack([gx, gy, torch.full_like(gx, k)])[None]
        weight_map = (2 * gx + 3 * gy + 1)[None, None]
        lo = (stride - 1) / 2
        points = torch.tensor([[[lo, lo], [10.25, 7.5], [w - 1 - lo, h - 1 - lo], [20.0, 3.7]]])
        desc, weights = sample_descriptors(desc_map, weight_map, points, (h, w))
        assert desc.shape == (1, 4, 3) and weights.shape == (1, 4)
        torch.testing.assert_close(desc.norm(dim=-1), torch.ones(1, 4))
        x, y = points[0, :, 0], points[0, :, 1]
        torch.testing.assert_close(desc[0, :, 0] / desc[0, :, 2], x / k)
        torch.testing.assert_close(desc[0, :, 1] / desc[0, :, 2], y / k)
        torch.testing.assert_close(weights[0], 2 * x + 3 * y + 1)


def test_bilinear_sample_equals_grid_sample_and_handles_bfloat16():
    torch.manual_seed(0)
    maps = torch.randn(2, 5, 12, 16)
    points = torch.rand(2, 50, 2) * torch.tensor([80.0, 60.0]) - 8  # some outside the image
    grid = ((points + 0.5) * torch.tensor([2 / 64, 2 / 48]) - 1)[:, :, None]
    expected = F.grid_sample(maps, grid, mode="bilinear", padding_mode="border",
                             align_corners=False)[..., 0].transpose(1, 2)
    torch.testing.assert_close(bilinear_sample(maps, points, (48, 64)), expected)
    channels_last = maps.bfloat16().contiguous(memory_format=torch.channels_last)
    values = bilinear_sample(channels_last, points, (48, 64))
    assert values.dtype == torch.float32
    torch.testing.assert_close(values, expected, atol=0.05, rtol=0.02)
    # gradients flow to the map (the training losses sample through it)
    maps.requires_grad_(True)
    bilinear_sample(maps, points, (48, 64)).sum().backward()
    assert maps.grad.abs().sum() > 0


def test_sample_descriptors_border_padding_and_empty():
    desc_map = torch.arange(4.0).reshape(1, 1, 1, 4).repeat(1, 2, 1, 1) + 1
    weight_map = torch.arange(4.0).reshape(1, 1, 1, 4) + 1
    # outside the image the nearest border cell is used
    points = torch.tensor([[[-3.0, 0.0], [40.0, 0.0]]])
    _, weights = sample_descriptors(desc_map, weight_map, points, (4, 16))
    torch.testing.assert_close(weights, torch.tensor([[1.0, 4.0]]))
    desc, weights = sample_descriptors(desc_map, weight_map, torch.zeros(1, 0, 2), (4, 16))
    assert desc.shape == (1, 0, 2) and weights.shape == (1, 0)


# ------------------------------------------------------------------------------------------
# Detection


@pytest.mark.parametrize("radius", [1, 2, 3, 4])
def test_max_pool_same_equals_max_pool2d(radius):
    x = torch.randn(2, 23, 31)
    expected = F.max_pool2d(x[:, None], 2 * radius + 1, 1, radius)[:, 0]
    assert torch.equal(max_pool_same(x, radius), expected)


def _peaks(h, w, peaks):
    scores = torch.zeros(1, h, w)
    for x, y, s in peaks:
        scores[0, y, x] = s
    return scores


def test_nms_keeps_the_highest_within_radius():
    scores = _peaks(30, 30, [(10, 10, 0.9), (13, 12, 0.8), (20, 20, 0.7)])
    (kp, s), = detect_keypoints(scores, 0.5, nms_radius=4, border=0)
    assert kp.tolist() == [[10, 10], [20, 20]]
    torch.testing.assert_close(s, torch.tensor([0.9, 0.7]))
    # radius 2: (13, 12) is outside (10, 10)'s window
    (kp, _), = detect_keypoints(scores, 0.5, nms_radius=2, border=0)
    assert kp.tolist() == [[10, 10], [13, 12], [20, 20]]


def test_nms_iterations_recover_points_suppressed_by_suppressed_points():
    # a > b > c on a line: a suppresses b; b would suppress c but b is gone, and c is
    # outside a's window, so greedy NMS (published) keeps a and c.
    scores = _peaks(20, 40, [(10, 10, 0.9), (13, 10, 0.8), (16, 10, 0.7)])
    single = simple_nms(scores, 4, iterations=0, threshold=0.5)
    assert single.sum() == 1 and single[0, 10, 10]
    (kp, _), = detect_keypoints(scores, 0.5, nms_radius=4, border=0, nms_iterations=2)
    assert kp.tolist() == [[10, 10], [16, 10]]


@pytest.mark.parametrize("case", range(6))
def test_opencv_nms_equals_torch_nms(case):
    # the CPU float32 path (OpenCV morphology) must give the torch path's mask bit for bit,
    # with ties, -inf scores, thresholds or none, any radius and number of rounds
    g = torch.Generator().manual_seed(case)
    for trial in range(40):
        b, h, w = 1 + trial % 2, int(torch.randint(1, 60, (1,), generator=g)), \
            int(torch.randint(1, 60, (1,), generator=g))
        scores = torch.randn(b, h, w, generator=g)
        if case % 3 == 1:
            scores = (scores * 3).round() / 3
        if case % 3 == 2:
            scores[scores < -0.5] = float("-inf")
        radius, rounds = 1 + trial % 5, trial % 4
        threshold = None if trial % 3 == 0 else float(torch.randn(1, generator=g))
        fast = _simple_nms_opencv(scores, radius, rounds, threshold)
        assert fast.dtype == torch.bool
        assert torch.equal(fast, _simple_nms_torch(scores, radius, rounds, threshold))


def test_threshold_border_and_top_k():
    peaks = [(2, 15, 0.99), (4, 15, 0.2), (15, 4, 0.95), (15, 15, 0.6), (25, 25, 0.7),
             (25, 8, 0.8), (8, 27, 0.4)]
    scores = _peaks(32, 32, peaks)
    (kp, s), = detect_keypoints(scores, 0.5, nms_radius=1, border=4)
    # (2, 15) is inside the 4-px border; (4, 15) and (8, 27) are below the threshold;
    # (15, 4) is exactly 4 px from the border and kept (SuperPoint's rule)
    assert kp.tolist() == [[15, 4], [25, 8], [25, 25], [15, 15]]
    assert torch.all(s[:-1] >= s[1:])
    (kp, s), = detect_keypoints(scores, 0.5, nms_radius=1, border=4, max_num_keypoints=2)
    assert kp.tolist() == [[15, 4], [25, 8]]
    (kp, s), = detect_keypoints(torch.zeros(1, 16, 16), 0.5)
    assert kp.shape == (0, 2) and s.shape == (0,)


def test_detect_keypoints_batch():
    scores = torch.cat([_peaks(16, 16, [(8, 8, 0.9)]), _peaks(16, 16, [])])
    out = detect_keypoints(scores, 0.5, nms_radius=2, border=2)
    assert [len(kp) for kp, _ in out] == [1, 0]


def test_subpixel_refinement_on_a_smooth_peak():
    h, w = 24, 24
    x0, y0 = 10.3, 12.6
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    logits = -((xs - x0) ** 2 + (ys - y0) ** 2) / (2 * 0.6**2)
    (kp_int, _), = detect_keypoints(logits[None], -1.0, nms_radius=4, border=2)
    (kp, _), = detect_keypoints(logits[None], -1.0, nms_radius=4, border=2, subpixel_radius=2)
    assert kp_int.tolist() == [[10, 13]]
    err_int = (kp_int[0] - torch.tensor([x0, y0])).norm()
    err = (kp[0] - torch.tensor([x0, y0])).norm()
    assert err < 0.05 < err_int
    # a symmetric peak does not move; the window is clipped at the image border
    flat = torch.zeros(5, 5)
    torch.testing.assert_close(refine_subpixel(flat, torch.tensor([[2.0, 2.0]]), 2),
                               torch.tensor([[2.0, 2.0]]))
    assert refine_subpixel(flat, torch.tensor([[0.0, 0.0]]), 1)[0].tolist() == [0.5, 0.5]


# ------------------------------------------------------------------------------------------
# Extractor


class _BlobNet(nn.Module):
    """A fake network: logits high on bright pixels; descriptors encode the position."""

    def __init__(self):
        super().__init__()
        self.conf = SAMFeatNetConf(arch="lite")

    def forward(self, image):
        b, _, h, w = image.shape
        # log-intensity: a Gaussian blob becomes a quadratic peak, which the soft-argmax
        # locates to a few hundredths of a pixel
        logits = torch.log(((image[:, :1] + 1) / 2).clamp_min(1e-3))
        ys, xs = torch.meshgrid(torch.arange(h // 4), torch.arange(w // 4), indexing="ij")
        desc = torch.stack([xs, ys, torch.ones_like(xs)], 0).float()
        desc = F.pad(desc, (0, 0, 0, 0, 0, 125))[None].expand(b, -1, -1, -1)
        return {
            "logits": logits,
            "desc_map": desc,
            "weight_map": torch.full((b, 1, h // 4, w // 4), 2.0),
            "distill": torch.zeros(b, 256, h // 8, w // 8),
            "edge": torch.full((b, 1, h // 4, w // 4), 0.5),
        }


def _blob_image(h, w, centres, sigma=2.0):
    ys, xs = np.mgrid[:h, :w].astype(np.float32)
    img = np.zeros((h, w), np.float32)
    for x, y in centres:
        img = np.maximum(img, np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * sigma**2)))
    return (img * 255).round().astype(np.uint8)


@pytest.mark.parametrize("resize_max", [0, 100])
def test_keypoints_in_original_pixels(resize_max):
    # 150 x 230: not a multiple of 16, so the network input is resized per axis, and
    # resize_max adds a second resize; blob centres must come back where they are
    centres = [(40.3, 30.7), (120.6, 90.2), (190.8, 60.4)]
    scale = 1.0 if not resize_max else resize_max / 230
    image = _blob_image(150, 230, centres, sigma=1.0 / scale)  # ~1 px in the network input
    ex = _extractor(_BlobNet(), resize_max=resize_max, detection_threshold=0.1, subpixel=True,
                    border_px=2, descriptor_output="unit")
    features = ex.extract(image)
    assert features.image_size == (230, 150)
    assert len(features) == 3
    order = np.argsort(features.keypoints[:, 0])
    np.testing.assert_allclose(features.keypoints[order], centres, atol=0.1 / scale)
    # the descriptors encode the 1/4-map cell position: sampling happens at the keypoint
    net_size = np.array([224, 144]) if not resize_max else np.array([96, 64])
    kp_net = (features.keypoints[order] + 0.5) * net_size / [230, 150] - 0.5
    desc = features.descriptors[order]
    np.testing.assert_allclose(desc[:, :2] / desc[:, 2:3], (kp_net - 1.5) / 4, atol=1e-3)


def test_extractor_contract(lite_net):
    image = _texture(70, 90)
    ex = _extractor(lite_net, detection_threshold=0.01, max_num_keypoints=40)
    features = ex.extract(image)
    assert isinstance(features, Features)
    assert len(features) == 40
    assert features.keypoints.dtype == np.float32 and features.keypoints.shape == (40, 2)
    assert features.keypoint_scores.dtype == np.float32
    assert features.descriptors.dtype == np.float32 and features.descriptors.shape == (40, 128)
    assert features.image_size == (90, 70)
    assert np.all(features.keypoints >= 0) and np.all(features.keypoints <= [89, 69])
    assert np.all((features.keypoint_scores >= 0.01) & (features.keypoint_scores <= 1))
    assert np.all(np.diff(features.keypoint_scores) <= 0)
    # weighted descriptors: norm = attention weight > 0; unit: norm 1
    assert np.all(np.linalg.norm(features.descriptors, axis=1) > 0)
    unit = _extractor(lite_net, detection_threshold=0.01, max_num_keypoints=40,
                      descriptor_output="unit").extract(image)
    np.testing.assert_allclose(np.linalg.norm(unit.descriptors, axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(unit.keypoints, features.keypoints)
    # gray input and float input are accepted
    assert len(ex.extract(image.mean(2).astype(np.uint8))) == 40
    assert len(ex.extract(image / 255.0)) == 40


def test_uniform_image_gives_well_formed_empty_features():
    torch.manual_seed(0)
    net = build_samfeat_net(SAMFeatNetConf(arch="lite")).eval()
    with torch.no_grad():  # a detector that, like a trained one, rejects flat regions
        net.alphas.copy_(torch.tensor([1.0, 0.0, 0.0, 0.0]))
        net.heatmap12.bias.fill_(-50.0)
    features = _extractor(net).extract(np.full((48, 64, 3), 128, np.uint8))
    assert len(features) == 0
    assert features.keypoints.shape == (0, 2) and features.descriptors.shape == (0, 128)
    assert features.keypoint_scores.shape == (0,)
    assert features.image_size == (64, 48)


def test_arch_defaults_and_conf_validation(lite_net, vgg_net):
    lite = _extractor(lite_net)
    assert lite.conf.detection_threshold == 0.5 and lite.conf.subpixel
    assert not lite.conf.add_edge_to_logits
    vgg = _extractor(vgg_net)  # the published inference settings
    assert vgg.conf.detection_threshold == 0.9 and vgg.conf.add_edge_to_logits
    assert not vgg.conf.subpixel and vgg.conf.nms_radius == 4 and vgg.conf.border_px == 4
    assert not vgg.conf.grayscale
    # precision "auto": bfloat16 only for lite on hardware with native bfloat16
    expected = "bfloat16" if samfeat_features.native_bfloat16(torch.device("cpu")) else "float32"
    assert lite.conf.precision == expected and vgg.conf.precision == "float32"
    assert _extractor(lite_net, backend="onnx").conf.precision == "float32"
    with pytest.raises(ValueError, match="float32"):
        _extractor(lite_net, backend="onnx", precision="bfloat16")
    with pytest.raises(ValueError, match="backend"):
        _extractor(lite_net, backend="tensorrt")
    with pytest.raises(ValueError, match="is 'lite' but arch='vgg'"):
        SAMFeat(SAMFeatConf(arch="vgg"), net=lite_net)
    # numpy rounding (half to even), as the official inference
    assert round_to_multiple(100) == 96 and round_to_multiple(110) == 112
    assert round_to_multiple(104) == 96 and round_to_multiple(120) == 128
    assert round_to_multiple(5) == 16


def test_extract_batch_matches_single(lite_net):
    images = [_texture(64, 80, 0), _texture(70, 90, 1), _texture(64, 80, 2)]
    ex = _extractor(lite_net, detection_threshold=0.01, max_num_keypoints=30, batch_size=2)
    batched = ex.extract_batch(images)
    for image, features in zip(images, batched, strict=True):
        single = ex.extract(image)
        np.testing.assert_allclose(features.keypoints, single.keypoints, atol=1e-4)
        np.testing.assert_allclose(features.descriptors, single.descriptors, atol=1e-4)


def test_bfloat16_precision_close_to_float32(lite_net):
    image = _texture(64, 80)
    fp32 = _extractor(lite_net, detection_threshold=0.01).extract(image)
    bf16 = _extractor(lite_net, detection_threshold=0.01, precision="bfloat16").extract(image)
    assert abs(len(fp32) - len(bf16)) <= 0.2 * len(fp32)
    assert bf16.descriptors.dtype == np.float32


def test_missing_weights_error(monkeypatch, tmp_path):
    missing = tmp_path / "samfeat-lite.pt"
    monkeypatch.setattr(samfeat_features, "shipped_weights", lambda arch: missing)
    with pytest.raises(FileNotFoundError) as info:
        build("extractor", "samfeat-lite")
    message = str(info.value)
    assert "samfeat-lite.pt" in message
    assert "featloc train --config configs/train/samfeat-lite.yaml" in message
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        build("extractor", "samfeat", weights=str(tmp_path / "nope.pt"))


def test_weights_file_round_trip(lite_net, tmp_path):
    path = save_samfeat_net(lite_net, tmp_path / "lite.pt")
    from_file = build("extractor", "samfeat-lite", weights=str(path), detection_threshold=0.01,
                      max_num_keypoints=25)
    in_memory = _extractor(lite_net, detection_threshold=0.01, max_num_keypoints=25)
    image = _texture(48, 64)
    a, b = from_file.extract(image), in_memory.extract(image)
    np.testing.assert_allclose(a.keypoints, b.keypoints, atol=1e-4)
    np.testing.assert_allclose(a.descriptors, b.descriptors, atol=1e-4)
    with pytest.raises(ValueError, match="do not fit"):
        torch.save(build_samfeat_net(SAMFeatNetConf(arch="vgg")).state_dict(), tmp_path / "v.pt")
        build("extractor", "samfeat-lite", weights=str(tmp_path / "v.pt"))


def test_weights_from_a_training_checkpoint(lite_net, tmp_path):
    # a checkpoint of the samfeat task (ckpt_<step>.pt, with RNG states and the config) loads
    # like the exported file, with the network options of its config
    torch.manual_seed(3)
    net = build_samfeat_net(SAMFeatNetConf(arch="lite", eag=False)).eval()
    ckpt = tmp_path / "ckpt_00000010.pt"
    torch.save({"model": net.state_dict(), "task": "samfeat", "step": 10,
                "rng": {"numpy": np.random.get_state()},
                "config": {"model": {"arch": "lite", "options": {"eag": False}}}}, ckpt)
    loaded = build("extractor", "samfeat-lite", weights=str(ckpt), detection_threshold=0.01,
                   max_num_keypoints=25)
    assert loaded.net.conf.eag is False
    image = _texture(48, 64)
    a = loaded.extract(image)
    b = _extractor(net, detection_threshold=0.01, max_num_keypoints=25).extract(image)
    np.testing.assert_allclose(a.descriptors, b.descriptors, atol=1e-4)


@pytest.mark.parametrize("name", ["samfeat-lite", "samfeat", "samfeat-ms"])
def test_shipped_weights_match_a_known_warp(name, warped_pair):
    """The shipped weights load offline by name and their mutual-NN matches follow the known
    homography (random weights get almost none right)."""
    from featloc.geometry.homography import warp_points

    image0, image1, H = warped_pair
    extractor = build("extractor", name, max_num_keypoints=1024)
    f0, f1 = extractor.extract(image0), extractor.extract(image1)
    idx = build("matcher", "nn").match(f0, f1).indices()
    err = np.linalg.norm(warp_points(f0.keypoints[idx[:, 0]], H) - f1.keypoints[idx[:, 1]], axis=1)
    assert len(idx) >= 50 and (err < 3).mean() > 0.7, (len(idx), (err < 3).mean())


def test_weights_replaced_at_the_same_path_invalidate_cached_features(lite_net, tmp_path):
    # A retrained model exported over the old file must not reuse features cached for the old
    # one: the weights' content is part of the cache key (config.resolved_conf).
    from featloc.extract import run_extract
    from featloc.io.h5 import FeatureStore
    from featloc.io.images import write_image

    images = tmp_path / "images"
    for i in range(2):
        write_image(images / f"{i}.png", _texture(48, 64, seed=i))
    path = save_samfeat_net(lite_net, tmp_path / "lite.pt")
    conf = {"weights": str(path), "detection_threshold": 0.01, "max_num_keypoints": 25}
    out = tmp_path / "feats.h5"
    assert run_extract(images, out, "samfeat-lite", conf).done == 2
    assert run_extract(images, out, "samfeat-lite", conf).skipped == 2
    with FeatureStore(out, "r") as store:
        before = store.read("0.png").descriptors
    torch.manual_seed(1)
    save_samfeat_net(build_samfeat_net(SAMFeatNetConf(arch="lite")).eval(), path)
    assert run_extract(images, out, "samfeat-lite", conf).done == 2
    with FeatureStore(out, "r") as store:
        after = store.read("0.png").descriptors
    assert before.shape != after.shape or not np.allclose(before, after)


# ------------------------------------------------------------------------------------------
# ONNX


def _agree(a: Features, b: Features):
    """Both backends find (almost) the same keypoints, with the same descriptors."""
    d = np.linalg.norm(a.keypoints[:, None] - b.keypoints[None], axis=-1)
    nearest = d.argmin(1)
    same = d[np.arange(len(a)), nearest] < 1e-3
    assert abs(len(a) - len(b)) <= max(1, len(a) // 50) and same.mean() >= 0.98
    np.testing.assert_allclose(a.descriptors[same], b.descriptors[nearest[same]], atol=1e-4)
    np.testing.assert_allclose(a.keypoint_scores[same], b.keypoint_scores[nearest[same]],
                               atol=1e-4)


@pytest.mark.parametrize("arch", ["lite", "vgg"])
def test_onnx_backend_agrees_with_torch(arch, lite_net, vgg_net):
    net = lite_net if arch == "lite" else vgg_net
    image = _texture(64, 96, 3)
    conf = {"detection_threshold": 0.01, "max_num_keypoints": 200}
    torch_ex = _extractor(net, precision="float32", **conf)
    onnx_ex = _extractor(net, backend="onnx", **conf)
    a, b = torch_ex.extract(image), onnx_ex.extract(image)
    assert len(a) > 20
    _agree(a, b)


def test_sparse_descriptors_are_the_dense_ones_at_the_points(lite_net, vgg_net):
    """The 1x1 descriptor head applied to N sampled features gives what sampling the dense
    desc_map gives, also at and beyond the border (border padding: the bias commutes)."""
    from featloc.models.samfeat import sample_descriptors

    torch.manual_seed(1)
    image = torch.rand(2, 3, 64, 96) * 2 - 1
    points = torch.rand(2, 50, 2) * torch.tensor([96.0, 64.0])
    points[:, :4] = torch.tensor([[-3.0, -3.0], [95.5, 63.5], [0.0, 30.0], [100.0, 70.0]])
    with torch.inference_mode():
        dense = lite_net(image)
        sparse = lite_net(image, dense_descriptors=False)
    assert "feature" in sparse and "desc_map" not in sparse and "weight_map" not in sparse
    torch.testing.assert_close(sparse["logits"], dense["logits"])
    expected, _ = sample_descriptors(dense["desc_map"], dense["weight_map"], points, (64, 96))
    got = lite_net.descriptors_at(sparse["feature"], points, (64, 96))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="1x1"):
        vgg_net(image[:, :, :, :64], dense_descriptors=False)


def test_extractor_uses_sparse_descriptors_only_where_exact(lite_net, vgg_net):
    assert _extractor(lite_net, precision="float32")._sparse_descriptors
    assert not _extractor(lite_net, precision="bfloat16")._sparse_descriptors
    assert not _extractor(lite_net, precision="float32",
                          descriptor_output="weighted")._sparse_descriptors
    assert not _extractor(vgg_net)._sparse_descriptors
    image = _texture(64, 96, 5)
    conf = {"detection_threshold": 0.01, "max_num_keypoints": 200, "precision": "float32"}
    sparse = _extractor(lite_net, **conf)
    dense = _extractor(lite_net, **conf)
    dense._sparse_descriptors = False
    batch = sparse._prepare(image)[0][None]
    with torch.inference_mode():
        assert "feature" in sparse._forward(batch) and "desc_map" in dense._forward(batch)
    a, b = sparse.extract(image), dense.extract(image)
    assert len(a) > 20
    np.testing.assert_array_equal(a.keypoints, b.keypoints)
    np.testing.assert_allclose(a.descriptors, b.descriptors, atol=1e-5)


def test_folded_distillation_gives_the_same_outputs(lite_net, vgg_net, tmp_path):
    import copy

    torch.manual_seed(2)
    net = copy.deepcopy(lite_net)
    for bn in (m for m in net.modules() if isinstance(m, nn.BatchNorm2d)):  # not identities
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
    image = torch.rand(2, 3, 64, 96) * 2 - 1
    with torch.inference_mode():
        expected = net(image)
        folded = fold_distillation(net)
        assert folded is net and not hasattr(net, "distill_head")
        got = net(image)
        sparse = net(image, dense_descriptors=False)
    assert set(got) == set(OUTPUT_KEYS) - {"distill"} and "distill" not in sparse
    for key in got:
        torch.testing.assert_close(got[key], expected[key], atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="fold_distillation"):
        save_samfeat_net(net, tmp_path / "folded.pt")
    assert fold_distillation(vgg_net) is vgg_net and hasattr(vgg_net, "distill_head")


@pytest.mark.parametrize("arch", ["lite", "vgg"])
def test_widened_narrow_convs_give_the_same_outputs(arch, lite_net, vgg_net, tmp_path):
    import copy

    net = copy.deepcopy(lite_net if arch == "lite" else vgg_net)
    image = torch.rand(1, 3, 48, 64) * 2 - 1
    with torch.inference_mode():
        expected = net(image)
        widen_narrow_convs(net)
        got = net(image)
    narrow = [m for m in net.modules() if isinstance(m, nn.Conv2d) and m.out_channels < 8]
    assert not narrow
    assert net.heatmap3.conv.out_channels == 8 and net.heatmap3.outputs == 1
    with pytest.raises(ValueError, match="widen_narrow_convs"):
        save_samfeat_net(net, tmp_path / "widened.pt")
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("arch", ["lite", "vgg"])
def test_descriptors_without_detection(arch, vgg_net):
    torch.manual_seed(3)
    net = (build_samfeat_net(SAMFeatNetConf(arch="lite", lite_fine_channels=8)).eval()
           if arch == "lite" else vgg_net)
    image = torch.rand(1, 3, 48, 64) * 2 - 1
    with torch.inference_mode():
        full = net(image)
        described = net(image, detect=False)
    assert set(described) == set(OUTPUT_KEYS) - {"logits"}
    for key in described:
        torch.testing.assert_close(described[key], full[key], atol=0, rtol=0)


def test_extractor_folds_only_float32_lite_networks(lite_net):
    assert _extractor(lite_net, precision="float32").net.distill_folded is not None
    assert _extractor(lite_net, precision="bfloat16").net.distill_folded is None
    assert lite_net.distill_folded is None  # the extractor works on its own copy


def test_compile_option(lite_net, caplog):
    import shutil

    with pytest.raises(ValueError, match="compile"):
        _extractor(lite_net, backend="onnx", compile=True)
    image = _texture(64, 96)
    eager = _extractor(lite_net, precision="float32").extract(image)
    compiled = _extractor(lite_net, precision="float32", compile=True)

    def broken(*args, **kwargs):
        raise RuntimeError("no compiler\nmore")

    fallback = _extractor(lite_net, precision="float32", compile=True)
    fallback._compiled = broken
    with caplog.at_level("WARNING"):
        got = fallback.extract(image)
    assert "torch.compile failed (RuntimeError: no compiler)" in caplog.text
    assert fallback._compiled is None
    np.testing.assert_array_equal(got.keypoints, eager.keypoints)
    if shutil.which("g++") is None and shutil.which("cc") is None:
        pytest.skip("torch.compile on CPU needs a C++ compiler (g++ or cc), none on PATH")
    result = compiled.extract(image)
    assert compiled._compiled is not None  # compiled, not fallen back
    assert len(result) == len(eager) > 20
    np.testing.assert_allclose(result.keypoints, eager.keypoints, atol=1e-3)
    np.testing.assert_allclose(result.descriptors, eager.descriptors, atol=1e-4)


def test_aoti_backend(lite_net, tmp_path, caplog, monkeypatch):
    import shutil

    from featloc.models import export

    for bad in ({"device": "cuda"}, {"compile": True}, {"precision": "bfloat16"}):
        with pytest.raises(ValueError, match="aoti|compile"):
            _extractor(lite_net, backend="aoti", **bad)
    images = [_texture(64, 96), _texture(64, 96, 1)]
    eager = [_extractor(lite_net, precision="float32").extract(im) for im in images]

    def broken(*args, **kwargs):
        raise RuntimeError("no compiler\nmore")

    # compiling fails (e.g. no C++ compiler): a warning, and the network runs uncompiled
    monkeypatch.setattr(export, "compile_aoti_package", broken)
    with caplog.at_level("WARNING"):
        got = _extractor(lite_net, backend="aoti").extract(images[0])
    assert "AOTInductor compilation failed (RuntimeError: no compiler)" in caplog.text
    np.testing.assert_array_equal(got.keypoints, eager[0].keypoints)
    # a cache folder that cannot be made: compiled for the process only, in a temporary folder
    weights = save_samfeat_net(lite_net, tmp_path / "lite.pt")
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    paths = []

    def record(net, example, path, **kwargs):
        paths.append(Path(path))
        raise RuntimeError("no compiler")

    monkeypatch.setattr(export, "compile_aoti_package", record)
    caplog.clear()
    build("extractor", "samfeat-lite", weights=str(weights), backend="aoti",
          onnx_cache_dir=str(blocker / "c")).extract(images[0])
    assert "cannot cache the compiled network" in caplog.text
    assert len(paths) == 1 and blocker not in paths[0].parents
    monkeypatch.undo()
    if shutil.which("g++") is None and shutil.which("cc") is None:
        pytest.skip("AOTInductor on CPU needs a C++ compiler (g++ or cc), none on PATH")
    conf = {"weights": str(weights), "backend": "aoti", "onnx_cache_dir": str(tmp_path / "c")}
    batch = build("extractor", "samfeat-lite", **conf).extract_batch(images)
    assert len(list((tmp_path / "c" / "aoti").glob("lite-*-1x3x64x96.pt2"))) == 1
    for result, expected in zip(batch, eager, strict=True):
        assert len(result) == len(expected) > 20
        np.testing.assert_allclose(result.keypoints, expected.keypoints, atol=1e-3)
        np.testing.assert_allclose(result.descriptors, expected.descriptors, atol=1e-4)
    # another extractor (process) loads the package: compiling again would fail here
    monkeypatch.setattr(export, "compile_aoti_package", broken)
    caplog.clear()
    again = build("extractor", "samfeat-lite", **conf).extract(images[1])
    assert "failed" not in caplog.text
    np.testing.assert_array_equal(again.keypoints, batch[1].keypoints)


def test_onnx_export_dynamic_size_and_cli(lite_net, tmp_path):
    import onnx
    import onnxruntime as ort

    from featloc.cli import main

    with pytest.raises(SystemExit) as info:
        main(["export-onnx", "--help"])
    assert info.value.code == 0
    weights = save_samfeat_net(lite_net, tmp_path / "lite.pt")
    output = tmp_path / "out" / "lite.onnx"
    assert main(["--quiet", "export-onnx", "--features", "samfeat-lite", "--weights",
                 str(weights), "--output", str(output)]) == 0
    onnx.checker.check_model(onnx.load(str(output)))
    session = ort.InferenceSession(str(output), providers=["CPUExecutionProvider"])
    keys = [k for k in OUTPUT_KEYS if k != "distill"]  # the extractor's network is folded
    assert [o.name for o in session.get_outputs()] == keys
    for b, h, w in [(1, 32, 48), (2, 80, 64)]:  # not the traced size
        x = torch.rand(b, 3, h, w) * 2 - 1
        values = session.run(None, {"image": x.numpy()})
        with torch.inference_mode():
            expected = lite_net(x)
        for key, value in zip(keys, values, strict=True):
            np.testing.assert_allclose(value, expected[key].numpy(), atol=2e-4, rtol=1e-3)


def test_onnx_backend_caches_the_export(lite_net, tmp_path):
    weights = save_samfeat_net(lite_net, tmp_path / "lite.pt")
    conf = {"weights": str(weights), "backend": "onnx", "onnx_cache_dir": str(tmp_path / "c")}
    build("extractor", "samfeat-lite", **conf)
    cached = list((tmp_path / "c" / "onnx").glob("lite-*.onnx"))
    assert len(cached) == 1
    mtime = cached[0].stat().st_mtime_ns
    ex = build("extractor", "samfeat-lite", **conf)
    assert cached[0].stat().st_mtime_ns == mtime  # reused, not exported again
    assert len(ex.extract(_texture(48, 64))) >= 0


def test_lite_full_resolution_branch_starts_as_the_network_without_it(lite_net, tmp_path):
    torch.manual_seed(1)
    fine = build_samfeat_net(SAMFeatNetConf(arch="lite", lite_fine_channels=8)).eval()
    result = fine.load_state_dict(lite_net.state_dict(), strict=False)
    assert not result.unexpected_keys
    assert set(result.missing_keys) >= {"heatmap1.weight", "fine.0.0.weight"}
    x = torch.rand(1, 3, 48, 64) * 2 - 1
    with torch.inference_mode():
        plain, branch = lite_net(x), fine(x)
    _check_shapes(branch, 1, 48, 64)
    for key in OUTPUT_KEYS:  # zero-initialised head: a trained network gains it unchanged
        torch.testing.assert_close(plain[key], branch[key])
    with torch.no_grad():
        fine.heatmap1.weight.normal_()
    with torch.inference_mode():
        changed = fine(x)
    assert not torch.allclose(changed["logits"], plain["logits"])
    torch.testing.assert_close(changed["desc_map"], plain["desc_map"])
    # the option travels with the weights file and the ONNX backend agrees
    path = save_samfeat_net(fine, tmp_path / "fine.pt")
    loaded = build("extractor", "samfeat-lite", weights=str(path), detection_threshold=0.01,
                   max_num_keypoints=100, precision="float32")
    assert loaded.net.conf.lite_fine_channels == 8
    image = _texture(64, 96, 3)
    a = loaded.extract(image)
    assert len(a) > 20
    _agree(a, _extractor(fine, backend="onnx", detection_threshold=0.01,
                         max_num_keypoints=100, onnx_cache_dir=str(tmp_path)).extract(image))


def test_speed_benchmark_times_a_weights_file_beside_sift(tmp_path):
    from featloc.cli import main

    torch.manual_seed(0)
    net = build_samfeat_net(SAMFeatNetConf(arch="lite", lite_fine_channels=4)).eval()
    path = save_samfeat_net(net, tmp_path / "fine.pt")
    code = main(["--quiet", "benchmark", "speed", "--features", "samfeat-lite", "--size", "128x96",
                 "--repeats", "1", "--extractor-conf", f"weights={path}", "precision=float32",
                 "--output", str(tmp_path / "out")])
    assert code == 0
    result = json.loads((tmp_path / "out" / "speed.json").read_text())
    assert set(result["results"]) == {"sift", "samfeat-lite"}
    assert result["extractor_conf"]["weights"] == str(path)
    assert f"weights={path}" in (tmp_path / "out" / "speed.md").read_text()
    # the CPU decides samfeat-lite's default precision: every result records it
    assert isinstance(result["machine"]["native_bfloat16"], bool) and result["machine"]["cpu"]
    assert result["results"]["samfeat-lite"]["conf"]["precision"] == "float32"


def test_speed_benchmark_times_variants_side_by_side(tmp_path):
    """NAME@KEY=VALUE rows: the same extractor with other options, timed in the same run."""
    from featloc.cli import main

    torch.manual_seed(0)
    path = save_samfeat_net(build_samfeat_net(SAMFeatNetConf(arch="lite")).eval(),
                            tmp_path / "lite.pt")
    code = main(["--quiet", "benchmark", "speed", "--features", "samfeat-lite",
                 f"samfeat-lite@backend=onnx@onnx_cache_dir={tmp_path / 'onnx'}",
                 "--size", "128x96", "--repeats", "1", "--extractor-conf", f"weights={path}",
                 "precision=float32", "--output", str(tmp_path / "out")])
    assert code == 0
    rows = json.loads((tmp_path / "out" / "speed.json").read_text())["results"]
    variant = f"samfeat-lite@backend=onnx@onnx_cache_dir={tmp_path / 'onnx'}"
    assert set(rows) == {"sift", "samfeat-lite", variant}
    assert rows["samfeat-lite"]["conf"]["backend"] == "torch"
    assert rows[variant]["conf"]["backend"] == "onnx"
    assert rows[variant]["conf"]["name"] == "samfeat-lite"
    assert rows[variant]["conf"]["weights"] == str(path)  # --extractor-conf still applies
    table = (tmp_path / "out" / "speed.md").read_text()
    assert "native bfloat16" in table and "first call (ms)" in table
    # the first call (an ONNX export and session here) is kept apart from the medians
    assert all(row["first_extract_s"] > 0 for row in rows.values())


def test_extractors_are_timed_in_turn():
    """One call of each function per round, so a slow spell hits every extractor alike."""
    from featloc.eval.speed import interleaved_median_times

    calls = []
    fns = {name: (lambda n=name: calls.append(n) or n.upper()) for name in ("sift", "lite")}
    timed = interleaved_median_times(fns, repeats=3, warmup=1)
    assert calls == ["sift", "lite"] * 4
    assert {name: out for name, (_, out) in timed.items()} == {"sift": "SIFT", "lite": "LITE"}
    assert all(seconds >= 0 for seconds, _ in timed.values())


@pytest.mark.parametrize("options", [{}, {"lite_channels": (32, 32, 64, 96), "lite_fine_channels": 4,
                                          "descriptor_dim": 64},
                                     {"lite_fine_channels": 8, "lite_fine_blocks": 1,
                                      "lite_fine_head_kernel": 1}])
def test_lite_conf_is_read_off_a_state_dict(options):
    from featloc.models.samfeat import lite_conf_from_state

    net = build_samfeat_net(SAMFeatNetConf(arch="lite", **options))
    state = {f"backbone.{k}": v for k, v in net.state_dict().items()}
    assert lite_conf_from_state(state, "backbone.") == net.conf


def test_cheaper_full_resolution_branch():
    net = build_samfeat_net(SAMFeatNetConf(arch="lite", lite_fine_channels=8, lite_fine_blocks=1,
                                           lite_fine_head_kernel=1)).eval()
    assert len(net.fine) == 1 and net.heatmap1.kernel_size == (1, 1)
    with torch.inference_mode():
        _check_shapes(net(torch.rand(1, 3, 48, 64) * 2 - 1), 1, 48, 64)
    for bad in ({"lite_fine_blocks": 3}, {"lite_fine_head_kernel": 5}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            SAMFeatNetConf(arch="lite", **bad)


def test_bare_lite_state_dict_loads_with_its_own_sizes(tmp_path):
    torch.manual_seed(0)
    net = build_samfeat_net(SAMFeatNetConf(arch="lite", lite_fine_channels=4)).eval()
    torch.save(net.state_dict(), tmp_path / "bare.pt")
    loaded = load_samfeat_net(tmp_path / "bare.pt", SAMFeatNetConf(arch="lite"))
    assert loaded.conf.lite_fine_channels == 4
    x = torch.rand(1, 3, 32, 48) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(loaded(x)["logits"], net(x)["logits"])


def test_multiscale_keypoints_come_back_in_original_pixels():
    # blobs wide enough to be found at half size; each scale finds them and maps them back
    centres = [(40.3, 30.7), (120.6, 90.2), (190.8, 60.4)]
    image = _blob_image(150, 230, centres, sigma=2.0)
    conf = dict(detection_threshold=0.1, subpixel=True, border_px=2, descriptor_output="unit")
    single = _extractor(_BlobNet(), **conf).extract(image)
    multi = _extractor(_BlobNet(), scales=(1.0, 0.5), **conf).extract(image)
    assert len(single) == 3 and len(multi) == 6 and multi.image_size == (230, 150)
    for kp in (single.keypoints, multi.keypoints):
        nearest = np.linalg.norm(kp[:, None] - np.array(centres)[None], axis=-1).min(1)
        assert nearest.max() < 0.6
    assert np.all(np.diff(multi.keypoint_scores) <= 0)  # pooled, best first
    up = _extractor(_BlobNet(), scales=(1.5, 1.0), **{**conf, "nms_radius": 8}).extract(image)  # upsampled
    assert len(up) == 6
    nearest = np.linalg.norm(up.keypoints[:, None] - np.array(centres)[None], axis=-1).min(1)
    assert nearest.max() < 0.6
    capped = _extractor(_BlobNet(), scales=(1.0, 0.5), max_num_keypoints=4, **conf)
    assert len(capped.extract(image)) == 4
    with pytest.raises(ValueError, match="scales"):
        _extractor(_BlobNet(), scales=(1.0, 0.0))
