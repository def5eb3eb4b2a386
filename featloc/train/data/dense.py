"""Training pairs for the detector-free matchers (`featloc.models.dense`): two images and the
ground-truth correspondence of every coarse cell centre.

Two sources, mixed in one dataset (the same sources as `featloc.train.data.matching`):
- homographic pairs from image folders: a random square crop of a cached image resized to
  `image_size` is view 0, its warp by a random H_0to1 is view 1 (`sample_view_pair`), both
  photometrically augmented; correspondences by H (a point is valid when it lands inside the
  other view, where view 1 always shows the source content of view 0);
- posed pairs from synthetic scenes (`featloc make-scenes` folders): each image resized so its
  longer side is `image_size` (aspect kept) and padded with black at the bottom/right to a
  square, intrinsics unchanged in the original pixels; correspondences by depth and pose with
  the occlusion check of `project_with_depth` (|z - depth1| < rel_depth_tol depth1), so
  occluded, out-of-view and depth-less points are invalid.

Item keys (S = image_size, N = (S / 8)^2 coarse cells of a view, row-major):
    image0/1 [3, S, S] uint8 RGB (the task scales them to [-1, 1] on the device)
    gt_points1 [N, 2] float32: for each cell centre of view 0, its correspondence in view 1
        (pixels, project convention), NaN where it has none; gt_points0 [N, 2]: the reverse
    H_0to1 [3, 3] float32 (NaN for posed pairs)
Randomness: each item seeds its generators from (seed, epoch, index) (exact resume).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from ...geometry.depth import DEFAULT_REL_DEPTH_TOL
from ...models.dense.conf import COARSE_STRIDE
from .augment import PhotometricConf, photometric
from .cache import ImageCache
from .homographies import HomographyConf, sample_view_pair

# The epoch of validation items (never drawn in training: epochs count from 0).
VAL_EPOCH = 1_000_000_000


@dataclass(frozen=True)
class DenseDataConf:
    image_dirs: list[str] = field(default_factory=list)  # homographic pairs: image folders
    cache_dir: str = "outputs/cache"  # decoded images (shared with the other tasks)
    cache_max_side: int = 640  # images are downsized once so the longer side is <= this
    image_size: int = 256  # side of the square views (px), a multiple of 32
    crop_min: int = 240  # crop side range in cached pixels (clipped to the short side)
    crop_max: int = 480
    repeat: int = 1  # homographic items per image and epoch
    identity_prob: float = 0.0  # chance that view 1 is an identity copy (photometric only)
    homography: HomographyConf = field(default_factory=HomographyConf)
    photometric: PhotometricConf = field(default_factory=PhotometricConf)
    # posed pairs: folders written by `featloc make-scenes` (pairs_gt.txt, images/, depth/)
    posed_scenes: list[str] = field(default_factory=list)
    posed_repeat: int = 1  # items per posed pair and epoch
    rel_depth_tol: float = DEFAULT_REL_DEPTH_TOL  # occlusion check of posed correspondences

    def __post_init__(self):
        if self.image_size < 64 or self.image_size % 32:
            raise ValueError(f"data.image_size must be a multiple of 32 and >= 64, got "
                             f"{self.image_size}")
        if not 0 < self.crop_min <= self.crop_max:
            raise ValueError("need 0 < data.crop_min <= data.crop_max")
        if self.repeat < 0 or self.posed_repeat < 0:
            raise ValueError("data.repeat and data.posed_repeat must be >= 0")


def cell_centres(size: int) -> np.ndarray:
    """[N, 2] pixel centres of the coarse cells of an S x S view, row-major."""
    n = size // COARSE_STRIDE
    c = (np.arange(n) + 0.5) * COARSE_STRIDE - 0.5
    xs, ys = np.meshgrid(c, c)
    return np.stack([xs.ravel(), ys.ravel()], 1)


def _inside(points: np.ndarray, size: int) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        return np.isfinite(points).all(1) & (points >= -0.5).all(1) & (points < size - 0.5).all(1)


def homography_correspondences(H: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(gt_points1, gt_points0) of the cell centres of two S x S views related by H."""
    from ...geometry.homography import warp_points

    centres = cell_centres(size)
    out = []
    for M in (H, np.linalg.inv(H)):
        points = warp_points(centres, M)
        out.append(np.where(_inside(points, size)[:, None], points, np.nan).astype(np.float32))
    return out[0], out[1]


def fit_square(image: np.ndarray, size: int) -> tuple[np.ndarray, tuple[float, float]]:
    """Resize so the longer side is `size` (aspect kept), pad with black to size x size at
    the bottom/right. Returns the view and the per-axis scale (view / original)."""
    h, w = image.shape[:2]
    ratio = size / max(h, w)
    nw, nh = max(1, round(w * ratio)), max(1, round(h * ratio))
    interp = cv2.INTER_AREA if ratio < 1 else cv2.INTER_LINEAR
    resized = cv2.resize(image, (nw, nh), interpolation=interp)
    out = np.zeros((size, size, *image.shape[2:]), image.dtype)
    out[:nh, :nw] = resized
    return out, (nw / w, nh / h)


def pose_correspondences(pair, depths, scales, size: int, rel_depth_tol: float
                         ) -> tuple[np.ndarray, np.ndarray]:
    """(gt_points1, gt_points0) of the cell centres of two fitted views of a posed pair
    (pair: `featloc.eval.pose.PosePair`; depths: original-resolution depth maps; scales:
    per-view (sx, sy) of `fit_square`)."""
    from ...geometry.depth import project_with_depth

    centres = cell_centres(size)
    out = []
    for src, dst, K_src, K_dst, T in ((0, 1, pair.K0, pair.K1, pair.T_0to1),
                                      (1, 0, pair.K1, pair.K0, pair.T_0to1.inv())):
        s_src, s_dst = np.asarray(scales[src]), np.asarray(scales[dst])
        original = (centres + 0.5) / s_src - 0.5  # centres in the padding stay outside
        projected, visible = project_with_depth(original, depths[src], K_src, T, K_dst,
                                                depth1=depths[dst], rel_depth_tol=rel_depth_tol)
        points = (projected + 0.5) * s_dst - 0.5
        ok = visible & _inside(points, size)
        out.append(np.where(ok[:, None], points, np.nan).astype(np.float32))
    return out[0], out[1]


class DensePairs(Dataset):
    """Homographic and posed pairs with dense coarse-grid ground truth (module docstring).

    Args:
        conf: `DenseDataConf`.
        images: the decoded image cache of `conf.image_dirs` (None: no homographic pairs).
        seed: the run's seed.
        posed: the posed pairs (`featloc.train.data.matching.list_posed_pairs`).
    """

    def __init__(self, conf: DenseDataConf, images: ImageCache | None, seed: int,
                 posed: list | None = None):
        self.conf, self.images, self.seed = conf, images, seed
        self.posed = list(posed or [])
        self.num_homographic = (len(images) if images is not None else 0) * conf.repeat
        if len(self) == 0:
            raise ValueError("no training pairs: give data.image_dirs and/or data.posed_scenes")

    def __len__(self) -> int:
        return self.num_homographic + len(self.posed) * self.conf.posed_repeat

    def __getitem__(self, item) -> dict[str, torch.Tensor]:
        epoch, index = item if isinstance(item, tuple) else (0, item)
        rngs = [np.random.default_rng(s)
                for s in np.random.SeedSequence([self.seed, epoch, index]).spawn(4)]
        if index < self.num_homographic:
            views, gt1, gt0, H = self._homographic(index, rngs)
        else:
            entry = self.posed[(index - self.num_homographic) % len(self.posed)]
            views, gt1, gt0 = self._posed(entry)
            H = np.full((3, 3), np.nan, np.float32)
        out = {"gt_points1": torch.from_numpy(gt1), "gt_points0": torch.from_numpy(gt0),
               "H_0to1": torch.from_numpy(np.asarray(H, np.float32))}
        for i, (view, rng) in enumerate(zip(views, rngs[2:], strict=True)):
            view = photometric(np.ascontiguousarray(view), self.conf.photometric, rng)
            out[f"image{i}"] = torch.from_numpy(np.ascontiguousarray(view.transpose(2, 0, 1)))
        return out

    def _homographic(self, index: int, rngs):
        conf, S = self.conf, self.conf.image_size
        src = self.images.image(index % len(self.images))
        M0, H = sample_view_pair(src.shape[:2], S, conf.crop_min, conf.crop_max,
                                 conf.identity_prob, conf.homography, rngs[0], rngs[1])
        views = tuple(cv2.warpPerspective(src, M, (S, S), flags=cv2.INTER_LINEAR,
                                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)
                      for M in (M0, H @ M0))
        gt1, gt0 = homography_correspondences(H, S)
        return views, gt1, gt0, H

    def _posed(self, entry):
        from ...io.images import read_image

        pair, root, S = entry.pair, entry.scene, self.conf.image_size
        fitted = [fit_square(read_image(root / "images" / n), S) for n in (pair.name0, pair.name1)]
        depths = [np.load(root / "depth" / f"{Path(n).stem}.npy") for n in (pair.name0, pair.name1)]
        gt1, gt0 = pose_correspondences(pair, depths, [s for _, s in fitted], S,
                                        self.conf.rel_depth_tol)
        return tuple(v for v, _ in fitted), gt1, gt0
