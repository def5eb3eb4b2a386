"""Attentional matcher training task (methods.md 2.8-2.10): `featloc.models.attention` on pairs
of frozen features (`featloc.train.data.matching`), trained with

- nll: the assignment NLL with deep supervision (every layer's head, weights gamma^(L-1-l));
- conf: the adaptive-depth confidence-classifier loss (weight `losses.confidence`);
- distill: knowledge distillation (weight `losses.distill`, 0: off): KL between a frozen
  teacher's soft assignment and the student's, rows and columns, at a temperature. The teacher
  is a matcher of the project loaded from a file (an exported `attention.pt` or a training
  checkpoint, e.g. a deeper model or an earlier run) or "self": the student's own last layer
  (detached) teaches its earlier layers.

Every term is logged (`loss_nll`, `loss_conf`, `loss_distill`) with the last layer's
`nll_last`, `nll_pos`, `nll_neg`, and the training-batch `precision` / `recall` of the last
layer's matches against the labels. Validation (`val.num_pairs` > 0): precision, recall and the
adaptive depth (layers run) of the inference path, beside mutual NN on the same pairs.
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

from ...models.attention import (
    AttentionMatcherNet,
    AttentionNetConf,
    filter_matches,
    load_attention_net,
    save_attention_net,
)
from .. import matching_losses as ML
from ..data.cache import build_image_cache, digest
from ..data.matching import VAL_EPOCH, MatchingDataConf, MatchingPairs, list_posed_pairs

logger = logging.getLogger(__name__)

# Schemas of the config sections model, data, losses, val (read by featloc.train.conf).
ModelConf = AttentionNetConf
DataConf = MatchingDataConf
# Match threshold of the training-batch precision/recall metrics (LightGlue's inference 0.1).
METRIC_THRESHOLD = 0.1


@dataclass(frozen=True)
class LossConf:
    nll_balancing: float = 0.5  # beta: positives vs unmatched in the NLL (methods 2.9)
    layer_gamma: float = 1.0  # deep supervision weight gamma^(L-1-l); 1: uniform; 0: last only
    confidence: float = 1.0  # adaptive-depth classifier loss weight (0: no early-exit training)
    distill: float = 0.0  # knowledge distillation weight (0: off)
    # "self": the student's last layer (detached) teaches its earlier layers; or the path of a
    # frozen teacher matcher (exported attention.pt or a ckpt_*.pt of this task)
    distill_teacher: str = ""
    distill_temperature: float = 2.0  # softens both assignments (KL scaled by T^2)
    distill_layers: str = "all"  # student layers distilled: all | last

    def __post_init__(self):
        if self.distill_layers not in ("all", "last"):
            raise ValueError(f"losses.distill_layers must be all or last, got "
                             f"{self.distill_layers!r}")
        if self.distill > 0 and not self.distill_teacher:
            raise ValueError("losses.distill > 0 needs losses.distill_teacher (self or a path)")
        if self.distill_temperature <= 0:
            raise ValueError("losses.distill_temperature must be > 0")
        if not 0 <= self.nll_balancing <= 1:
            raise ValueError("losses.nll_balancing must be in [0, 1]")


@dataclass(frozen=True)
class ValConf:
    num_pairs: int = 0  # validation pairs (inference path, batch 1); 0: no validation
    # folders of the validation pairs; empty: the training folders, with crops and warps never
    # drawn for training
    image_dirs: list[str] = field(default_factory=list)
    filter_threshold: float = 0.1  # inference settings used for validation
    depth_confidence: float = 0.95
    width_confidence: float = 0.99


def build_model(conf) -> torch.nn.Module:
    return AttentionMatcherNet(conf.model)


def _dataset(conf, image_dirs: list[str], posed: list[str]) -> MatchingPairs:
    data = conf.data
    images = build_image_cache(list(image_dirs), data.cache_dir, data.cache_max_side) \
        if image_dirs else None
    dataset = MatchingPairs(data, images, conf.train.seed, list_posed_pairs(list(posed)))
    model = conf.model
    if dataset.descriptor_dim != model.input_dim:
        raise ValueError(f"model.input_dim={model.input_dim} but {data.features} gives "
                         f"{dataset.descriptor_dim}-d descriptors")
    if model.add_scale_ori and not dataset.has_scale_ori:
        raise ValueError(f"model.add_scale_ori needs keypoint scales and orientations, which "
                         f"{data.features} does not give")
    return dataset


def build_datasets(conf) -> dict:
    data = conf.data
    if not data.image_dirs and not data.posed_scenes:
        raise ValueError("no training data: set data.image_dirs (homographic pairs) and/or "
                         "data.posed_scenes (featloc make-scenes folders)")
    dataset = _dataset(conf, list(data.image_dirs), list(data.posed_scenes))
    if conf.losses.distill > 0 and conf.losses.distill_teacher != "self":
        t = _teacher(conf, torch.device("cpu")).conf  # fail now, not after the first batch
        if t.input_dim != dataset.descriptor_dim or (t.add_scale_ori
                                                     and not dataset.has_scale_ori):
            raise ValueError(f"the distillation teacher {conf.losses.distill_teacher} takes "
                             f"other features (input_dim {t.input_dim}, add_scale_ori "
                             f"{t.add_scale_ori}) than data.features={data.features}")
    return {"train": dataset}


# -------------------------------------------------------------------------------- teacher

_TEACHERS: dict[tuple[str, str], AttentionMatcherNet] = {}


def _teacher(conf, device: torch.device) -> AttentionMatcherNet:
    """The frozen teacher of `losses.distill_teacher` (loaded once per process and device)."""
    path = conf.losses.distill_teacher
    key = (path, str(device))
    if key not in _TEACHERS:
        if not Path(path).is_file():
            raise FileNotFoundError(f"losses.distill_teacher: {path} not found (an exported "
                                    "attention.pt or a ckpt_*.pt of the attention task)")
        net = load_attention_net(path).to(device).eval()
        net.requires_grad_(False)
        t = net.conf
        logger.info("distillation teacher %s: %d layers, dim %d", path, t.num_layers, t.dim)
        _TEACHERS[key] = net
    return _TEACHERS[key]


# -------------------------------------------------------------------------------- loss


@torch.no_grad()
def _precision_recall(log_assignment: torch.Tensor, gt0: torch.Tensor, threshold: float
                      ) -> tuple[float, float]:
    """Precision of the predicted matches on labelled points and recall of the positives."""
    m0 = filter_matches(log_assignment.float(), threshold)[0]
    labelled = gt0 != -2
    predicted = (m0 >= 0) & labelled
    correct = predicted & (m0 == gt0)
    positives = gt0 >= 0
    precision = correct.sum().item() / max(predicted.sum().item(), 1)
    recall = (correct & positives).sum().item() / max(positives.sum().item(), 1)
    return precision, recall


def compute_loss(model, batch: dict, conf) -> tuple[torch.Tensor, dict[str, float]]:
    w = conf.losses
    pred = model(batch)
    la = pred["log_assignment"]  # [L, B, M+1, N+1] float32
    gt0, gt1 = batch["gt_matches0"], batch["gt_matches1"]
    mask0, mask1 = batch.get("mask0"), batch.get("mask1")
    nll, parts = ML.deep_supervision_nll(la, gt0, gt1, w.nll_balancing, w.layer_gamma)
    terms = {"nll": (1.0, nll)}
    if w.confidence > 0 and la.shape[0] > 1:
        terms["conf"] = (w.confidence, ML.confidence_loss(
            pred["confidence0"], pred["confidence1"], la, mask0, mask1))
    if w.distill > 0:
        if w.distill_teacher == "self":
            target = la[-1].detach()
            students = la[:-1] if w.distill_layers == "all" else la[-1:]
        else:
            teacher = _teacher(conf, la.device)
            with torch.no_grad():
                target = teacher(batch)["log_assignment"][-1]
            students = la if w.distill_layers == "all" else la[-1:]
        if len(students):
            kd = sum(ML.assignment_distillation(s, target, mask0, mask1, w.distill_temperature)
                     for s in students) / len(students)
            terms["distill"] = (w.distill, kd)
    total = sum(weight * value for weight, value in terms.values())
    precision, recall = _precision_recall(la[-1], gt0, METRIC_THRESHOLD)
    metrics = {f"loss_{k}": float(v.item()) for k, (_, v) in terms.items()}
    metrics.update({k: float(v.item()) for k, v in parts.items()})
    metrics.update({"precision": precision, "recall": recall,
                    "num_pos": float((gt0 >= 0).sum(-1).float().mean().item())})
    return total, metrics


# -------------------------------------------------------------------------------- validation

_VAL_ITEMS: dict[str, list] = {}


def _val_items(conf) -> list[dict]:
    """The validation pairs (built once per process: feature extraction is the cost)."""
    key = digest({"data": asdict(conf.data), "val": asdict(conf.val), "seed": conf.train.seed})
    if key not in _VAL_ITEMS:
        dirs = list(conf.val.image_dirs) or list(conf.data.image_dirs)
        posed = [] if conf.val.image_dirs else list(conf.data.posed_scenes)
        dataset = _dataset(conf, dirs, posed)
        _VAL_ITEMS[key] = [dataset[(VAL_EPOCH, i % len(dataset))]
                           for i in range(conf.val.num_pairs)]
    return _VAL_ITEMS[key]


def _unpad(item: dict, device) -> dict:
    out = {}
    for i in (0, 1):
        keep = item[f"mask{i}"]
        for k in ("keypoints", "descriptors", "keypoint_scores", "scales", "oris"):
            out[f"{k}{i}"] = item[f"{k}{i}"][keep][None].to(device)
        out[f"image_size{i}"] = item[f"image_size{i}"][None].to(device)
        out[f"gt_matches{i}"] = item[f"gt_matches{i}"][keep]
    return out


def validate(model, conf) -> dict[str, float]:
    """Inference-path precision / recall / layers run on `val.num_pairs` pairs, and mutual NN
    on the same features."""
    if conf.val.num_pairs <= 0:
        return {}
    from ...matching.nn import nearest_neighbor_match

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    v = conf.val
    counts = np.zeros((2, 3))  # [attention, nn] x [correct, predicted, positives]
    layers = []
    for item in _val_items(conf):
        data = _unpad(item, device)
        gt0 = data["gt_matches0"].numpy()
        out = model.match(data, v.filter_threshold, v.depth_confidence, v.width_confidence)
        layers.append(out["stop"])
        nn0, _ = nearest_neighbor_match(data["descriptors0"][0].cpu().numpy(),
                                        data["descriptors1"][0].cpu().numpy())
        for row, m0 in enumerate((out["matches0"].cpu().numpy(), nn0)):
            predicted = (m0 >= 0) & (gt0 != -2)
            correct = predicted & (m0 == gt0)
            counts[row] += [correct.sum(), predicted.sum(), (gt0 >= 0).sum()]
    model.train(was_training)
    prec = counts[:, 0] / np.maximum(counts[:, 1], 1)
    rec = counts[:, 0] / np.maximum(counts[:, 2], 1)
    return {"precision": float(prec[0]), "recall": float(rec[0]), "nn_precision": float(prec[1]),
            "nn_recall": float(rec[1]), "layers": float(np.mean(layers))}


# -------------------------------------------------------------------------------- export


def export(model, conf, path: Path, info: dict | None = None) -> Path:
    """Inference weights `{"net_conf", "state_dict", "meta"}` (the format of
    `featloc.models.attention.load_attention_net`, floats in fp16 or fp32; load it with
    `load_matcher("attention", weights=PATH)` or ship it as featloc/weights/<name>.pt) and a
    JSON sidecar `<path>.json` (model conf, features, step, commit, training config)."""
    path = Path(path)
    info = dict(info or {})
    dtype = torch.float16 if conf.train.export_dtype == "fp16" else torch.float32
    meta = {"features": conf.data.features, "extractor_conf": dict(conf.data.extractor_conf),
            "num_keypoints": conf.data.num_keypoints, "step": info.get("step"),
            "commit": info.get("commit")}
    save_attention_net(model, path, dtype, **meta)
    sidecar = {"model": "attention", "net_conf": asdict(model.conf),
               "dtype": conf.train.export_dtype, **meta,
               "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
               "parameters": sum(p.numel() for p in model.parameters()),
               "config": info.get("config")}
    sidecar_path = path.with_suffix(".json")
    tmp = sidecar_path.with_name(sidecar_path.name + ".tmp")
    tmp.write_text(json.dumps(sidecar, indent=1, default=str))
    os.replace(tmp, sidecar_path)
    return path
