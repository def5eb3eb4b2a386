"""Training losses as pure functions over model outputs and batch keys (methods 1.11).

Every loss runs in float32 with autocast disabled, whatever precision the forward pass used.
Shapes: B images (or pairs), N points, D descriptor dims. Each returns a scalar tensor; when no
image qualifies (e.g. no teacher target) the result is a graph-connected zero.

SAMFeat terms:
- `detector_bce`: weighted BCE on full-resolution logits with the valid mask (1.11.1).
- `descriptor_triplet`: MTLDesc attention-weighted triplet with hardest negatives (1.11.2).
- `relation_distillation`: PSRD, L1 between pixel-relation matrices (1.11.3); with no teacher
  embedding, `group_relation_distillation` uses the relation of the group map instead,
  R_T(p, q) = [g_p == g_q], over pixels that have a group.
- `wsc`: weakly supervised contrastive loss on semantic groups (1.11.4), paper form by default,
  official-code form behind `form="official"`.
- `edge_mse`: MSE between the edge head and the teacher's edge map (1.11.5).

Beyond the paper:
- `reprojection`: distance between the sub-pixel keypoint of view 0, mapped by H, and that of
  view 1, both refined as at inference (soft-argmax of the logits around each label). The BCE
  puts one positive at a label rounded in each view, so nothing trains the sub-pixel position
  or its covariance under a warp; this term does (in the spirit of ALIKE's reprojection loss).
  Measured on samfeat-lite (README): it made localisation worse, so it stays off.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

DIST_FLOOR = 1e-5  # squared-distance floor inside the sqrt (MTLDesc / SAMFeat)
NOT_SEARCH_PENALTY = 10.0  # added to distances of not-search pairs (methods 1.11.2)


def float32(fn):
    """Run `fn` without autocast, with floating-point tensor arguments cast to float32."""

    def cast(x):
        return x.float() if torch.is_tensor(x) and x.is_floating_point() else x

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        device = next((a.device.type for a in args if torch.is_tensor(a)), "cpu")
        with torch.autocast(device_type=device, enabled=False):
            return fn(*[cast(a) for a in args], **{k: cast(v) for k, v in kwargs.items()})

    return wrapper


def _zero(tensor: torch.Tensor) -> torch.Tensor:
    """A zero that keeps the graph connected (DDP expects every used output in the graph)."""
    return tensor.sum() * 0.0


def pairwise_distance(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """[B, N, D], [B, M, D] -> [B, N, M] sqrt(max(|u|^2 + |v|^2 - 2 u.v, 1e-5))."""
    sq = (u * u).sum(-1)[:, :, None] + (v * v).sum(-1)[:, None, :] - 2 * u @ v.transpose(1, 2)
    return torch.sqrt(torch.clamp(sq, min=DIST_FLOOR))


@float32
def detector_bce(logits: torch.Tensor, heatmap: torch.Tensor, valid_mask: torch.Tensor,
                 pos_weight: float = 200.0, eps: float = 1e-4) -> torch.Tensor:
    """mean_b  sum_q m(q) l(q) / (sum_q m(q) + 1),
    l = -[pos_weight y log(p + eps) + (1 - y) log(1 - p + eps)], p = sigmoid(logits).

    logits [B, 1, H, W] or [B, H, W]; heatmap, valid_mask [B, H, W] in {0, 1} / [0, 1].
    """
    logits = logits.reshape(heatmap.shape)
    p = torch.sigmoid(logits)
    ell = -(pos_weight * heatmap * torch.log(p + eps) + (1 - heatmap) * torch.log(1 - p + eps))
    per_image = (valid_mask * ell).sum((1, 2)) / (valid_mask.sum((1, 2)) + 1)
    return per_image.mean()


@float32
def descriptor_triplet(desc0: torch.Tensor, weight0: torch.Tensor, desc1: torch.Tensor,
                       weight1: torch.Tensor, valid: torch.Tensor, not_search: torch.Tensor,
                       temperature: float = 14.0, margin: float = 1.0) -> torch.Tensor:
    """MTLDesc attention-weighted triplet loss.

    desc0/1 [B, N, D] unit descriptors at corresponding points; weight0/1 [B, N] attention
    weights; valid [B, N]; not_search [B, N, N] (includes the diagonal). Distances between the
    weighted descriptors u = w0 d0, v = w1 d1; the hardest negative of each row i is
    min_j (D_ij + 10 NS_ij); t_i = max(0, margin + D_ii - neg_i); the point weights
    a_i = valid_i exp(w0_i / T) / max(sum_k valid_k exp(w0_k / T), 1e-5) are not detached.
    Returns mean over pairs of sum_i a_i t_i.
    """
    u = weight0[..., None] * desc0
    v = weight1[..., None] * desc1
    dist = pairwise_distance(u, v)
    pos = torch.diagonal(dist, dim1=1, dim2=2)
    neg = (dist + NOT_SEARCH_PENALTY * not_search.float()).min(-1).values
    triplet = F.relu(margin + pos - neg)
    a = valid * torch.exp(weight0 / temperature)
    a = a / torch.clamp(a.sum(-1, keepdim=True), min=1e-5)
    return (a * triplet).sum(-1).mean()


def _relations(features: torch.Tensor) -> torch.Tensor:
    """[B, C, h, w] -> [B, hw, hw] cosine relations (per-pixel normalisation, eps 1e-7)."""
    f = F.normalize(features.flatten(2), dim=1, eps=1e-7)
    return f.transpose(1, 2) @ f


@float32
def relation_distillation(student: torch.Tensor, teacher: torch.Tensor,
                          mask: torch.Tensor | None = None) -> torch.Tensor:
    """PSRD: mean |R_S - R_T| over the images with mask = 1.

    student [B, C, h, w]; teacher [B, C', h', w'] (resized bilinearly to h x w if needed);
    mask [B] (default: all).
    """
    keep = torch.ones(len(student), dtype=torch.bool, device=student.device) \
        if mask is None else mask > 0
    if not keep.any():
        return _zero(student)
    student, teacher = student[keep], teacher[keep]
    if teacher.shape[-2:] != student.shape[-2:]:
        teacher = F.interpolate(teacher, size=student.shape[-2:], mode="bilinear",
                                align_corners=False)
    return (_relations(student) - _relations(teacher)).abs().mean()


@float32
def group_relation_distillation(student: torch.Tensor, groups: torch.Tensor,
                                mask: torch.Tensor | None = None) -> torch.Tensor:
    """PSRD against the relation of a group map: R_T(p, q) = [g_p == g_q].

    Used when the teacher gives semantic groups but no embedding. student [B, C, h, w];
    groups [B, h, w] int (< 0: no group; such pixels are left out); mask [B]. Mean of
    |R_S - R_T| over all pixel pairs with groups, over the images with mask = 1.
    """
    keep = torch.ones(len(student), dtype=torch.bool, device=student.device) \
        if mask is None else mask > 0
    if not keep.any():
        return _zero(student)
    rel = _relations(student[keep])
    g = groups[keep].flatten(1)
    has_group = g >= 0
    pair_ok = has_group[:, :, None] & has_group[:, None, :]
    count = pair_ok.sum()
    if count == 0:
        return _zero(student)
    same = g[:, :, None] == g[:, None, :]
    err = torch.where(same, rel - 1.0, rel).abs().masked_fill(~pair_ok, 0.0)
    return err.sum() / count


@float32
def wsc(desc: torch.Tensor, groups: torch.Tensor, mask: torch.Tensor | None = None,
        margin: float = 0.07, temperature: float = 5.0, form: str = "paper",
        not_search: torch.Tensor | None = None) -> torch.Tensor:
    """Weakly supervised contrastive loss on semantic groups, within each image.

    desc [B, N, D] weighted descriptors (w d); groups [B, N] int (< 0: invalid); mask [B].
    form "paper": per image softplus((max(mean D+, M) - mean D-)/T), D+ over pairs i != j of
    one group, D- over pairs of different groups; images without both kinds are left out.
    form "official": column sums of exp(-max(M, D')/T) over same-group entries and of
    exp(-D'/T) over different-group entries (masked-out entries add exp(0) = 1 to both, as in
    the code), D' = D + 10 NS; loss -mean_{b,j} log(S+_j / (S+_j + S-_j)).
    """
    keep = torch.ones(len(desc), dtype=torch.bool, device=desc.device) \
        if mask is None else mask > 0
    if not keep.any():
        return _zero(desc)
    desc, groups = desc[keep], groups[keep]
    dist = pairwise_distance(desc, desc)
    gi, gj = groups[:, :, None], groups[:, None, :]
    ok = (gi >= 0) & (gj >= 0)
    same = (gi == gj) & ok
    diff = (gi != gj) & ok
    if form == "paper":
        eye = torch.eye(desc.shape[1], dtype=torch.bool, device=desc.device)
        pos_mask = (same & ~eye).float()
        neg_mask = diff.float()
        n_pos, n_neg = pos_mask.sum((1, 2)), neg_mask.sum((1, 2))
        usable = (n_pos > 0) & (n_neg > 0)
        if not usable.any():
            return _zero(desc)
        d_pos = (dist * pos_mask).sum((1, 2)) / n_pos.clamp(min=1)
        d_neg = (dist * neg_mask).sum((1, 2)) / n_neg.clamp(min=1)
        loss = F.softplus((torch.clamp(d_pos, min=margin) - d_neg) / temperature)
        return loss[usable].mean()
    if form == "official":
        if not_search is not None:
            dist = dist + NOT_SEARCH_PENALTY * not_search[keep].float()
        pos = torch.where(same, torch.clamp(dist, min=margin), torch.zeros_like(dist))
        neg = dist * diff.float()
        s_pos = torch.exp(-pos / temperature).sum(1)
        s_neg = torch.exp(-neg / temperature).sum(1)
        return -torch.log(s_pos / (s_pos + s_neg)).mean()
    raise ValueError(f"unknown WSC form {form!r} (paper or official)")


@float32
def edge_mse(edge: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None
             ) -> torch.Tensor:
    """MSE between the edge probability [B, 1, h, w] (or [B, h, w]) and the teacher edge map
    [B, h, w] in [0, 1], over the images with mask = 1."""
    edge = edge.reshape(target.shape)
    keep = torch.ones(len(edge), dtype=torch.bool, device=edge.device) \
        if mask is None else mask > 0
    if not keep.any():
        return _zero(edge)
    return F.mse_loss(edge[keep], target[keep])


def _warp(points: torch.Tensor, H: torch.Tensor) -> torch.Tensor:
    """[N, 2] (x, y) mapped by the 3x3 homography H (pixel centres at integers)."""
    q = torch.cat([points, torch.ones_like(points[:, :1])], 1) @ H.T
    return q[:, :2] / q[:, 2:].clamp(min=1e-8)


@float32
def reprojection(logits: torch.Tensor, heatmap0: torch.Tensor, valid_mask0: torch.Tensor,
                 valid_mask1: torch.Tensor, H_0to1: torch.Tensor, radius: int = 2,
                 temperature: float = 1.0, max_points: int = 256) -> torch.Tensor:
    """Mean reprojection distance (px) between sub-pixel keypoints of two views.

    logits [2B, 1, H, W] (view-0 images first); heatmap0, valid_mask0/1 [B, H, W]; H_0to1
    [B, 3, 3] (NaN for posed pairs, which are skipped). For up to `max_points` labels c0 of
    view 0 (heatmap pixels >= 1/4, a random subset by the torch RNG) with c1 = round(H c0):
    q0 = refine(logits0, c0), q1 = refine(logits1, c1) with the inference soft-argmax
    (`refine_subpixel`), and the distance |H q0 - q1|. Windows must lie inside both views and
    on valid pixels.
    """
    from ..models.samfeat import refine_subpixel

    logits = logits.reshape(len(logits), *heatmap0.shape[-2:])
    B, h, w = heatmap0.shape
    distances = []
    for b in range(B):
        H = H_0to1[b]
        if not torch.isfinite(H).all():
            continue
        yx = torch.nonzero(heatmap0[b] >= 0.25)  # bilinear targets: the dominant neighbours
        if len(yx) > max_points:
            yx = yx[torch.randperm(len(yx), device=yx.device)[:max_points]]
        c0 = yx.flip(-1).float()
        c1 = torch.round(_warp(c0, H))
        high = torch.tensor([w - 1 - radius, h - 1 - radius], device=c0.device)
        inside = ((c0 >= radius) & (c0 <= high) & (c1 >= radius) & (c1 <= high)).all(1)
        c0, c1 = c0[inside], c1[inside]
        c1i = c1.long()
        keep = valid_mask1[b][c1i[:, 1], c1i[:, 0]] > 0.5
        keep &= valid_mask0[b][c0[:, 1].long(), c0[:, 0].long()] > 0.5
        if not keep.any():
            continue
        q0 = refine_subpixel(logits[b], c0[keep], radius, temperature)
        q1 = refine_subpixel(logits[B + b], c1[keep], radius, temperature)
        distances.append(torch.sqrt(((_warp(q0, H) - q1) ** 2).sum(1) + 1e-8))
    if not distances:
        return _zero(logits)
    return torch.cat(distances).mean()
