"""SAMFeat losses (featloc.train.losses) against methods 1.11 and the checks of methods 7.3."""

import math

import pytest
import torch
import torch.nn.functional as F

from featloc.train import losses as L


def _orthogonal_unit(n: int, d: int = 128) -> torch.Tensor:
    return torch.eye(d)[:n]


def test_descriptor_triplet_zero_for_coinciding_positives_and_far_negatives():
    # methods 7.3: corresponding weighted descriptors coincide, every other one >= 1.01 away
    n = 16
    d = _orthogonal_unit(n)[None]  # distinct points: distance sqrt(2) > 1.01
    w = torch.ones(1, n)
    ns = torch.eye(n, dtype=torch.bool)[None]
    loss = L.descriptor_triplet(d, w, d, w, torch.ones(1, n), ns)
    assert loss.item() == pytest.approx(0.0, abs=1e-6)


def test_descriptor_triplet_matches_formula():
    torch.manual_seed(0)
    b, n = 2, 10
    d0 = F.normalize(torch.randn(b, n, 8), dim=-1)
    d1 = F.normalize(torch.randn(b, n, 8), dim=-1)
    w0, w1 = torch.rand(b, n) + 0.5, torch.rand(b, n) + 0.5
    valid = (torch.rand(b, n) > 0.2).float()
    ns = (torch.rand(b, n, n) > 0.7) | torch.eye(n, dtype=torch.bool)
    expected = 0.0
    for k in range(b):
        u, v = w0[k, :, None] * d0[k], w1[k, :, None] * d1[k]
        dist = torch.sqrt(torch.clamp(((u[:, None] - v[None]) ** 2).sum(-1), min=1e-5))
        neg = (dist + 10 * ns[k].float()).min(1).values
        t = torch.relu(1 + dist.diagonal() - neg)
        a = valid[k] * torch.exp(w0[k] / 14)
        expected += (a / a.sum() * t).sum() / b
    got = L.descriptor_triplet(d0, w0, d1, w1, valid, ns)
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)


def test_relation_distillation_zero_for_resized_teacher():
    torch.manual_seed(0)
    teacher = torch.randn(2, 256, 16, 16)
    student = F.interpolate(teacher, size=(8, 8), mode="bilinear", align_corners=False)
    assert L.relation_distillation(student, teacher).item() == pytest.approx(0.0, abs=1e-6)
    assert L.relation_distillation(student + torch.randn_like(student), teacher).item() > 0.01


def test_group_relation_distillation_zero_for_one_hot_groups():
    groups = torch.randint(0, 4, (2, 8, 8))
    groups[0, 0, 0] = -1  # a pixel without group is left out
    student = F.one_hot(groups.clamp(min=0), 4).permute(0, 3, 1, 2).float()
    student[0, :, 0, 0] = torch.tensor([0.3, -1.0, 2.0, 0.1])  # ignored pixel
    assert L.group_relation_distillation(student, groups).item() == pytest.approx(0.0, abs=1e-6)
    mask = torch.tensor([0.0, 0.0])
    assert L.group_relation_distillation(student, groups, mask).item() == 0.0


def _wsc_paper_reference(desc, groups, margin=0.07, t=5.0):
    dist = torch.sqrt(torch.clamp(((desc[:, None] - desc[None]) ** 2).sum(-1), min=1e-5))
    pos, neg = [], []
    n = len(groups)
    for i in range(n):
        for j in range(n):
            if groups[i] < 0 or groups[j] < 0:
                continue
            if groups[i] == groups[j] and i != j:
                pos.append(dist[i, j])
            elif groups[i] != groups[j]:
                neg.append(dist[i, j])
    d_pos, d_neg = torch.stack(pos).mean(), torch.stack(neg).mean()
    return F.softplus((torch.clamp(d_pos, min=margin) - d_neg) / t)


def test_wsc_paper_form_equals_softplus_formula():
    torch.manual_seed(0)
    desc = torch.randn(2, 12, 8) * 0.3
    groups = torch.randint(-1, 3, (2, 12))
    groups[:, :4] = torch.tensor([0, 0, 1, 1])
    got = L.wsc(desc, groups)
    expected = (_wsc_paper_reference(desc[0], groups[0]) +
                _wsc_paper_reference(desc[1], groups[1])) / 2
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)


def test_wsc_identical_descriptors_gives_0700():
    # methods 7.3: D ~ sqrt(1e-5) everywhere -> softplus((0.07 - 0.003) / 5) ~ 0.700
    desc = torch.ones(1, 20, 128) / math.sqrt(128)
    groups = torch.arange(20)[None] % 3
    got = L.wsc(desc, groups).item()
    assert got == pytest.approx(math.log1p(math.exp((0.07 - math.sqrt(1e-5)) / 5)), abs=1e-6)
    assert got == pytest.approx(0.700, abs=1e-3)


def test_wsc_official_form_matches_code_semantics():
    torch.manual_seed(1)
    desc = torch.randn(1, 6, 4)
    groups = torch.tensor([[0, 0, 1, 1, -1, 2]])
    ns = torch.zeros(1, 6, 6, dtype=torch.bool)
    dist = torch.sqrt(torch.clamp(((desc[0, :, None] - desc[0, None]) ** 2).sum(-1), min=1e-5))
    g = groups[0]
    ok = (g[:, None] >= 0) & (g[None] >= 0)
    pm = (g[:, None] == g[None]) & ok
    nm = (g[:, None] != g[None]) & ok
    pos = torch.where(pm, torch.clamp(dist, min=0.07), torch.zeros_like(dist))
    neg = dist * nm
    sp, sn = torch.exp(-pos / 5).sum(0), torch.exp(-neg / 5).sum(0)
    expected = -torch.log(sp / (sp + sn)).mean()
    got = L.wsc(desc, groups, form="official", not_search=ns)
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)


def test_detector_bce_matches_formula_and_valid_mask():
    torch.manual_seed(0)
    logits = torch.randn(2, 1, 8, 8)
    y = (torch.rand(2, 8, 8) > 0.9).float()
    m = torch.ones(2, 8, 8)
    m[1, :4] = 0
    p = torch.sigmoid(logits[:, 0])
    ell = -(200 * y * torch.log(p + 1e-4) + (1 - y) * torch.log(1 - p + 1e-4))
    expected = ((m * ell).sum((1, 2)) / (m.sum((1, 2)) + 1)).mean()
    assert L.detector_bce(logits, y, m).item() == pytest.approx(expected.item(), rel=1e-6)


def test_edge_mse_and_flags():
    pred = torch.rand(3, 1, 4, 4)
    target = torch.rand(3, 4, 4)
    mask = torch.tensor([1.0, 0.0, 1.0])
    expected = F.mse_loss(pred[[0, 2], 0], target[[0, 2]])
    assert L.edge_mse(pred, target, mask).item() == pytest.approx(expected.item())
    assert L.edge_mse(pred, target, torch.zeros(3)).item() == 0.0


def test_losses_run_in_float32_under_bf16_autocast():
    logits = torch.randn(1, 1, 8, 8, dtype=torch.bfloat16, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = L.detector_bce(logits, torch.zeros(1, 8, 8), torch.ones(1, 8, 8))
    assert loss.dtype == torch.float32
    loss.backward()
    assert logits.grad is not None


def _peaks(centres, size=32, sigma=0.5):
    """[size, size] logits: the max of sharp quadratic bumps at sub-pixel (x, y) centres."""
    y, x = torch.meshgrid(torch.arange(size).float(),
                          torch.arange(size).float(), indexing="ij")
    bumps = [-((x - cx) ** 2 + (y - cy) ** 2) / (2 * sigma ** 2) for cx, cy in centres]
    return torch.stack(bumps).max(0).values


def _reprojection_case(shift1):
    """One pair related by a translation; view 1's peaks are where H puts them, + shift1."""
    t = torch.tensor([3.3, -2.4])
    H = torch.eye(3)
    H[:2, 2] = t
    centres0 = [(8.2, 9.9), (20.7, 14.4), (12.0, 21.3)]
    centres1 = [(x + t[0] + shift1[0], y + t[1] + shift1[1]) for x, y in centres0]
    logits = torch.stack([_peaks(centres0), _peaks(centres1)])[:, None].requires_grad_()
    heat = torch.zeros(1, 32, 32)
    for x, y in centres0:
        heat[0, round(y), round(x)] = 1
    ones = torch.ones(1, 32, 32)
    return logits, heat, ones, H[None]


def test_reprojection_is_the_subpixel_disagreement_between_views():
    logits, heat, ones, H = _reprojection_case((0.0, 0.0))
    consistent = L.reprojection(logits, heat, ones, ones, H)
    assert consistent.item() < 0.05  # discretisation of the soft-argmax
    logits, heat, ones, H = _reprojection_case((0.4, 0.0))
    shifted = L.reprojection(logits, heat, ones, ones, H)
    assert shifted.item() == pytest.approx(0.4, abs=0.05)
    shifted.backward()
    assert logits.grad.abs().sum() > 0


def test_reprojection_skips_posed_pairs_and_invalid_pixels():
    logits, heat, ones, H = _reprojection_case((0.4, 0.0))
    nan_h = torch.full_like(H, float("nan"))
    skipped = L.reprojection(logits, heat, ones, ones, nan_h)
    assert skipped.item() == 0 and skipped.requires_grad
    assert L.reprojection(logits, heat, ones, torch.zeros_like(ones), H).item() == 0
