"""Losses of the attentional matcher (methods.md 2.9), pure functions of the model outputs.

Shapes: log-assignments [B, M+1, N+1] (last row / column: dustbins), or [L, B, M+1, N+1] for
every layer; labels gt_matches0 [B, M] / gt_matches1 [B, N] int64 (index, -1 unmatched,
-2 ignore); masks [B, M|N] bool (False: padding). All losses are float32 scalars averaged
over the batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..types import UNMATCHED


def nll_assignment(log_assignment: torch.Tensor, gt_matches0: torch.Tensor,
                   gt_matches1: torch.Tensor, balancing: float = 0.5
                   ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """LightGlue/SuperGlue negative log-likelihood of the augmented assignment, per pair.

    nll_pos = -mean_{(i, j) in M} log P_ij; nll_neg = -(sum_{i in U0} log P_{i,N+1} +
    sum_{j in U1} log P_{M+1,j}) / (|U0| + |U1|); loss = beta nll_pos + (1 - beta) nll_neg.

    Returns:
        loss [B] and {"nll_pos", "nll_neg", "num_pos", "num_neg"} ([B] each).
    """
    la = log_assignment.float()
    M, N = la.shape[1] - 1, la.shape[2] - 1
    pos = gt_matches0 >= 0
    picked = la[:, :M, :N].gather(2, gt_matches0.clamp(min=0)[..., None])[..., 0]
    num_pos = pos.sum(-1)
    nll_pos = -(picked * pos).sum(-1) / num_pos.clamp(min=1)
    neg0, neg1 = gt_matches0 == UNMATCHED, gt_matches1 == UNMATCHED
    num_neg = neg0.sum(-1) + neg1.sum(-1)
    nll_neg = -((la[:, :M, N] * neg0).sum(-1) + (la[:, M, :N] * neg1).sum(-1)) \
        / num_neg.clamp(min=1)
    loss = balancing * nll_pos + (1 - balancing) * nll_neg
    return loss, {"nll_pos": nll_pos, "nll_neg": nll_neg, "num_pos": num_pos.float(),
                  "num_neg": num_neg.float()}


def layer_weights(num_layers: int, gamma: float) -> torch.Tensor:
    """Deep-supervision weights gamma^(L-1-l), normalised to sum 1 (gamma = 1: uniform;
    gamma = 0: the last layer only)."""
    w = torch.tensor([gamma ** (num_layers - 1 - i) for i in range(num_layers)],
                     dtype=torch.float32)
    return w / w.sum()


def deep_supervision_nll(log_assignments: torch.Tensor, gt_matches0: torch.Tensor,
                         gt_matches1: torch.Tensor, balancing: float = 0.5, gamma: float = 1.0
                         ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Weighted mean over layers of `nll_assignment` (each layer's head on that layer's
    states, methods 2.9), averaged over the batch. Returns the loss and the last layer's
    {"nll_last", "nll_pos", "nll_neg"}."""
    L = log_assignments.shape[0]
    weights = layer_weights(L, gamma).to(log_assignments.device)
    total, last = log_assignments.new_zeros(()), {}
    for i in range(L):
        if weights[i] == 0:
            continue
        loss, parts = nll_assignment(log_assignments[i], gt_matches0, gt_matches1, balancing)
        total = total + weights[i] * loss.mean()
        if i == L - 1:
            last = {"nll_last": loss.mean().detach(), "nll_pos": parts["nll_pos"].mean().detach(),
                    "nll_neg": parts["nll_neg"].mean().detach()}
    return total, last


def _masked_mean(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return values.mean()
    mask = mask.expand_as(values).float()
    return (values * mask).sum() / mask.sum().clamp(min=1)


def confidence_loss(confidence0: torch.Tensor, confidence1: torch.Tensor,
                    log_assignments: torch.Tensor, mask0: torch.Tensor | None = None,
                    mask1: torch.Tensor | None = None) -> torch.Tensor:
    """Adaptive-depth classifier loss (LightGlue): for each layer l < L-1 and point, BCE between
    the confidence logit and "the argmax of the point's row (image 0) or column (image 1) at
    layer l, dustbin included, equals the one at the last layer". Averaged over points, both
    images and layers; targets are detached.

    Args:
        confidence0: [L-1, B, M] logits; confidence1: [L-1, B, N].
        log_assignments: [L, B, M+1, N+1].
    """
    if confidence0.shape[0] == 0:
        return confidence0.new_zeros(())
    la = log_assignments.detach()
    final0 = la[-1, :, :-1, :].argmax(-1)  # [B, M]
    final1 = la[-1, :, :, :-1].argmax(-2)  # [B, N]
    now0 = la[:-1, :, :-1, :].argmax(-1)  # [L-1, B, M]
    now1 = la[:-1, :, :, :-1].argmax(-2)
    target0 = (now0 == final0[None]).float()
    target1 = (now1 == final1[None]).float()
    bce0 = F.binary_cross_entropy_with_logits(confidence0.float(), target0, reduction="none")
    bce1 = F.binary_cross_entropy_with_logits(confidence1.float(), target1, reduction="none")
    return (_masked_mean(bce0, None if mask0 is None else mask0[None])
            + _masked_mean(bce1, None if mask1 is None else mask1[None])) / 2


def assignment_distillation(student: torch.Tensor, teacher: torch.Tensor,
                            mask0: torch.Tensor | None = None, mask1: torch.Tensor | None = None,
                            temperature: float = 1.0) -> torch.Tensor:
    """Knowledge distillation of a soft assignment: KL(teacher || student) over the rows
    (each real point of image 0: a distribution over the N+1 columns) and the columns (each
    real point of image 1: over the M+1 rows), of the log-assignments divided by the
    temperature T and renormalised, times T^2 (Hinton et al.: keeps the gradient scale
    independent of T). Averaged over the real points, rows and columns weighted equally.

    Args:
        student, teacher: [B, M+1, N+1] log-assignments (the teacher is detached here).
        temperature: T > 0; larger T transfers more of the teacher's secondary candidates.
    """
    if temperature <= 0:
        raise ValueError(f"the distillation temperature must be > 0, got {temperature}")
    s, t = student.float() / temperature, teacher.detach().float() / temperature
    rows = F.kl_div(F.log_softmax(s[:, :-1, :], -1), F.log_softmax(t[:, :-1, :], -1),
                    reduction="none", log_target=True).sum(-1)  # [B, M]
    cols = F.kl_div(F.log_softmax(s[:, :, :-1], -2), F.log_softmax(t[:, :, :-1], -2),
                    reduction="none", log_target=True).sum(-2)  # [B, N]
    return (_masked_mean(rows, mask0) + _masked_mean(cols, mask1)) / 2 * temperature ** 2
