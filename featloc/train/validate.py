"""A compact in-memory HPatches-style evaluator for monitoring training (not the benchmark:
that is `featloc.eval.hpatches`, which writes results files).

Folder layout: one folder per sequence (`i_*` illumination, `v_*` viewpoint, other names count as
viewpoint), holding images `1.<ext>` ... `6.<ext>` and text files `H_1_k` (H_0to1 from image 1 to
image k). For each pair (1, k): keypoints and unit descriptors from the inference extractor
run on the model in training, mutual nearest neighbours (L2), then
- MMA@t: mean over pairs of the fraction of matches whose reprojection error under the ground
  truth H is <= t px (D2-Net protocol, methods 5.1);
- homography accuracy@t: share of pairs whose RANSAC homography moves image 1's corners by
  <= t px on average (methods 5.2).
Illumination and viewpoint are reported separately (TRAINING.md 5), plus their mean.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..geometry import RansacConf, estimate_homography
from ..geometry.homography import homography_corner_error, warp_points
from ..io.images import IMAGE_EXTENSIONS, read_image
from ..matching.nn import nearest_neighbor_match


@dataclass(frozen=True)
class ValConf:
    hpatches_dir: str | None = None  # HPatches-format folder; None: no validation
    max_sequences: int = 0  # evaluate at most this many sequences (half i_, half v_); 0: all
    resize_max: int = 480  # longer side (px) fed to the model, rounded to a multiple of 16
    max_keypoints: int = 1024  # keypoints per image (best scores)
    detection_threshold: float | None = None  # None: the extractor's default per architecture
    nms_radius: int = 4  # px
    border_px: int = 4  # no keypoints this close to the border
    add_edge_to_logits: bool | None = None  # None: the architecture's inference default
    thresholds_px: list[float] = field(default_factory=lambda: [1.0, 3.0, 5.0])
    ransac_th_px: float = 3.0


def list_sequences(root: str | Path, max_sequences: int = 0) -> list[Path]:
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"validation folder not found: {root} (val.hpatches_dir)")
    seqs = sorted(p for p in root.iterdir() if p.is_dir() and (p / "H_1_2").exists())
    if not seqs:
        raise FileNotFoundError(f"no HPatches-format sequences (folders with H_1_2) in {root}")
    if max_sequences > 0 and len(seqs) > max_sequences:
        illum = [s for s in seqs if s.name.startswith("i_")]
        view = [s for s in seqs if not s.name.startswith("i_")]
        n_i = min(len(illum), max(max_sequences // 2, max_sequences - len(view)))
        pick = lambda lst, n: [lst[j] for j in np.linspace(0, len(lst) - 1, n).round().astype(int)] if n else []  # noqa: E731
        seqs = pick(illum, n_i) + pick(view, max_sequences - n_i)
    return seqs


def _image_path(seq: Path, index: int) -> Path:
    for ext in IMAGE_EXTENSIONS:
        path = seq / f"{index}{ext}"
        if path.exists():
            return path
    raise FileNotFoundError(f"{seq}: no image {index}.<ext>")


def make_extractor(model, conf: ValConf, device):
    """The inference extractor (`featloc.features.samfeat.SAMFeat`) on a copy of the model in
    training, so validation measures exactly what users will run. Descriptors are unit-norm
    and matched by mutual NN in L2: with attention-weighted descriptors, dot-product NN picks
    the few highest-weight points for every query (hubness), which measured far worse."""
    from ..config import make_conf
    from ..features.samfeat import SAMFeat, SAMFeatConf

    extractor_conf = make_conf(SAMFeatConf, {
        "arch": model.conf.arch, "max_num_keypoints": conf.max_keypoints,
        "resize_max": conf.resize_max, "detection_threshold": conf.detection_threshold,
        "nms_radius": conf.nms_radius, "border_px": conf.border_px,
        "add_edge_to_logits": conf.add_edge_to_logits, "descriptor_output": "unit",
        "device": str(device), "precision": "float32",
    })
    return SAMFeat(extractor_conf, net=model)


@torch.no_grad()
def evaluate_hpatches(model, conf: ValConf, device) -> dict[str, float]:
    was_training = model.training
    model.eval()
    per_kind: dict[str, dict[str, list[float]]] = {"i": {}, "v": {}}
    ransac = RansacConf(threshold_px=conf.ransac_th_px)
    extractor = make_extractor(model, conf, device)
    try:
        for seq in list_sequences(conf.hpatches_dir, conf.max_sequences):
            kind = "i" if seq.name.startswith("i_") else "v"
            image0 = read_image(_image_path(seq, 1))
            f0 = extractor.extract(image0)
            kp0, desc0 = f0.keypoints, f0.descriptors
            size0 = (image0.shape[1], image0.shape[0])
            for k in range(2, 7):
                if not (seq / f"H_1_{k}").exists():
                    continue
                H = np.loadtxt(seq / f"H_1_{k}")
                f1 = extractor.extract(read_image(_image_path(seq, k)))
                kp1, desc1 = f1.keypoints, f1.descriptors
                m0, _ = nearest_neighbor_match(desc0, desc1, mutual_check=True, metric="l2")
                idx = np.flatnonzero(m0 >= 0)
                p0, p1 = kp0[idx], kp1[m0[idx]]
                err = np.linalg.norm(warp_points(p0, H) - p1, axis=1) if len(idx) else np.zeros(0)
                est = estimate_homography(p0, p1, ransac)
                corner = homography_corner_error(est.model, H, size0) if est.success else np.inf
                rec = per_kind[kind]
                for t in conf.thresholds_px:
                    rec.setdefault(f"mma@{t:g}", []).append(float(np.mean(err <= t)) if len(err) else 0.0)
                    rec.setdefault(f"h_acc@{t:g}", []).append(float(corner <= t))
                rec.setdefault("matches", []).append(float(len(idx)))
                rec.setdefault("keypoints", []).append(float(len(kp1)))
    finally:
        model.train(was_training)
    out = {}
    for kind, rec in per_kind.items():
        for key, values in rec.items():
            out[f"{key}_{kind}"] = float(np.mean(values))
    for key in {k for rec in per_kind.values() for k in rec}:
        both = [out[f"{key}_{kind}"] for kind in ("i", "v") if f"{key}_{kind}" in out]
        out[key] = float(np.mean(both))
    return dict(sorted(out.items()))
