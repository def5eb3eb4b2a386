"""SAMFeat training task: the SAMFeat networks, homographic pairs (and optionally posed pairs
with depth and pose, `data.posed_scenes`) with pseudo-labels and teacher targets, and the five
SAMFeat losses (methods section 1). No SAMFeat term reads H_0to1, so posed items (H_0to1 = NaN)
train every one of them.

A batch of B pairs runs as one forward pass over 2B images (all view-0 images first). Loss terms
(each weighted from `losses`; weight 0 skips the term entirely): det (weighted BCE), des (MTLDesc
triplet), dis (relation distillation, on the teacher embedding or else on the group relation),
wsc (semantic-group contrastive), edge (MSE), and beyond the paper rep (sub-pixel reprojection
of the detector, off by default; it reads H_0to1 and skips posed items). Every term is logged.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Any

import torch

from ...config import make_conf
from .. import losses as L
from ..data.cache import build_image_cache
from ..data.pairs import PairsConf, TrainingPairs
from ..data.posed import build_posed_source
from ..data.targets import build_teacher_targets
from ..labels import build_labels
from ..validate import ValConf, evaluate_hpatches, list_sequences  # noqa: F401 (schema)

# Schemas of the config sections model, data, losses and val (read by featloc.train.conf):
# ModelConf and LossConf below, DataConf = PairsConf, ValConf from featloc.train.validate.
DataConf = PairsConf


@dataclass(frozen=True)
class ModelConf:
    arch: str = "lite"  # vgg (the official SAMFeat network) | lite
    options: dict[str, Any] = field(default_factory=dict)  # other SAMFeatNetConf fields
    # names (prefixes) of the parameters to train, e.g. [heatmap, alphas, fine] for the
    # detector alone: the rest is frozen, BatchNorm statistics included, so a fine-tune of
    # the detector leaves the descriptors bit for bit unchanged; []: train everything
    trainable: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class LossConf:
    detector: float = 1.0  # weights of the five terms (0: the term is not computed)
    descriptor: float = 1.0
    distill: float = 1.0
    wsc: float = 1.0
    edge: float = 1.0
    pos_weight: float = 200.0  # detector BCE positive-class weight (lambda+)
    triplet_temperature: float = 14.0  # MTLDesc attention temperature T_a
    triplet_margin: float = 1.0
    wsc_margin: float = 0.07  # M
    wsc_temperature: float = 5.0  # T
    wsc_form: str = "paper"  # paper | official (reproduction of the released code)
    distill_target: str = "auto"  # auto (embedding, else groups) | embedding | groups
    # relations over a random subset of this many student pixels (the same for the whole
    # batch): an unbiased, cheaper estimate of the mean |R_S - R_T|; 0: all pixels (exact)
    distill_pixels: int = 0
    # beyond the paper (0: off): weight of the sub-pixel reprojection term (losses.reprojection)
    # and its soft-argmax window radius (as the extractor's subpixel_radius) and point budget
    reprojection: float = 0.0
    reprojection_radius: int = 2
    reprojection_points: int = 256

    def __post_init__(self):
        if self.wsc_form not in ("paper", "official"):
            raise ValueError(f"losses.wsc_form must be paper or official, got {self.wsc_form!r}")
        if self.distill_target not in ("auto", "embedding", "groups"):
            raise ValueError("losses.distill_target must be auto, embedding or groups")


def _net_api():
    """(build(model_conf) -> nn.Module, sample_descriptors) of the SAMFeat networks."""
    from ...models import samfeat

    def build(model_conf: ModelConf):
        net_conf = make_conf(samfeat.SAMFeatNetConf, {"arch": model_conf.arch,
                                                      **model_conf.options})
        return samfeat.build_samfeat_net(net_conf)

    return build, samfeat.sample_descriptors


def build_model(conf) -> torch.nn.Module:
    net = _net_api()[0](conf.model)
    if conf.model.trainable:
        freeze_except(net, list(conf.model.trainable))
    return net


def _keep_eval(module: torch.nn.Module, _inputs) -> None:
    module.eval()


def freeze_except(net: torch.nn.Module, trainable: list[str]) -> None:
    """Train only the parameters whose names start with one of `trainable`. Frozen BatchNorm
    layers keep their running statistics and normalise with them (a forward pre-hook puts
    them in eval mode, whatever `net.train()` says)."""
    names = [name for name, _ in net.named_parameters()]
    unknown = [t for t in trainable if not any(n.startswith(t) for n in names)]
    if unknown:
        raise ValueError(f"model.trainable: no parameter starts with {unknown}")
    for name, param in net.named_parameters():
        param.requires_grad_(any(name.startswith(t) for t in trainable))
    for module in net.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and not any(
                p.requires_grad for p in module.parameters()):
            module.register_forward_pre_hook(_keep_eval)


def build_datasets(conf) -> dict:
    data = conf.data
    if not data.image_dirs and not data.posed_scenes:
        raise ValueError("no training data: set data.image_dirs (homographic pairs) and/or "
                         "data.posed_scenes (posed pairs, e.g. featloc make-scenes folders)")
    if conf.val.hpatches_dir:
        list_sequences(conf.val.hpatches_dir)  # fail now, not after hours of training
    label_conf = data.labels if conf.losses.detector > 0 else None
    images = labels = teacher = posed = None
    if data.image_dirs:
        images = build_image_cache(list(data.image_dirs), data.cache_dir, data.cache_max_side)
        if label_conf is not None:
            labels = build_labels(images, label_conf, data.cache_dir)
        teacher = build_teacher_targets(images, dict(data.teacher), data.cache_dir) \
            if data.teacher is not None else None
    if data.posed_scenes:
        posed = build_posed_source(list(data.posed_scenes), data.cache_dir, data.cache_max_side,
                                   label_conf, data.teacher)
    return {"train": TrainingPairs(data, images, labels, teacher, conf.train.seed, posed)}


def _cat(batch: dict, key: str) -> torch.Tensor:
    return torch.cat([batch[f"{key}0"], batch[f"{key}1"]])


def compute_loss(model, batch: dict, conf) -> tuple[torch.Tensor, dict[str, float]]:
    w = conf.losses
    images = _cat(batch, "image").float() * (2 / 255) - 1  # uint8 -> [-1, 1] (methods 1.2)
    B, hw = len(batch["image0"]), tuple(images.shape[-2:])
    pred = model(images)
    terms: dict[str, tuple[float, torch.Tensor]] = {}
    metrics: dict[str, float] = {}
    if w.detector > 0:
        terms["det"] = (w.detector, L.detector_bce(pred["logits"], _cat(batch, "heatmap"),
                                                   _cat(batch, "valid_mask"), w.pos_weight))
    if w.reprojection > 0:
        terms["rep"] = (w.reprojection, L.reprojection(
            pred["logits"], batch["heatmap0"], batch["valid_mask0"], batch["valid_mask1"],
            batch["H_0to1"], w.reprojection_radius, 1.0, w.reprojection_points))
    if w.descriptor > 0 or w.wsc > 0:
        sample = _net_api()[1]
        desc_map, weight_map = pred["desc_map"].float(), pred["weight_map"].float()
        d0, w0 = sample(desc_map[:B], weight_map[:B], batch["points0"], hw)
        d1, w1 = sample(desc_map[B:], weight_map[B:], batch["points1"], hw)
        if w.descriptor > 0:
            terms["des"] = (w.descriptor, L.descriptor_triplet(
                d0, w0, d1, w1, batch["valid"], batch["not_search"],
                w.triplet_temperature, w.triplet_margin))
            metrics["match_acc"] = _match_accuracy(d0, d1, batch["valid"])
            metrics["weight_mean"] = float(w0.detach().mean().item())
        if w.wsc > 0:
            desc = torch.cat([w0[..., None] * d0, w1[..., None] * d1])
            ns = torch.cat([batch["not_search"]] * 2)
            terms["wsc"] = (w.wsc, L.wsc(desc, _cat(batch, "point_groups"),
                                         _cat(batch, "has_groups"), w.wsc_margin,
                                         w.wsc_temperature, w.wsc_form, ns))
    if w.distill > 0:
        terms["dis"] = (w.distill, _distill(pred["distill"], batch, w.distill_target,
                                            w.distill_pixels))
    if w.edge > 0:
        terms["edge"] = (w.edge, L.edge_mse(pred["edge"], _cat(batch, "edge"),
                                            _cat(batch, "has_edges")))
    total = sum(weight * value for weight, value in terms.values())
    metrics.update({f"loss_{name}": float(value.item()) for name, (_, value) in terms.items()})
    return total, metrics


def _distill(student: torch.Tensor, batch: dict, target: str, pixels: int) -> torch.Tensor:
    use_embedding = target == "embedding" or (target == "auto" and batch["embedding0"].shape[1])
    teacher = _cat(batch, "embedding" if use_embedding else "groups_small")
    if use_embedding and teacher.shape[-2:] != student.shape[-2:]:
        teacher = torch.nn.functional.interpolate(teacher, size=student.shape[-2:],
                                                  mode="bilinear", align_corners=False)
    h, w = student.shape[-2:]
    if 0 < pixels < h * w:  # same random pixels in every image; torch RNG (checkpointed)
        pick = torch.randperm(h * w, device=student.device)[:pixels]
        student = student.flatten(2)[:, :, pick, None]
        teacher = teacher.flatten(-2)[..., pick, None]
    if use_embedding:
        return L.relation_distillation(student, teacher, _cat(batch, "has_embedding"))
    return L.group_relation_distillation(student, teacher, _cat(batch, "has_groups"))


@torch.no_grad()
def _match_accuracy(d0: torch.Tensor, d1: torch.Tensor, valid: torch.Tensor) -> float:
    """Share of valid points whose nearest view-1 descriptor is their correspondence."""
    nn = (d0.float() @ d1.float().transpose(1, 2)).argmax(-1)
    correct = (nn == torch.arange(d0.shape[1], device=d0.device)).float() * valid
    return float((correct.sum() / valid.sum().clamp(min=1)).item())


def validate(model, conf) -> dict[str, float]:
    if not conf.val.hpatches_dir:
        return {}
    device = next(model.parameters()).device
    return evaluate_hpatches(model, conf.val, device)


def export(model, conf, path: Path, info: dict | None = None) -> Path:
    """Inference weights `{"net_conf", "state_dict"}` (the format of
    `featloc.models.samfeat.load_samfeat_net`; floats in fp16 or fp32) and a JSON sidecar
    `<path>.json` with the model conf, step, commit and the training config."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    dtype = torch.float16 if conf.train.export_dtype == "fp16" else torch.float32
    state = {k: (v.detach().to("cpu", dtype) if v.is_floating_point() else v.detach().cpu())
             for k, v in model.state_dict().items()}
    net_conf = asdict(model.conf) if is_dataclass(getattr(model, "conf", None)) else None
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"net_conf": net_conf, "state_dict": state}, tmp)
    os.replace(tmp, path)
    info = dict(info or {})
    sidecar = {"model": "samfeat", "arch": conf.model.arch, "net_conf": net_conf,
               "dtype": conf.train.export_dtype, "step": info.pop("step", None),
               "commit": info.pop("commit", None), "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
               "parameters": sum(v.numel() for v in state.values()), **info}
    meta = path.with_suffix(".json")
    tmp = meta.with_name(meta.name + ".tmp")
    tmp.write_text(json.dumps(sidecar, indent=1, default=str))
    os.replace(tmp, meta)
    return path
