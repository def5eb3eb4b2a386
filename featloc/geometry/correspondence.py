"""Ground-truth match labels from keypoints reprojected into the other image.

The labelling rule of glue-factory's `gt_generation.py` (methods.md 2.8), shared by the
homography and the pose+depth ground truth:
- dist_ij = max(|p_i^{0->1} - p_j^1|^2, |p_i^0 - p_j^{1->0}|^2) over pairs visible both ways;
- (i, j) is positive iff j = argmin_j dist_ij, i = argmin_i dist_ij and dist_ij < pos_th^2;
- i is unmatched (-1) if it may be a negative (e.g. it has valid depth) and
  min_j |p_i^{0->1} - p_j^1|^2 > neg_th^2, or if it is known to have no correspondence
  (e.g. occluded); everything else is ignored (-2).
"""

from __future__ import annotations

import numpy as np

from ..types import IGNORE, UNMATCHED


def _sq_dists(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[N, 2] x [M, 2] -> [N, M] float32 squared distances; rows of `a` with NaN give inf."""
    a = np.asarray(a, np.float64).reshape(-1, 2)
    b = np.asarray(b, np.float64).reshape(-1, 2)
    d = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1).astype(np.float32)
    d[~np.isfinite(d)] = np.inf
    return d


def labels_from_reprojection(
    kpts0: np.ndarray,
    kpts1: np.ndarray,
    kpts0_in1: np.ndarray,
    kpts1_in0: np.ndarray,
    visible0: np.ndarray,
    visible1: np.ndarray,
    pos_th_px: float,
    neg_th_px: float,
    may_be_negative0: np.ndarray | None = None,
    may_be_negative1: np.ndarray | None = None,
    no_match0: np.ndarray | None = None,
    no_match1: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Match labels of both images.

    Args:
        kpts0: [N0, 2], kpts1: [N1, 2] keypoints (px).
        kpts0_in1: [N0, 2] keypoints of image 0 projected into image 1 (NaN: no projection);
            kpts1_in0: [N1, 2] the reverse.
        visible0: [N0] bool, the projection is trustworthy (may form a positive); visible1 [N1].
        pos_th_px, neg_th_px: positive and negative thresholds (px).
        may_be_negative0/1: [N] bool, the point may be labelled unmatched by distance
            (default: all).
        no_match0/1: [N] bool, the point certainly has no correspondence (e.g. occluded): it
            is unmatched unless it is a positive (default: none).
    Returns:
        matches0 [N0] and matches1 [N1] int64: index of the match, -1 unmatched, -2 ignore.
    """
    n0, n1 = len(kpts0), len(kpts1)
    visible0 = np.asarray(visible0, bool).reshape(n0)
    visible1 = np.asarray(visible1, bool).reshape(n1)
    may0 = np.ones(n0, bool) if may_be_negative0 is None else np.asarray(may_be_negative0, bool)
    may1 = np.ones(n1, bool) if may_be_negative1 is None else np.asarray(may_be_negative1, bool)
    none0 = np.zeros(n0, bool) if no_match0 is None else np.asarray(no_match0, bool)
    none1 = np.zeros(n1, bool) if no_match1 is None else np.asarray(no_match1, bool)
    matches0 = np.full(n0, IGNORE, np.int64)
    matches1 = np.full(n1, IGNORE, np.int64)
    if n0 == 0 or n1 == 0:
        matches0[may0 | none0] = UNMATCHED
        matches1[may1 | none1] = UNMATCHED
        return matches0, matches1
    dist0 = _sq_dists(kpts0_in1, kpts1)  # [N0, N1] error measured in image 1
    dist1 = _sq_dists(kpts0, kpts1_in0)  # [N0, N1] error measured in image 0
    dist = np.maximum(dist0, dist1)
    dist[~(visible0[:, None] & visible1[None, :])] = np.inf
    min0 = np.argmin(dist, axis=1)
    min1 = np.argmin(dist, axis=0)
    rows = np.arange(n0)
    mutual = min1[min0] == rows
    positive0 = mutual & (dist[rows, min0] < pos_th_px**2)
    negative0 = (may0 & (dist0.min(1) > neg_th_px**2)) | none0
    negative1 = (may1 & (dist1.min(0) > neg_th_px**2)) | none1
    matches0[negative0] = UNMATCHED
    matches1[negative1] = UNMATCHED
    matches0[positive0] = min0[positive0]
    matches1[min0[positive0]] = rows[positive0]
    return matches0, matches1
