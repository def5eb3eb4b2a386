"""SAMFeat training pairs: homographic pairs over any image folders (methods 1.9, 1.12.2,
1.12.3) and, optionally, posed pairs with depth and pose (1.12.1), mixed in one dataset.

Homographic items (indices [0, repeat * #images)): a random square crop of a cached image
(side drawn from [crop_min, crop_max] cached pixels, resized to `image_size`) is view 0; view 1
is the same source seen through a random homography H_0to1 (or an identity copy with
probability `identity_prob`), both photometrically augmented independently. Both views are
warps of the cached source image, by M0 (crop + resize) and M1 = H_0to1 @ M0, so view 1 shows
real image content wherever the source has it.

Posed items (the next posed_repeat * #pairs indices; `data.posed_scenes`, folder format and
crop recipe in `featloc.train.data.posed`): view 0 and view 1 are square crops of the two
images of a pair, resized to `image_size`, photometrically augmented independently. points1
is the projection of points0 with the depth of image 0, K0, T_0to1 and K1
(`featloc.geometry.depth.project_with_depth`); valid requires depth at the point, a
projection in front of camera 1 and inside view 1, and agreement with the depth of image 1
(|z - depth1| < posed_depth_tol * depth1), so occluded points are invalid. H_0to1 is NaN.
heatmap0/1 are the pseudo-labels of each image (homographic adaptation of that image itself),
and the teacher targets those of each image, cropped like the view; valid_mask0/1 is all ones
(the crops lie inside the images). No SAMFeat loss reads H_0to1: the detector term uses each
view's own heatmap and mask, the descriptor and WSC terms points0/1, valid and not_search, the
distillation and edge terms each view's teacher targets, so posed items use all five terms.

Item keys, the same for both kinds (tensors; S = image_size, N = grid^2):
    image0/1 [3, S, S] uint8 RGB (4x less to move between processes; the task scales them to
        [-1, 1] on the device, methods 1.2);  H_0to1 [3, 3] float32 (NaN for posed items)
    points0/1 [N, 2] float32 (x, y) pixels: one random integer point per grid cell of view 0, and
        its correspondence in view 1 (possibly outside the view; -1e4 where there is none,
        e.g. no depth);
        valid [N] float32: the correspondence exists and lies inside view 1
    not_search [N, N] bool: NS_ij = |p1_i - p1_j| <= not_search_px or j invalid (includes i = j)
    heatmap0/1 [S, S] float32: 1 at the rounded pseudo-keypoints (homographic adaptation labels
        of the source image, warped; `heatmap: bilinear` spreads each over 4 pixels);
        valid_mask0/1 [S, S] float32: the view pixel has a source pixel
    teacher targets, warped with each view's map M0 / M1 from its source image (zero flags
    when the teacher gives none):
        point_groups0/1 [N] int64 group id at each point (-1: none/invalid);
        groups_small0/1 [S/8, S/8] int64 (nearest);  edge0/1 [S/4, S/4] float32 in [0, 1]
        (nearest warp, then area downsampling);  embedding0/1 [C, S/8, S/8] float32 (bilinear;
        C = 0 without embedding);  has_groups0/1, has_edges0/1, has_embedding0/1 float32.

Randomness: each item seeds its own generators from (seed, epoch, index), so items do not depend
on worker processes or on what was loaded before (exact resume).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from ...geometry.depth import DEFAULT_REL_DEPTH_TOL, project_with_depth
from ...geometry.homography import warp_points
from ..labels import LabelConf, LabelStore
from .augment import PhotometricConf, photometric
from .cache import ImageCache
from .homographies import HomographyConf, sample_view_pair, scale_matrix
from .posed import PosedSource, PosedViews, sample_posed_views
from .targets import TeacherStore, bilinear_sample


@dataclass(frozen=True)
class PairsConf:
    image_dirs: list[str] = field(default_factory=list)  # training image folders (recursive)
    cache_dir: str = "outputs/cache"  # decoded images, pseudo-labels, teacher targets
    cache_max_side: int = 640  # images are downsized once so the longer side is <= this
    image_size: int = 256  # side of the network input (multiple of 16)
    crop_min: int = 200  # crop side range in cached pixels (clipped to the image's short side)
    crop_max: int = 320
    repeat: int = 1  # items per image and epoch
    grid: int = 20  # sampling points: one random point per cell of a grid x grid layout
    not_search_px: float = 16.0  # NS radius in view 1 (methods 1.9)
    identity_prob: float = 0.0  # chance that view 1 is an identity copy (official: 0.5)
    group0_is_group: bool = False  # treat teacher group id 0 ("no mask") as a group (official)
    homography: HomographyConf = field(default_factory=HomographyConf)
    photometric: PhotometricConf = field(default_factory=PhotometricConf)
    labels: LabelConf = field(default_factory=LabelConf)
    # detector target of a label warped into a view: "nearest" (SAMFeat: 1 at the rounded
    # pixel) or "bilinear" (its 4 neighbours get bilinear weights, so the target keeps the
    # label's sub-pixel position; overlapping labels are capped at 1)
    heatmap: str = "nearest"
    teacher: dict[str, Any] | None = None  # conf for featloc.teachers.build_teacher; None: none
    # posed pairs: scene folders (images/, depth/*.npy, pairs_gt.txt; featloc.train.data.posed)
    posed_scenes: list[str] = field(default_factory=list)
    posed_repeat: int = 1  # items per posed pair and epoch
    posed_depth_tol: float = DEFAULT_REL_DEPTH_TOL  # occlusion check: |z - depth1| < tol depth1

    def __post_init__(self):
        if self.image_size % 16:
            raise ValueError(f"data.image_size must be a multiple of 16, got {self.image_size}")
        if not 0 < self.crop_min <= self.crop_max:
            raise ValueError("need 0 < data.crop_min <= data.crop_max")
        if self.repeat < 0 or self.posed_repeat < 0:
            raise ValueError("data.repeat and data.posed_repeat must be >= 0")
        if self.posed_depth_tol <= 0:
            raise ValueError("data.posed_depth_tol must be > 0")
        if self.heatmap not in ("nearest", "bilinear"):
            raise ValueError(f"data.heatmap must be nearest or bilinear, got {self.heatmap!r}")


def _warp(src: np.ndarray, M: np.ndarray, size: int, interp: int, border=0) -> np.ndarray:
    return cv2.warpPerspective(src, M, (size, size), flags=interp,
                               borderMode=cv2.BORDER_CONSTANT, borderValue=border)


def grid_points(size: int, grid: int, rng: np.random.Generator) -> np.ndarray:
    """One uniformly random integer pixel per cell of a grid x grid layout -> [grid^2, 2]."""
    edges = np.floor(np.linspace(0, size, grid + 1)).astype(np.int64)
    lo, hi = edges[:-1], np.maximum(edges[1:], edges[:-1] + 1)
    xs = rng.integers(np.tile(lo, grid), np.tile(hi, grid))
    ys = rng.integers(np.repeat(lo, grid), np.repeat(hi, grid))
    return np.stack([xs, ys], 1).astype(np.float32)


def label_heatmap(points: np.ndarray, size: int, mode: str = "nearest") -> np.ndarray:
    """[size, size] detector target of (x, y) label points (pixel centres at integers).

    nearest: 1 at each point's rounded pixel. bilinear: the point's 4 neighbouring pixels get
    its bilinear weights (summing to 1), capped at 1 where labels overlap. Points off the map
    (or NaN) are dropped; a bilinear point keeps the weights of its neighbours that are on it.
    """
    heat = np.zeros((size, size), np.float32)
    points = points[np.isfinite(points).all(1)]
    if mode == "nearest":
        kp = np.round(points)
        kp = kp[np.all((kp >= 0) & (kp <= size - 1), 1)].astype(np.int64)
        heat[kp[:, 1], kp[:, 0]] = 1.0
        return heat
    points = points[np.all((points > -1) & (points < size), 1)]
    base = np.floor(points).astype(np.int64)
    frac = (points - base).astype(np.float32)
    for dx, dy in ((0, 0), (1, 0), (0, 1), (1, 1)):
        x, y = base[:, 0] + dx, base[:, 1] + dy
        weight = (frac[:, 0] if dx else 1 - frac[:, 0]) * (frac[:, 1] if dy else 1 - frac[:, 1])
        on = (x >= 0) & (x < size) & (y >= 0) & (y < size)
        np.add.at(heat, (y[on], x[on]), weight[on])
    return np.minimum(heat, 1.0)


def not_search_matrix(points1: np.ndarray, valid: np.ndarray, radius: float) -> np.ndarray:
    p = np.where(np.isfinite(points1), points1, 1e6).astype(np.float32)
    d2 = np.square(p[:, None, 0] - p[None, :, 0]) + np.square(p[:, None, 1] - p[None, :, 1])
    return (d2 <= radius * radius) | ~valid[None, :]


class TrainingPairs(Dataset):
    """Homographic items, then posed items (module docstring).

    Args:
        conf: `PairsConf`.
        images: the image cache of `conf.image_dirs` (None: no homographic items), with its
            pseudo-labels `labels` and teacher targets `teacher` (None: none).
        seed: the run's seed.
        posed: the posed pairs (`featloc.train.data.posed.build_posed_source`), or None.
    """

    def __init__(self, conf: PairsConf, images: ImageCache | None, labels: LabelStore | None,
                 teacher: TeacherStore | None, seed: int, posed: PosedSource | None = None):
        self.conf, self.images, self.labels, self.teacher = conf, images, labels, teacher
        self.seed, self.posed = seed, posed
        self.num_homographic = len(images) * conf.repeat if images is not None else 0
        if len(self) == 0:
            raise ValueError("no training pairs: give data.image_dirs and/or data.posed_scenes "
                             "(with data.repeat / data.posed_repeat > 0)")
        # images without an embedding are padded to the embedding size of the others
        stores = [teacher, posed.teacher if posed is not None else None]
        dims = {s.embedding_dim for s in stores if s is not None} - {0}
        if len(dims) > 1:
            raise ValueError(f"teacher embeddings of different sizes {sorted(dims)} for the "
                             "homographic and the posed images")
        self.embedding_dim = dims.pop() if dims else 0

    def __len__(self) -> int:
        posed = len(self.posed) * self.conf.posed_repeat if self.posed is not None else 0
        return self.num_homographic + posed

    def __getitem__(self, item) -> dict[str, torch.Tensor]:
        epoch, index = item if isinstance(item, tuple) else (0, item)
        rngs = self._rngs(epoch, index)
        if index < self.num_homographic:
            return self._homographic(index, rngs)
        return self._posed(index, rngs)

    def _rngs(self, epoch: int, index: int) -> list[np.random.Generator]:
        return [np.random.default_rng(s)
                for s in np.random.SeedSequence([self.seed, epoch, index]).spawn(5)]

    def posed_views(self, epoch: int, index: int) -> tuple[int, PosedViews]:
        """(pair index, crops) of posed item `index` of `epoch` (for checks and figures)."""
        p, views, _ = self._posed_views(index, self._rngs(epoch, index))
        return p, views

    def _posed_views(self, index: int, rngs: list):
        if not self.num_homographic <= index < len(self):
            raise IndexError(f"item {index} is not a posed item")
        conf, posed = self.conf, self.posed
        p = (index - self.num_homographic) % len(posed)
        depths = (posed.depth(p, 0), posed.depth(p, 1))
        views = sample_posed_views(posed, p, depths, conf.image_size, conf.crop_min,
                                   conf.crop_max, conf.posed_depth_tol, rngs[0], rngs[1])
        return p, views, depths

    def _homographic(self, index: int, rngs: list) -> dict[str, torch.Tensor]:
        rng_crop, rng_h, rng_grid, rng_p0, rng_p1 = rngs
        conf, S = self.conf, self.conf.image_size
        i = index % len(self.images)
        src = self.images.image(i)
        M0, H = sample_view_pair(src.shape[:2], S, conf.crop_min, conf.crop_max,
                                 conf.identity_prob, conf.homography, rng_crop, rng_h)
        points0 = grid_points(S, conf.grid, rng_grid)
        points1 = warp_points(points0, H).astype(np.float32)
        valid = np.isfinite(points1).all(1) & np.all((points1 >= 0) & (points1 <= S - 1), 1)
        out = {"H_0to1": torch.from_numpy(H.astype(np.float32)),
               **self._correspondences(points0, points1, valid)}
        key = self.images.keys[i]
        label_points = self.labels.load(key)[:, :2] if self.labels else None
        targets = self.teacher.load(key) if self.teacher else {}
        for v, (M, rng_p, pts) in enumerate(zip((M0, H @ M0), (rng_p0, rng_p1),
                                                (points0, points1), strict=True)):
            out.update(self._view(v, src, M, pts, label_points, targets, rng_p))
        return out

    def _posed(self, index: int, rngs: list) -> dict[str, torch.Tensor]:
        _, _, rng_grid, rng_p0, rng_p1 = rngs  # the first two draw the crops
        conf, S, posed = self.conf, self.conf.image_size, self.posed
        p, views, depths = self._posed_views(index, rngs)
        pair = posed.pairs[p].pair
        points0 = grid_points(S, conf.grid, rng_grid)
        full1, visible = project_with_depth(warp_points(points0, np.linalg.inv(views.A0)),
                                            depths[0], pair.K0, pair.T_0to1, pair.K1, depths[1],
                                            rel_depth_tol=conf.posed_depth_tol)
        points1 = warp_points(full1, views.A1).astype(np.float32)
        valid = visible & np.all((points1 >= 0) & (points1 <= S - 1), 1)
        out = {"H_0to1": torch.full((3, 3), float("nan")),
               **self._correspondences(points0, points1, valid)}
        for v, (M, rng_p, pts) in enumerate(zip((views.M0, views.M1), (rng_p0, rng_p1),
                                                (points0, points1), strict=True)):
            i = posed.image_index[p, v]
            key = posed.images.keys[i]
            label_points = posed.labels.load(key)[:, :2] if posed.labels else None
            targets = posed.teacher.load(key) if posed.teacher else {}
            out.update(self._view(v, posed.images.image(i), M, pts, label_points, targets, rng_p))
        return out

    def _correspondences(self, points0: np.ndarray, points1: np.ndarray, valid: np.ndarray
                         ) -> dict[str, torch.Tensor]:
        return {
            "points0": torch.from_numpy(points0),
            "points1": torch.from_numpy(np.nan_to_num(points1, nan=-1e4, posinf=1e4, neginf=-1e4)),
            "valid": torch.from_numpy(valid.astype(np.float32)),
            "not_search": torch.from_numpy(
                not_search_matrix(points1, valid, self.conf.not_search_px)),
        }

    def _view(self, v: int, src: np.ndarray, M: np.ndarray, points: np.ndarray,
              label_points: np.ndarray | None, targets: dict, rng: np.random.Generator
              ) -> dict[str, torch.Tensor]:
        """Image, valid mask, heatmap and teacher targets of view v = src warped by M."""
        S = self.conf.image_size
        h, w = src.shape[:2]
        view = photometric(_warp(src, M, S, cv2.INTER_LINEAR), self.conf.photometric, rng)
        out = {f"image{v}": torch.from_numpy(np.ascontiguousarray(view.transpose(2, 0, 1)))}
        mask = _warp(np.ones((h, w), np.uint8), M, S, cv2.INTER_NEAREST)
        out[f"valid_mask{v}"] = torch.from_numpy(mask.astype(np.float32))
        heat = np.zeros((S, S), np.float32)
        if label_points is not None and len(label_points):
            heat = label_heatmap(warp_points(label_points, M), S, self.conf.heatmap) * mask
        out[f"heatmap{v}"] = torch.from_numpy(heat)
        out.update(self._teacher_view(targets, M, points, v, (h, w)))
        return out

    def _teacher_view(self, targets: dict, M: np.ndarray, points: np.ndarray, v: int,
                      src_hw: tuple[int, int]) -> dict:
        S, n = self.conf.image_size, len(points)
        out = {}
        groups = targets.get("groups")
        point_groups = np.full(n, -1, np.int64)
        small = np.full((S // 8, S // 8), -1, np.int64)
        if groups is not None:
            full = _warp(groups, M, S, cv2.INTER_NEAREST, border=-1).astype(np.int64)
            small = _warp(groups, scale_matrix(8) @ M, S // 8, cv2.INTER_NEAREST, border=-1)
            small = small.astype(np.int64)
            if not self.conf.group0_is_group:
                full[full == 0] = -1
                small[small == 0] = -1
            p = np.round(np.nan_to_num(points, nan=-1)).astype(np.int64)
            inside = np.all((p >= 0) & (p <= S - 1), 1)
            point_groups[inside] = full[p[inside, 1], p[inside, 0]]
        out[f"point_groups{v}"] = torch.from_numpy(point_groups)
        out[f"groups_small{v}"] = torch.from_numpy(small)
        out[f"has_groups{v}"] = torch.tensor(float(groups is not None))
        edges = targets.get("edges")
        edge = np.zeros((S // 4, S // 4), np.float32)
        if edges is not None:
            full = _warp(edges, M, S, cv2.INTER_NEAREST)
            edge = cv2.resize(full, (S // 4, S // 4), interpolation=cv2.INTER_AREA)
        out[f"edge{v}"] = torch.from_numpy(edge)
        out[f"has_edges{v}"] = torch.tensor(float(edges is not None))
        emb = targets.get("embedding")
        if emb is not None:
            out[f"embedding{v}"] = torch.from_numpy(self._warp_embedding(emb, M, src_hw))
        else:
            out[f"embedding{v}"] = torch.zeros(self.embedding_dim, S // 8, S // 8)
        out[f"has_embedding{v}"] = torch.tensor(float(emb is not None))
        return out

    def _warp_embedding(self, emb: np.ndarray, M: np.ndarray, src_hw: tuple[int, int]
                        ) -> np.ndarray:
        """Bilinear samples of the source embedding at the centres of the view's 8x8 cells."""
        s8 = self.conf.image_size // 8
        jj, ii = np.meshgrid(np.arange(s8), np.arange(s8))
        cells = np.stack([jj.ravel(), ii.ravel()], 1) * 8.0 + 3.5  # cell centres, view pixels
        src = warp_points(cells, np.linalg.inv(M))
        (h, w), (eh, ew) = src_hw, emb.shape[1:]
        xy = (src + 0.5) * [ew / w, eh / h] - 0.5
        return bilinear_sample(emb, xy).reshape(-1, s8, s8)


HomographyPairs = TrainingPairs  # its name before posed pairs were added
