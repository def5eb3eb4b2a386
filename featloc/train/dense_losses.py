"""Losses of the detector-free matchers (methods.md 3.2, 3.3, 4.3, 4.4.3), pure functions of
the network outputs (`featloc.models.dense`) and the dense ground truth
(`featloc.train.data.dense`). All return float32 scalars.

Coarse ground truth: cell i of image 0 matches cell j of image 1 when i's correspondence lies
in cell j and j's correspondence lies in cell i (mutual, LoFTR); cells without a valid
correspondence are unmatched (negatives everywhere in the dense loss).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..models.dense.conf import COARSE_STRIDE


def cell_index(points: torch.Tensor, grid_hw: tuple[int, int]) -> torch.Tensor:
    """[..., 2] pixels -> [...] row-major index of the coarse cell holding each point, -1
    for NaN or outside the grid."""
    h, w = grid_hw
    finite = torch.isfinite(points).all(-1)
    cells = torch.floor((torch.nan_to_num(points) + 0.5) / COARSE_STRIDE).long()
    x, y = cells[..., 0], cells[..., 1]
    ok = finite & (x >= 0) & (x < w) & (y >= 0) & (y < h)
    return torch.where(ok, y * w + x, -1)


def coarse_labels(gt_points1: torch.Tensor, gt_points0: torch.Tensor,
                  grid0: tuple[int, int], grid1: tuple[int, int]) -> torch.Tensor:
    """[B, N0] int64: the matching cell of image 1 for every cell of image 0, or -1."""
    j = cell_index(gt_points1, grid1)  # [B, N0]
    back = cell_index(gt_points0, grid0)  # [B, N1]
    n0 = j.shape[1]
    loop = torch.gather(back, 1, j.clamp(min=0))
    mutual = (j >= 0) & (loop == torch.arange(n0, device=j.device))
    return torch.where(mutual, j, -1)


def dense_targets(labels: torch.Tensor, n1: int) -> torch.Tensor:
    """[B, N0, N1] bool from [B, N0] labels."""
    target = torch.zeros(*labels.shape, n1 + 1, dtype=torch.bool, device=labels.device)
    target.scatter_(2, torch.where(labels >= 0, labels, n1)[..., None], True)
    return target[..., :n1]


def coarse_focal_loss(conf: torch.Tensor, labels: torch.Tensor, alpha: float = 0.25,
                      gamma: float = 2.0) -> torch.Tensor:
    """Focal loss on the dual-softmax confidences [B, N0, N1] (ASpanFormer/LoFTR, dense
    supervision): positives -alpha (1-p)^gamma log p and negatives -(1-alpha) p^gamma
    log(1-p), each averaged over its entries, summed."""
    conf = conf.float().clamp(1e-6, 1 - 1e-6)
    target = dense_targets(labels, conf.shape[-1])
    pos = conf[target]
    neg = conf[~target]
    loss_pos = (-alpha * (1 - pos) ** gamma * pos.log()).mean() if pos.numel() else conf.sum() * 0
    loss_neg = (-(1 - alpha) * neg ** gamma * (1 - neg).log()).mean()
    return loss_pos + loss_neg


def coarse_nll_loss(sim: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """-log of the dual-softmax probability of the true match, averaged over positives
    (log P_ij = log_softmax_rows + log_softmax_cols)."""
    sim = sim.float()
    log_p = F.log_softmax(sim, 2) + F.log_softmax(sim, 1)
    b, i = torch.nonzero(labels >= 0, as_tuple=True)
    if len(b) == 0:
        return sim.sum() * 0
    return -log_p[b, i, labels[b, i]].mean()


def fine_loss(offset: torch.Tensor, std: torch.Tensor, target: torch.Tensor,
              max_offset: float = 1.0) -> torch.Tensor:
    """L2 between predicted and true refinements [M, 2] (window units), weighted by the
    inverse predicted standard deviation (detached, normalised to mean 1), over matches
    whose true refinement lies inside the window (|t|_inf < max_offset, LoFTR)."""
    ok = torch.isfinite(target).all(-1) & (target.abs().amax(-1) < max_offset)
    if not ok.any():
        return offset.sum() * 0
    weight = 1.0 / std[ok].detach().clamp(min=1e-4)
    weight = weight / weight.mean()
    return (weight * ((offset[ok] - target[ok]) ** 2).sum(-1)).mean()


def flow_loss(mu: torch.Tensor, logvar: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """ASpanFormer's flow term mean(s + exp(-s) |mu - mu_gt|^2) over valid targets.

    mu [B, N, 2], logvar [B, N], target [B, N, 2] (cell units of the source image, NaN
    where invalid)."""
    ok = torch.isfinite(target).all(-1)
    if not ok.any():
        return mu.sum() * 0
    s = logvar[ok].float()
    return (s + torch.exp(-s) * ((mu[ok].float() - target[ok]) ** 2).sum(-1)).mean()


def distill_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean squared distance between per-pixel L2-normalised maps (= 2 - 2 cos), the teacher
    resampled to the student's grid (area). student [B, C, h, w], teacher [B, C, h', w']."""
    teacher = F.normalize(teacher.float(), dim=1)
    if teacher.shape[-2:] != student.shape[-2:]:
        teacher = F.normalize(F.adaptive_avg_pool2d(teacher, student.shape[-2:]), dim=1)
    student = F.normalize(student.float(), dim=1)
    return ((student - teacher) ** 2).sum(1).mean()


def sample_descriptors(desc: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Unit descriptors of a coarse map [B, C, h, w] at pixel points [B, K, 2] -> [B, K, C]
    (bilinear, then L2-normalised with the norm floored at 1e-4, methods 4.2)."""
    from ..models.dense.blocks import pixels_to_cells, sample_map

    values = sample_map(desc, pixels_to_cells(points, COARSE_STRIDE))
    return F.normalize(values, dim=-1, eps=1e-4)


def hinge_losses(desc0: torch.Tensor, desc1: torch.Tensor, gt_points1: torch.Tensor,
                 num_queries: int, num_negatives: int, hardest: int, exclusion_px: float,
                 generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """CoAM's descriptor losses (methods 4.4.3) on squared distances of unit descriptors.

    Queries: up to `num_queries` random cells of image 0 with a correspondence y in image 1
    (descriptor of image 1 sampled at y). Candidates: `num_negatives` random cells of image
    1 plus one co-visible position (another query's correspondence); a candidate closer than
    `exclusion_px` to y is a false negative and ignored.
        pos  = mean d+;
        hard = mean over queries of the `hardest` largest [1 + sg(d+) - d-]_+;
        all  = mean over valid candidates of [1 - d-]_+.
    """
    b, n0 = gt_points1.shape[:2]
    h1, w1 = desc1.shape[-2:]
    dev = desc0.device
    valid = torch.isfinite(gt_points1).all(-1)  # [B, N0]
    from ..models.dense.blocks import cell_grid, cells_to_pixels

    centres0 = cells_to_pixels(cell_grid(*desc0.shape[-2:], dev), COARSE_STRIDE)
    centres1 = cells_to_pixels(cell_grid(h1, w1, dev), COARSE_STRIDE)
    pos, hard, every = [], [], []
    for i in range(b):
        idx = torch.nonzero(valid[i])[:, 0]
        if len(idx) == 0:
            continue
        idx = idx[torch.randperm(len(idx), generator=generator, device="cpu").to(dev)
                  [:num_queries]]
        x, y = centres0[idx], gt_points1[i, idx]
        f0 = sample_descriptors(desc0[i:i + 1], x[None])[0]
        f1 = sample_descriptors(desc1[i:i + 1], y[None])[0]
        d_pos = ((f0 - f1) ** 2).sum(-1)  # [K]
        cand = torch.randperm(h1 * w1, generator=generator, device="cpu").to(dev)[:num_negatives]
        z = torch.cat([centres1[cand], y[torch.randperm(len(y), generator=generator,
                                                        device="cpu").to(dev)[:1]]])
        fz = sample_descriptors(desc1[i:i + 1], z[None])[0]  # [Z, C]
        d_neg = ((f0[:, None] - fz[None]) ** 2).sum(-1)  # [K, Z]
        usable = torch.cdist(y.float(), z.float()) >= exclusion_px
        margin = (1 + d_pos.detach()[:, None] - d_neg).clamp(min=0) * usable
        k = min(hardest, margin.shape[1])
        pos.append(d_pos.mean())
        hard.append(margin.topk(k, 1).values.mean())
        every.append(((1 - d_neg).clamp(min=0) * usable).sum() / usable.sum().clamp(min=1))
    if not pos:
        zero = desc0.sum() * 0
        return {"pos": zero, "hard": zero, "all": zero}
    return {"pos": torch.stack(pos).mean(), "hard": torch.stack(hard).mean(),
            "all": torch.stack(every).mean()}


def distinctiveness_loss(r0: torch.Tensor, desc0: torch.Tensor, desc1: torch.Tensor,
                         valid0: torch.Tensor, num_queries: int,
                         generator: torch.Generator | None = None) -> torch.Tensor:
    """CoAM's L_r (methods 4.3): L1 between r(x) and r*(x) = N(x)^(-1/4), N(x) = max(1,
    #{cells z of image 1: |f0(x) - f1(z)|^2 < 1}) over distinct positions (every cell once,
    not the official 32x duplicated pool), for up to `num_queries` valid cells x of image 0.

    r0 [B, N0] (the head's output, from detached descriptors); desc0/1 [B, C, h, w];
    valid0 [B, N0] bool."""
    losses = []
    for i in range(r0.shape[0]):
        idx = torch.nonzero(valid0[i])[:, 0]
        if len(idx) == 0:
            continue
        idx = idx[torch.randperm(len(idx), generator=generator, device="cpu").to(idx.device)
                  [:num_queries]]
        with torch.no_grad():
            f0 = F.normalize(desc0[i].flatten(1).T[idx].float(), dim=-1, eps=1e-4)
            f1 = F.normalize(desc1[i].flatten(1).T.float(), dim=-1, eps=1e-4)
            count = (2 - 2 * f0 @ f1.T < 1).sum(-1).clamp(min=1).float()
            target = count ** -0.25
        losses.append((r0[i, idx].float() - target).abs().mean())
    if not losses:
        return r0.sum() * 0
    return torch.stack(losses).mean()
