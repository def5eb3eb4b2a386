"""Localization metrics: 6-DoF recall (methods.md 5.4) and (x, y) MAE (methods.md 5.5).

- Pose: per query, position error = ||c_est - c_gt|| (c = -R^T t of cam_from_world) and
  orientation error = angle of R_est R_gt^T. A query is localized at (tau_t, tau_R) when
  both errors are within the thresholds; queries without a prediction count as failures
  (infinite errors). Reported: the share of ground-truth queries within (0.25 m, 2 deg),
  (0.5 m, 5 deg), (5 m, 10 deg), and the median errors over all queries (failures
  included, so a median is infinite / null when more than half fail) and over the
  localized ones.
- (x, y): MAE = mean(|x - x_gt| + |y - y_gt|) (the SUM of both axes per image). Ids match
  with or without file extensions; a query without a prediction is reported as missing and
  left out of the mean (`coverage` says how many were scored).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ..geometry.pose import Pose, rotation_angle_deg
from .report import markdown_table

logger = logging.getLogger(__name__)

POSE_THRESHOLDS = ((0.25, 2.0), (0.5, 5.0), (5.0, 10.0))  # (metres, degrees), Aachen


def read_poses_any(path: str | Path) -> dict[str, Pose]:
    """cam_from_world poses by image name from a pose text file (`name qw qx qy qz tx ty
    tz`), a COLMAP text model folder, or a kapture folder."""
    from ..io.colmap import read_model, read_poses

    path = Path(path)
    if path.is_file():
        return read_poses(path)
    if (path / "images.txt").is_file():
        return {im.name: im.cam_from_world for im in read_model(path).images.values()}
    if (path / "sensors" / "sensors.txt").is_file():
        from ..io.kapture_io import read_kapture

        return read_kapture(path, strict_rotations=False).poses
    if (path / "sparse" / "images.txt").is_file():  # a make-scenes folder
        return read_poses_any(path / "sparse")
    raise FileNotFoundError(f"{path}: not a pose file, COLMAP text model or kapture folder")


def pose_errors(predictions: Mapping[str, Pose], ground_truth: Mapping[str, Pose]) -> list[dict]:
    """Per ground-truth query: position error (model units), orientation error (deg);
    inf when there is no prediction."""
    records = []
    for name, gt in ground_truth.items():
        est = predictions.get(name)
        if est is None:
            records.append({"name": name, "localized": False, "t_error": math.inf, "R_error_deg": math.inf})
            continue
        records.append({
            "name": name, "localized": True,
            "t_error": float(np.linalg.norm(est.center - gt.center)),
            "R_error_deg": rotation_angle_deg(est.R @ gt.R.T),
        })
    return records


def summarize_pose_errors(
    records: Sequence[dict], thresholds: Sequence[tuple[float, float]] = POSE_THRESHOLDS
) -> dict:
    t = np.array([r["t_error"] for r in records], np.float64)
    R = np.array([r["R_error_deg"] for r in records], np.float64)
    loc = np.isfinite(t) & np.isfinite(R)
    recall = {f"{a:g}m_{b:g}deg": float(np.mean((t <= a) & (R <= b))) if len(t) else 0.0
              for a, b in thresholds}
    return {
        "num_queries": len(records),
        "num_predicted": int(loc.sum()),
        "recall": recall,
        "median_t_error": float(np.median(t)) if len(t) else math.inf,
        "median_R_error_deg": float(np.median(R)) if len(R) else math.inf,
        "median_t_error_localized": float(np.median(t[loc])) if loc.any() else math.inf,
        "median_R_error_deg_localized": float(np.median(R[loc])) if loc.any() else math.inf,
    }


def evaluate_poses(predictions: str | Path, ground_truth: str | Path) -> dict:
    """Summary (see `summarize_pose_errors`) plus per-query records and unknown names."""
    from ..io.colmap import read_poses

    pred = read_poses(predictions)
    gt = read_poses_any(ground_truth)
    if not gt:
        raise ValueError(f"{ground_truth}: no ground-truth poses")
    records = pose_errors(pred, gt)
    extra = sorted(set(pred) - set(gt))
    if extra:
        logger.warning("%d predicted names are not in the ground truth (e.g. %s)", len(extra), extra[0])
    return {"mode": "pose", **summarize_pose_errors(records), "unknown_predictions": extra,
            "queries": records}


def _normalise_ids(rows: Mapping[str, tuple[float, float]]) -> dict[str, tuple[float, float]]:
    from ..loc.xy import image_id

    return {image_id(k): v for k, v in rows.items()}


def evaluate_xy(predictions: str | Path, ground_truth: str | Path) -> dict:
    """MAE of an `id,x,y` prediction CSV against a ground-truth CSV."""
    from ..loc.xy import read_xy_csv

    pred = read_xy_csv(predictions)
    gt = read_xy_csv(ground_truth)
    if not gt:
        raise ValueError(f"{ground_truth}: no ground-truth rows")
    if not set(gt) & set(pred):  # ids written with/without extensions on either side
        pred, gt = _normalise_ids(pred), _normalise_ids(gt)
    errors, missing = [], []
    for key, (x, y) in gt.items():
        if key not in pred:
            missing.append(key)
            continue
        px, py = pred[key]
        errors.append(abs(px - x) + abs(py - y))
    if missing:
        logger.warning("%d of %d ground-truth ids have no prediction (e.g. %s)", len(missing),
                       len(gt), missing[0])
    errors = np.asarray(errors, np.float64)
    return {
        "mode": "xy",
        "num_queries": len(gt), "num_scored": int(len(errors)), "coverage": len(errors) / len(gt),
        "mae": float(errors.mean()) if len(errors) else math.inf,
        "median_error": float(np.median(errors)) if len(errors) else math.inf,
        "missing": missing,
    }


def localization_markdown(summary: dict) -> str:
    if summary["mode"] == "xy":
        return markdown_table(
            ["queries", "scored", "MAE (dx + dy)", "median error"],
            [[summary["num_queries"], summary["num_scored"], f"{summary['mae']:.4f}",
              f"{summary['median_error']:.4f}"]])
    header = ["queries", "predicted", *(k.replace("_", ", ") for k in summary["recall"]),
              "median t", "median R (deg)"]
    row = [summary["num_queries"], summary["num_predicted"],
           *(f"{100 * v:.1f}%" for v in summary["recall"].values()),
           f"{summary['median_t_error']:.4f}", f"{summary['median_R_error_deg']:.3f}"]
    return markdown_table(header, [row])
