"""Evaluation metrics (pure functions; no thresholds or devices chosen here)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def error_auc(errors: Sequence[float], thresholds: Sequence[float]) -> list[float]:
    """Area under the recall-vs-error curve up to each threshold, divided by the threshold.

    The SuperGlue `pose_auc` algorithm: sort errors (failures as inf), recall k/N after the
    k-th error, prepend (0, 0), cut at the threshold with (t, last recall), trapezoid rule.
    Returns values in [0, 1].
    """
    errors = np.asarray(errors, np.float64).reshape(-1)
    if errors.size == 0:
        return [0.0 for _ in thresholds]
    errors = np.where(np.isnan(errors), np.inf, errors)
    order = np.sort(errors)
    recall = (np.arange(len(order)) + 1) / len(order)
    order = np.r_[0.0, order]
    recall = np.r_[0.0, recall]
    aucs = []
    for t in thresholds:
        last = np.searchsorted(order, t)
        r = np.r_[recall[:last], recall[last - 1]]
        e = np.r_[order[:last], t]
        aucs.append(float(np.trapezoid(r, x=e) / t))
    return aucs


def rotation_error_deg(R_est: np.ndarray, R_gt: np.ndarray) -> float:
    """Angle of R_est^T R_gt in degrees."""
    cos = (np.trace(np.asarray(R_est).T @ np.asarray(R_gt)) - 1) / 2
    return float(np.rad2deg(np.arccos(np.clip(cos, -1.0, 1.0))))


def angle_between_deg(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na < 1e-12 or nb < 1e-12:
        return float("nan")
    return float(np.rad2deg(np.arccos(np.clip(a @ b / (na * nb), -1.0, 1.0))))


def relative_pose_error(T_gt, R_est: np.ndarray, t_est: np.ndarray) -> tuple[float, float]:
    """(rotation error, translation-direction error) in degrees; the translation error ignores
    the sign of t (an essential matrix fixes t only up to sign): min(e, 180 - e)."""
    err_R = rotation_error_deg(R_est, T_gt.R)
    err_t = angle_between_deg(t_est, T_gt.t)
    return err_R, float(min(err_t, 180.0 - err_t))
