"""Sub-pixel refinement of matches by local patch alignment (affine, photometric Lucas-Kanade).

A matcher pairs keypoints that were detected independently in each image, so a correct match
is only as accurate as the two detections: about 1 px for samfeat-lite, which caps relative
pose accuracy (scripts/pose_oracle.py). This step keeps each image-0 point and moves its partner
in image 1 to where the image-0 patch around it aligns best, the classical idea behind KLT
tracking and, with learned features instead of intensities, Pixel-Perfect SfM's keypoint
adjustment.

Per match, a (2r+1)^2 patch of image 0 centred on the image-0 point is the template; the
model is an affine map x1 = t + A u of the patch offsets u (the local first-order
approximation of any smooth warp, which a translation-only KLT lacks under rotation, scale
or foreshortening) and a gain/bias on the intensities (lighting). Gauss-Newton
(forward-additive) minimises the squared intensity difference for all matches at once.
The affine map starts at the identity, or (`init="neighbours"`) at the scale and rotation
that the neighbouring matches show, for wide baselines where the identity is too far off.
A refinement is rejected, and the match keeps its original image-1 point, when it moves
further than `max_shift`, its template has no texture, its template leaves image 0, the
aligned patches correlate less than `min_ncc` (zero-normalised cross-correlation, which the
fitted gain cannot inflate), or its position is uncertain by more than `max_std` (the
aperture problem: a patch on a straight edge aligns equally well anywhere along it).
A failed alignment (moved too far, diverged or correlated below `min_ncc`) is also evidence
that the match is wrong: with `drop_failed` such matches are left out (`keep`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ..config import make_conf
from ..io.images import read_image, to_gray


@dataclass(frozen=True)
class RefineConf:
    radius: int = 12  # template half-size (px) around each image-0 point
    stride: int = 1  # px between template samples: (2r/stride+1)^2 samples
    iterations: int = 10  # Gauss-Newton steps
    affine: bool = True  # estimate a local affine map (False: translation only, as KLT)
    init: str = "neighbours"  # start of the affine map: "neighbours" or "identity" (module doc)
    neighbours: int = 8  # matches around each one that the "neighbours" start uses
    photometric: bool = True  # estimate a per-match gain and bias
    max_shift: float = 3.0  # px; refinements that move the image-1 point further are rejected
    min_ncc: float = 0.9  # refinements whose aligned patches correlate less are rejected
    max_std: float = 0.1  # px; refinements less certain than this (e.g. along an edge) are rejected
    noise: float = 2.0  # grey levels; floor of the intensity noise in that uncertainty
    min_contrast: float = 2.0  # template intensity std (grey levels) below which it is skipped
    damping: float = 1e-3  # Levenberg term on the normal equations (flat or edge-only patches)
    drop_failed: bool = True  # `keep` excludes matches whose alignment failed (module doc)

    def __post_init__(self):
        if self.stride < 1 or self.radius % self.stride:
            raise ValueError(f"stride must be >= 1 and divide radius, got {self.stride}, {self.radius}")
        if self.radius < 1 or self.iterations < 1:
            raise ValueError(f"radius and iterations must be >= 1, got {self.radius}, "
                             f"{self.iterations}")
        if self.max_shift <= 0:
            raise ValueError(f"max_shift must be > 0, got {self.max_shift}")
        if self.init not in ("identity", "neighbours"):
            raise ValueError(f"init must be 'identity' or 'neighbours', got {self.init!r}")
        if not -1 <= self.min_ncc <= 1:
            raise ValueError(f"min_ncc must be in [-1, 1], got {self.min_ncc}")


def refine_conf(conf: RefineConf | dict | None = None, **overrides) -> RefineConf:
    """A validated `RefineConf` (unknown keys raise `ConfigError`)."""
    if isinstance(conf, RefineConf) and not overrides:
        return conf
    return make_conf(RefineConf, conf if isinstance(conf, dict) else (conf and vars(conf)), overrides)


@dataclass
class RefinedMatches:
    """points1: [N, 2] float32 refined image-1 points (the input point where rejected);
    refined: [N] bool, whether the point moved; ncc: [N] float32 zero-normalised cross-correlation
    of the aligned patches (-1 where no alignment was attempted); std: [N] float32 standard
    deviation (px) of the refined position along its least certain direction (inf where not
    attempted); keep: [N] bool, the matches to use: all of them, or with `drop_failed` those
    whose alignment did not fail (moved too far, diverged or correlated below `min_ncc`;
    skipped and merely uncertain ones stay)."""

    points1: np.ndarray
    refined: np.ndarray
    ncc: np.ndarray
    std: np.ndarray
    keep: np.ndarray

    @classmethod
    def unrefined(cls, points1: np.ndarray) -> RefinedMatches:
        """The matches as they are: nothing attempted, everything kept."""
        n = len(points1)
        return cls(np.asarray(points1, np.float32).reshape(-1, 2).copy(), np.zeros(n, bool),
                   np.full(n, -1.0, np.float32), np.full(n, np.inf, np.float32), np.ones(n, bool))


def _sample(image: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Bilinear samples of `image` (H, W[, C]) at `points` [..., 2] (x, y) -> [...[, C]];
    outside: the nearest border pixel."""
    shape = points.shape[:-1] + image.shape[2:]
    flat = points.reshape(-1, 2).astype(np.float32)
    n = len(flat)
    if n == 0:
        return np.zeros(shape, np.float32)
    width = 4096  # cv2.remap takes maps narrower than SHRT_MAX: sample in rows of this width
    pad = (-n) % width
    flat = np.concatenate([flat, np.zeros((pad, 2), np.float32)]).reshape(-1, width, 2)
    out = cv2.remap(image, np.ascontiguousarray(flat[..., 0]), np.ascontiguousarray(flat[..., 1]),
                    cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return out.reshape(-1, *image.shape[2:])[:n].reshape(shape)


def _inverse(H: np.ndarray) -> np.ndarray:
    """Inverses of a stack of damped normal matrices; the pseudo-inverse if one is singular."""
    try:
        return np.linalg.inv(H)
    except np.linalg.LinAlgError:
        return np.linalg.pinv(H)


def _similarity_from_neighbours(p0: np.ndarray, p1: np.ndarray, k: int) -> np.ndarray:
    """[N, 2, 2] local similarity (scale and rotation) of each match from the displacement of
    its k nearest matches (in image 0): the component-wise median of the complex ratios
    (p1_j - p1_i) / (p0_j - p0_i), robust to a minority of wrong neighbours. Identity where
    fewer than 3 neighbours lie 4 px or more away or the scale is implausible (not 0.2-5)."""
    from scipy.spatial import cKDTree

    n = len(p0)
    A = np.tile(np.eye(2, dtype=np.float32), (n, 1, 1))
    if n < 4:
        return A
    _, index = cKDTree(p0).query(p0, k=min(k, n - 1) + 1)
    index = index[:, 1:]  # drop the match itself
    z0 = (p0[index, 0] - p0[:, None, 0]) + 1j * (p0[index, 1] - p0[:, None, 1])
    z1 = (p1[index, 0] - p1[:, None, 0]) + 1j * (p1[index, 1] - p1[:, None, 1])
    valid = np.abs(z0) >= 4.0
    enough = valid.sum(1) >= 3
    ratio = np.where(valid, z1 / np.where(valid, z0, 1), np.nan)[enough]
    re, im = np.zeros(n), np.zeros(n)
    re[enough], im[enough] = np.nanmedian(ratio.real, 1), np.nanmedian(ratio.imag, 1)
    scale = np.hypot(re, im)
    ok = enough & np.isfinite(scale) & (scale > 0.2) & (scale < 5.0)
    A[ok] = np.stack([np.stack([re[ok], -im[ok]], -1), np.stack([im[ok], re[ok]], -1)], 1)
    return A


def refine_matches(
    image0: np.ndarray,
    image1: np.ndarray,
    points0: np.ndarray,
    points1: np.ndarray,
    conf: RefineConf | dict | None = None,
) -> RefinedMatches:
    """Move each image-1 point to where the image-0 patch around its partner aligns best.

    Args:
        image0, image1: the two images (gray or RGB, uint8 or float in [0, 1]), at the
            resolution of the points.
        points0, points1: [N, 2] matched points (x, y), pixels.
        conf: `RefineConf` or overrides.
    """
    conf = refine_conf(conf)
    p0 = np.asarray(points0, np.float32).reshape(-1, 2)
    p1 = np.asarray(points1, np.float32).reshape(-1, 2)
    if len(p0) != len(p1):
        raise ValueError(f"point counts differ: {len(p0)} vs {len(p1)}")
    out = RefinedMatches.unrefined(p1)
    g0 = to_gray(image0).astype(np.float32)
    g1 = to_gray(image1).astype(np.float32)
    r = conf.radius
    h0, w0 = g0.shape
    inside = ((p0[:, 0] >= r) & (p0[:, 0] <= w0 - 1 - r) & (p0[:, 1] >= r) & (p0[:, 1] <= h0 - 1 - r)
              & np.isfinite(p1).all(1))
    todo = np.flatnonzero(inside)
    if len(todo) == 0:
        return out

    grid = np.arange(-r, r + 1, conf.stride, dtype=np.float32)
    u = np.stack(np.meshgrid(grid, grid), -1).reshape(-1, 2)  # [P, 2] patch offsets
    template = _sample(g0, p0[todo, None, :] + u[None])  # [M, P]
    textured = template.std(1) >= conf.min_contrast
    todo, template = todo[textured], template[textured]
    m = len(todo)
    if m == 0:
        return out

    # intensity and gradients in one 3-channel image: one bilinear lookup per sample
    stack = np.dstack([g1, cv2.Scharr(g1, cv2.CV_32F, 1, 0) / 32.0,
                       cv2.Scharr(g1, cv2.CV_32F, 0, 1) / 32.0])
    t = p1[todo].copy()
    A = (_similarity_from_neighbours(p0, p1, conf.neighbours)[todo] if conf.init == "neighbours"
         else np.tile(np.eye(2, dtype=np.float32), (m, 1, 1)))
    gain, bias = np.ones(m, np.float32), np.zeros(m, np.float32)
    num_params = 2 + 4 * conf.affine + 2 * conf.photometric
    damping = conf.damping * np.eye(num_params)

    def linearise(sel):
        """Warped patches, residuals and Jacobians [S, P, K] of the matches `sel`."""
        ts, As, tmpl = t[sel], A[sel], template[sel]
        x = np.stack([ts[:, :1] + As[:, 0, :1] * u[:, 0] + As[:, 0, 1:] * u[:, 1],
                      ts[:, 1:] + As[:, 1, :1] * u[:, 0] + As[:, 1, 1:] * u[:, 1]], -1)
        sampled = _sample(stack, x)
        warped, ix, iy = sampled[..., 0], sampled[..., 1], sampled[..., 2]
        columns = [ix, iy]
        if conf.affine:
            columns += [ix * u[:, 0], ix * u[:, 1], iy * u[:, 0], iy * u[:, 1]]
        if conf.photometric:
            columns += [-tmpl, -np.ones_like(tmpl)]
        residual = warped - (gain[sel, None] * tmpl + bias[sel, None])
        return warped, residual, np.stack(columns, -1)

    active = np.arange(m)
    for _ in range(conf.iterations):
        _, residual, J = linearise(active)
        Jt = J.transpose(0, 2, 1)
        # normal equations in float64: in float32 the damping vanishes beside the large
        # intensity terms and a patch without gradient (e.g. outside image 1) is singular
        H = np.matmul(Jt, J).astype(np.float64) + damping
        g = np.matmul(Jt, residual[..., None]).astype(np.float64)
        ok = np.isfinite(H).all((1, 2)) & np.isfinite(g).all((1, 2))
        t[active[~ok]] = np.nan  # diverged: rejected below
        active, H, g = active[ok], H[ok], g[ok]
        step = -np.matmul(_inverse(H), g)[..., 0].astype(np.float32)
        t[active] += step[:, :2]
        k = 2
        if conf.affine:
            A[active] += step[:, 2:6].reshape(-1, 2, 2)
            k = 6
        if conf.photometric:
            gain[active] += step[:, k]
            bias[active] += step[:, k + 1]
        # converged: the patch corners move by less than 1e-3 px
        moved = np.abs(step[:, :2]).max(1) + r * (np.abs(step[:, 2:6]).sum(1) if conf.affine else 0)
        far = np.abs(t[active] - p1[todo][active]).max(1) > conf.max_shift + 1
        t[active[far]] = np.nan  # wandered off: rejected below
        active = active[~(moved < 1e-3) & ~far]
        if len(active) == 0:
            break

    finite = (np.isfinite(t).all(1) & np.isfinite(A).all((1, 2)) & np.isfinite(gain)
              & np.isfinite(bias))
    t[~finite], A[~finite] = p1[todo][~finite], np.eye(2, dtype=np.float32)
    gain[~finite], bias[~finite] = 1.0, 0.0
    warped, residual, J = linearise(np.arange(m))
    a = template - template.mean(1, keepdims=True)
    b = warped - warped.mean(1, keepdims=True)
    ncc = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-6)
    ncc[~finite] = -1.0
    # Position uncertainty: the translation block of the Gauss-Newton covariance, with the
    # residual's variance floored at `noise` grey levels so that a perfectly aligned edge
    # (zero residual, free to slide along itself) still counts as uncertain.
    dof = max(len(u) - num_params, 1)
    variance = np.maximum((residual ** 2).sum(1) / dof, conf.noise ** 2)
    covariance = _inverse(np.matmul(J.transpose(0, 2, 1), J).astype(np.float64) + damping)[:, :2, :2]
    std = np.sqrt(np.maximum(np.linalg.eigvalsh(covariance)[:, -1], 0) * variance)
    std[~finite] = np.inf
    aligned = finite & (np.linalg.norm(t - p1[todo], axis=1) <= conf.max_shift) & (ncc >= conf.min_ncc)
    accept = aligned & (std <= conf.max_std)
    if conf.drop_failed:
        out.keep[todo[~aligned]] = False
    out.std[todo] = std
    out.ncc[todo] = ncc
    out.points1[todo[accept]] = t[accept]
    out.refined[todo[accept]] = True
    return out


def refine_from_files(
    path0: str | Path, path1: str | Path, points0: np.ndarray, points1: np.ndarray,
    conf: RefineConf | dict | None = None,
) -> tuple[np.ndarray, np.ndarray, dict]:
    """`refine_matches` on two image files, as the benchmarks use it: the kept matches' points
    (image 0, refined image 1) and their counts (`num_refined`, `num_dropped`)."""
    refined = refine_matches(read_image(path0, grayscale=True), read_image(path1, grayscale=True),
                             points0, points1, conf)
    counts = {"num_refined": int(refined.refined.sum()), "num_dropped": int((~refined.keep).sum())}
    return np.asarray(points0)[refined.keep], refined.points1[refined.keep], counts
