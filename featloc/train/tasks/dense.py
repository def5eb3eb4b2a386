"""Detector-free matcher training task (methods.md 3, 4): SAM-Net or CoAM
(`featloc.models.dense`, `model.arch`) on homographic and posed pairs with dense ground truth
(`featloc.train.data.dense`), trained with the weighted sum of

- coarse: focal loss (alpha 0.25, gamma 2; ASpanFormer) or NLL on the dual-softmax matrix;
- fine: L2 of the window refinement weighted by the inverse predicted std, on up to
  `fine_max_matches` ground-truth coarse matches per pair (LoFTR / ASpanFormer);
- flow (SAM-Net): s + exp(-s) |mu - mu_gt|^2 of every cross block's flow (ASpanFormer);
- hinge (CoAM): L_pos + L_hard + L_all of methods 4.4.3, both directions;
- distinct (CoAM): the L1 distinctiveness loss of methods 4.3 (the head reads detached
  descriptors, so this term trains only the head);
- distill: knowledge distillation (methods 3.3 as recommended there): a 1x1 adapter of the
  backbone's coarse map against a frozen teacher's dense descriptors resampled to the same
  grid, both L2-normalised per pixel; the teacher is the project's SAMFeat-lite network
  (shipped featloc/weights/samfeat-lite.pt, or a path). Weight 0: off.

Every term is logged (`loss_<term>`) with the batch's coarse precision / recall (the
inference matching at the validation threshold) and the fine error in pixels. Validation
(`val.num_pairs` > 0): the inference path (`match`) on held-out pairs: coarse precision,
precision at `val.correct_px`, median fine error (px), matches per pair.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ...models.dense import (
    COARSE_STRIDE,
    DenseNetConf,
    build_dense_net,
    dual_softmax,
    save_dense_net,
)
from ...models.dense.blocks import cell_grid, cells_to_pixels, pixels_to_cells
from ...models.weights import weights_file
from .. import dense_losses as DL
from ..data.cache import build_image_cache, digest
from ..data.dense import VAL_EPOCH, DenseDataConf, DensePairs
from ..data.matching import list_posed_pairs

logger = logging.getLogger(__name__)

ModelConf = DenseNetConf
DataConf = DenseDataConf
COARSE_LOSSES = ("focal", "nll")
# Coarse thresholds of the training-batch metrics and of validation (inference defaults).
THRESHOLDS = {"samnet": 0.2, "coam": 0.3}


@dataclass(frozen=True)
class LossConf:
    coarse: float = 1.0  # weight of the coarse dual-softmax term
    coarse_type: str = "focal"  # focal (ASpanFormer) | nll
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    fine: float = 1.0  # weight of the fine refinement term
    fine_max_matches: int = 128  # ground-truth coarse matches refined per pair
    flow: float = 0.01  # SAM-Net flow term (ASpanFormer: 0.1 x 0.1 effective)
    hinge: float = 0.0  # CoAM descriptor hinge terms L_pos + L_hard + L_all (CoAM: 1)
    hinge_queries: int = 256  # query points per pair (official: 512)
    hinge_negatives: int = 256  # random candidate cells per pair (+1 co-visible)
    hinge_hardest: int = 3  # hardest negatives per query in L_hard
    hinge_exclusion_px: float = 8.0  # false-negative radius: one coarse cell (official 4 px at
    #                                  stride 1; scaled to the 1/8 descriptor grid)
    distinct: float = 0.0  # CoAM distinctiveness L1 (official: 0.1)
    distinct_queries: int = 32  # query cells per pair (official: 32)
    distill: float = 0.0  # knowledge distillation weight (0: off; SAM-Net: 0.2 / 0.8 split)
    # frozen teacher: a shipped SAMFeat weights name (featloc/weights/<name>.pt) or a path
    distill_teacher: str = "samfeat-lite"

    def __post_init__(self):
        if self.coarse_type not in COARSE_LOSSES:
            raise ValueError(f"losses.coarse_type must be one of {COARSE_LOSSES}, got "
                             f"{self.coarse_type!r}")
        for key in ("coarse", "fine", "flow", "hinge", "distinct", "distill"):
            if getattr(self, key) < 0:
                raise ValueError(f"losses.{key} must be >= 0")
        if self.fine_max_matches < 1 or self.hinge_queries < 1 or self.hinge_negatives < 1:
            raise ValueError("losses.fine_max_matches, hinge_queries and hinge_negatives must "
                             "be >= 1")


@dataclass(frozen=True)
class ValConf:
    num_pairs: int = 0  # validation pairs (inference path, batch 1); 0: no validation
    # folders of the validation pairs; empty: the training folders, with crops and warps never
    # drawn for training
    image_dirs: list[str] = field(default_factory=list)
    match_threshold: float | None = None  # None: the arch default (samnet 0.2, coam 0.3)
    correct_px: float = 3.0  # a match is correct when within this of its ground truth


def build_model(conf) -> torch.nn.Module:
    w, arch = conf.losses, conf.model.arch
    if arch != "samnet" and w.flow > 0:
        logger.info("losses.flow is a SAM-Net term; ignored for %s", arch)
    if arch != "coam" and (w.hinge > 0 or w.distinct > 0):
        raise ValueError("losses.hinge and losses.distinct are CoAM terms (model.arch=coam)")
    if w.distill > 0 and conf.model.distill_dim == 0:
        raise ValueError("losses.distill > 0 needs model.distill_dim > 0 (the adapter)")
    if w.coarse == 0 and arch == "samnet":
        raise ValueError("SAM-Net matches with the dual-softmax: losses.coarse must be > 0")
    return build_dense_net(conf.model)


def _dataset(conf, image_dirs: list[str], posed: list[str]) -> DensePairs:
    data = conf.data
    images = build_image_cache(list(image_dirs), data.cache_dir, data.cache_max_side) \
        if image_dirs else None
    return DensePairs(data, images, conf.train.seed, list_posed_pairs(list(posed)))


def build_datasets(conf) -> dict:
    data = conf.data
    if not data.image_dirs and not data.posed_scenes:
        raise ValueError("no training data: set data.image_dirs (homographic pairs) and/or "
                         "data.posed_scenes (featloc make-scenes folders)")
    if conf.losses.distill > 0:  # fail now, not after the first batch
        dim = _teacher(conf, torch.device("cpu")).conf.descriptor_dim
        if dim != conf.model.distill_dim:
            raise ValueError(f"the distillation teacher gives {dim}-d descriptors but "
                             f"model.distill_dim={conf.model.distill_dim}")
    return {"train": _dataset(conf, list(data.image_dirs), list(data.posed_scenes))}


# -------------------------------------------------------------------------------- teacher

_TEACHERS: dict[tuple[str, str], torch.nn.Module] = {}


def _teacher(conf, device: torch.device) -> torch.nn.Module:
    """The frozen SAMFeat teacher of `losses.distill_teacher` (once per process/device)."""
    from ...models.samfeat import load_samfeat_net

    path = weights_file(conf.losses.distill_teacher)
    key = (str(path), str(device))
    if key not in _TEACHERS:
        if not path.is_file():
            raise FileNotFoundError(f"losses.distill_teacher: {path} not found (a SAMFeat "
                                    "weights file, e.g. the shipped samfeat-lite)")
        net = load_samfeat_net(path).to(device).eval()
        net.requires_grad_(False)
        _TEACHERS[key] = net
        logger.info("distillation teacher %s (%s)", path, net.conf.arch)
    return _TEACHERS[key]


# -------------------------------------------------------------------------------- loss


def to_network_input(image: torch.Tensor) -> torch.Tensor:
    """uint8 [B, 3, H, W] -> float [-1, 1]."""
    return image.float().mul_(2.0 / 255).sub_(1.0)


def _item(out: dict, b: int) -> dict:
    keys = ("coarse0", "coarse1", "distinct0", "distinct1")
    return {**{k: out[k][b:b + 1] for k in keys if k in out},
            "grid0": out["grid0"], "grid1": out["grid1"]}


@torch.no_grad()
def _batch_metrics(model, out, labels, threshold) -> dict[str, float]:
    """Coarse precision / recall of the inference matching on the training batch."""
    correct = predicted = positives = 0
    n0, n1 = labels.shape[1], out["coarse1"].shape[1]
    for b in range(labels.shape[0]):
        ones0 = torch.ones(n0, dtype=torch.bool, device=labels.device)
        ones1 = torch.ones(n1, dtype=torch.bool, device=labels.device)
        i0, i1, _ = model.coarse_match(_item(out, b), ones0, ones1, threshold, 0)
        correct += int((labels[b, i0] == i1).sum())
        predicted += len(i0)
        positives += int((labels[b] >= 0).sum())
    return {"precision": correct / max(predicted, 1), "recall": correct / max(positives, 1),
            "num_pos": positives / labels.shape[0]}


def _fine_pairs(labels: torch.Tensor, per_pair: int):
    """(batch, i0, i1) of up to `per_pair` random ground-truth coarse matches per pair."""
    picks = []
    for b in range(labels.shape[0]):
        idx = torch.nonzero(labels[b] >= 0)[:, 0]
        idx = idx[torch.randperm(len(idx)).to(idx.device)[:per_pair]]
        picks.append(torch.stack([torch.full_like(idx, b), idx]))
    batch, i0 = torch.cat(picks, 1)
    return batch, i0, labels[batch, i0]


def compute_loss(model, batch: dict, conf) -> tuple[torch.Tensor, dict[str, float]]:
    w, arch = conf.losses, conf.model.arch
    image0, image1 = to_network_input(batch["image0"]), to_network_input(batch["image1"])
    out = model(image0, image1)
    gt1, gt0 = batch["gt_points1"].float(), batch["gt_points0"].float()
    labels = DL.coarse_labels(gt1, gt0, out["grid0"], out["grid1"])
    terms, metrics = {}, {}
    if w.coarse > 0:
        if w.coarse_type == "focal":
            value = DL.coarse_focal_loss(dual_softmax(out["sim"]), labels, w.focal_alpha,
                                         w.focal_gamma)
        else:
            value = DL.coarse_nll_loss(out["sim"], labels)
        terms["coarse"] = (w.coarse, value)
    if w.fine > 0:
        b, i0, i1 = _fine_pairs(labels, w.fine_max_matches)
        if len(b):
            ref = model.refine(out, b, i0, i1)
            radius = model.refiner.radius_px
            centres1 = cells_to_pixels(cell_grid(*out["grid1"], gt1.device), COARSE_STRIDE)
            truth = gt1[b, i0]
            target = (truth - centres1[i1]) / radius
            terms["fine"] = (w.fine, DL.fine_loss(ref["offset"], ref["std"], target))
            inside = (target.abs().amax(-1) < 1)
            if inside.any():
                err = (ref["points1"].detach() - truth).norm(dim=-1)[inside]
                metrics["fine_error_px"] = float(err.mean())
    if arch == "samnet" and w.flow > 0 and out.get("flows"):
        t1 = pixels_to_cells(gt1, COARSE_STRIDE)  # targets of image-0 queries, image-1 cells
        t0 = pixels_to_cells(gt0, COARSE_STRIDE)
        values = [DL.flow_loss(mu0, lv0, t1) + DL.flow_loss(mu1, lv1, t0)
                  for mu0, mu1, lv0, lv1 in out["flows"]]
        terms["flow"] = (w.flow, torch.stack(values).mean() / 2)
    if w.hinge > 0:
        parts = [DL.hinge_losses(d0, d1, g, w.hinge_queries, w.hinge_negatives, w.hinge_hardest,
                                 w.hinge_exclusion_px)
                 for d0, d1, g in ((out["desc0"], out["desc1"], gt1),
                                   (out["desc1"], out["desc0"], gt0))]
        for k in ("pos", "hard", "all"):
            metrics[f"hinge_{k}"] = float((parts[0][k] + parts[1][k]).item() / 2)
        terms["hinge"] = (w.hinge, sum(p["pos"] + p["hard"] + p["all"] for p in parts) / 2)
    if w.distinct > 0:
        value = (DL.distinctiveness_loss(out["distinct0"], out["desc0"], out["desc1"],
                                         torch.isfinite(gt1).all(-1), w.distinct_queries)
                 + DL.distinctiveness_loss(out["distinct1"], out["desc1"], out["desc0"],
                                           torch.isfinite(gt0).all(-1), w.distinct_queries))
        terms["distinct"] = (w.distinct, value / 2)
    if w.distill > 0:
        teacher = _teacher(conf, image0.device)
        with torch.no_grad():
            targets = [teacher(x)["desc_map"] for x in (image0, image1)]
        terms["distill"] = (w.distill, (DL.distill_loss(out["distill0"], targets[0])
                                        + DL.distill_loss(out["distill1"], targets[1])) / 2)
    if not terms:
        raise ValueError("all loss weights are 0")
    total = sum(weight * value for weight, value in terms.values())
    metrics.update({f"loss_{k}": float(v.item()) for k, (_, v) in terms.items()})
    metrics.update(_batch_metrics(model, out, labels, THRESHOLDS[arch]))
    return total, metrics


# -------------------------------------------------------------------------------- validation

_VAL_ITEMS: dict[str, list] = {}


def _val_items(conf) -> list[dict]:
    key = digest({"data": asdict(conf.data), "val": asdict(conf.val), "seed": conf.train.seed})
    if key not in _VAL_ITEMS:
        dirs = list(conf.val.image_dirs) or list(conf.data.image_dirs)
        posed = [] if conf.val.image_dirs else list(conf.data.posed_scenes)
        dataset = _dataset(conf, dirs, posed)
        _VAL_ITEMS[key] = [dataset[(VAL_EPOCH, i % len(dataset))]
                           for i in range(conf.val.num_pairs)]
    return _VAL_ITEMS[key]


def validate(model, conf) -> dict[str, float]:
    """The inference path on `val.num_pairs` held-out pairs: coarse precision (without
    refinement, the matched cell of image 1 is the ground-truth cell), and with refinement:
    precision at `val.correct_px`, median error (px) of the matches with ground truth, the
    share of matches with ground truth, and matches per pair."""
    if conf.val.num_pairs <= 0:
        return {}
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    v, arch = conf.val, conf.model.arch
    threshold = v.match_threshold if v.match_threshold is not None else THRESHOLDS[arch]
    coarse_ok = coarse_total = judged = correct = 0
    errors, counts = [], []
    for item in _val_items(conf):
        image0 = to_network_input(item["image0"][None].to(device))
        image1 = to_network_input(item["image1"][None].to(device))
        coarse = model.match(image0, image1, threshold, refine=False)
        out = model.match(image0, image1, threshold)
        gt1, gt0 = item["gt_points1"].to(device), item["gt_points0"].to(device)
        grid = (image0.shape[-2] // COARSE_STRIDE, image0.shape[-1] // COARSE_STRIDE)
        labels = DL.coarse_labels(gt1[None], gt0[None], grid, grid)[0]
        c0 = DL.cell_index(coarse["keypoints0"], grid)
        coarse_ok += int((labels[c0] == DL.cell_index(coarse["keypoints1"], grid)).sum())
        coarse_total += len(c0)
        i0 = DL.cell_index(out["keypoints0"], grid)
        truth = gt1[i0]
        has_gt = torch.isfinite(truth).all(-1)
        err = (out["keypoints1"] - truth).norm(dim=-1)[has_gt]
        judged += int(has_gt.sum())
        correct += int((err <= v.correct_px).sum())
        errors.append(err.cpu().numpy())
        counts.append(len(i0))
    model.train(was_training)
    errors = np.concatenate(errors) if errors else np.zeros(0)
    total = max(sum(counts), 1)
    return {"coarse_precision": coarse_ok / max(coarse_total, 1),
            f"precision_{v.correct_px:g}px": correct / total,
            "fine_error_px": float(np.median(errors)) if len(errors) else float("nan"),
            "with_gt": judged / total,
            "num_matches": float(np.mean(counts))}


# -------------------------------------------------------------------------------- export


def export(model, conf, path: Path, info: dict | None = None) -> Path:
    """Inference weights `{"net_conf", "state_dict", "meta"}` (`load_dense_net`; load with
    `load_dense_matcher(arch, weights=PATH)` or ship as featloc/weights/<arch>.pt), floats in
    fp16 or fp32, and a JSON sidecar `<path>.json` (conf, step, commit, training config)."""
    path = Path(path)
    info = dict(info or {})
    dtype = torch.float16 if conf.train.export_dtype == "fp16" else torch.float32
    meta = {"arch": conf.model.arch, "step": info.get("step"), "commit": info.get("commit")}
    save_dense_net(model, path, dtype, **meta)
    sidecar = {"model": "dense", "net_conf": asdict(model.conf),
               "dtype": conf.train.export_dtype, **meta,
               "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
               "parameters": sum(p.numel() for p in model.parameters()),
               "size_bytes": path.stat().st_size, "config": info.get("config")}
    sidecar_path = path.with_suffix(".json")
    tmp = sidecar_path.with_name(sidecar_path.name + ".tmp")
    tmp.write_text(json.dumps(sidecar, indent=1, default=str))
    os.replace(tmp, sidecar_path)
    return path
