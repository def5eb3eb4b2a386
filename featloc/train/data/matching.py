"""Training pairs for the attentional matcher: features of a frozen extractor plus ground-truth
match labels (methods.md 2.8, 2.10).

Two sources, mixed in one dataset:
- homographic pairs from image folders (LightGlue stage 1): a random square crop of a cached
  image resized to `image_size` is view 0, its warp by a random H_0to1 is view 1, both
  photometrically augmented; labels from `gt_matches_from_homography`;
- posed pairs from synthetic scenes (`featloc make-scenes` folders: images/, depth/*.npy
  float32 metres, pairs_gt.txt): the two rendered views, augmented; labels from
  `gt_matches_from_pose_depth` (occluded points are unmatched).

Features are extracted on the fly by a frozen registered extractor (`features`,
`extractor_conf`): SIFT (OpenCV), or samfeat-lite with given weights. Every item has exactly
`num_keypoints` points per view: the extractor's best ones, padded with masked zeros when it
finds fewer (labels -2 there).

Item keys (N = num_keypoints, D = descriptor dim), per view i in {0, 1}:
    keypoints{i} [N, 2] float32 (x, y) view pixels; descriptors{i} [N, D] float32;
    keypoint_scores{i} [N]; scales{i}, oris{i} [N] (0 when the extractor gives none);
    mask{i} [N] bool (False: padding); image_size{i} [2] float32 (w, h);
    gt_matches{i} [N] int64: index into the other view, -1 unmatched, -2 ignore.
Randomness: each item seeds its generators from (seed, epoch, index), so items are independent
of worker processes and of the loading order (exact resume).
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from ...types import IGNORE, Features
from .augment import PhotometricConf, photometric
from .cache import ImageCache, digest
from .homographies import HomographyConf, sample_view_pair

logger = logging.getLogger(__name__)

# The epoch of validation items: training epochs count from 0, so validation pairs are warps
# and crops never drawn for training.
VAL_EPOCH = 1_000_000_000


@dataclass(frozen=True)
class MatchingDataConf:
    image_dirs: list[str] = field(default_factory=list)  # homographic pairs: image folders
    cache_dir: str = "outputs/cache"  # decoded images (shared with the other tasks)
    cache_max_side: int = 640  # images are downsized once so the longer side is <= this
    image_size: int = 320  # side of the square views (px)
    crop_min: int = 240  # crop side range in cached pixels (clipped to the short side)
    crop_max: int = 480
    repeat: int = 1  # homographic items per image and epoch
    identity_prob: float = 0.0  # chance that view 1 is an identity copy (photometric only)
    features: str = "sift"  # registered extractor, frozen (sift, rootsift, samfeat-lite, ...)
    extractor_conf: dict[str, Any] = field(default_factory=dict)  # its options (weights=...)
    num_keypoints: int = 512  # points per view: top-k by score, padded with masked zeros
    pos_th_px: float = 3.0  # GT positive: mutual reprojection error below this (methods 2.8)
    neg_th_px: float = 3.0  # GT unmatched: no keypoint within this (LightGlue homography: 3)
    homography: HomographyConf = field(default_factory=HomographyConf)
    photometric: PhotometricConf = field(default_factory=PhotometricConf)
    # posed pairs: folders written by `featloc make-scenes` (pairs_gt.txt, images/, depth/)
    posed_scenes: list[str] = field(default_factory=list)
    posed_repeat: int = 1  # items per posed pair and epoch
    posed_neg_th_px: float = 5.0  # GT unmatched threshold for posed pairs (LightGlue: 5)
    # 0: fresh crops, warps and augmentation every epoch (features extracted every time);
    # K > 0: epoch e reuses the pairs of epoch e mod K, and their features are cached on disk
    # (<cache_dir>/matching-<digest>/), so extraction runs once per pair (K x fewer distinct
    # pairs, much less CPU per step once cached)
    pair_variants: int = 0

    def __post_init__(self):
        if self.image_size < 32:
            raise ValueError(f"data.image_size must be >= 32, got {self.image_size}")
        if not 0 < self.crop_min <= self.crop_max:
            raise ValueError("need 0 < data.crop_min <= data.crop_max")
        if self.num_keypoints < 1:
            raise ValueError("data.num_keypoints must be >= 1")
        if self.repeat < 0 or self.posed_repeat < 0 or self.pair_variants < 0:
            raise ValueError("data.repeat, data.posed_repeat and data.pair_variants must be >= 0")


def _warp(src: np.ndarray, M: np.ndarray, size: int) -> np.ndarray:
    return cv2.warpPerspective(src, M, (size, size), flags=cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def pad_features(features: Features, num: int, descriptor_dim: int) -> dict[str, np.ndarray]:
    """The best `num` features (by score), padded to exactly `num` with masked zeros."""
    if len(features) > num:
        order = np.sort(np.argsort(-features.keypoint_scores, kind="stable")[:num])
        features = features.select(order)
    k = len(features)

    def padded(array, shape, dtype=np.float32):
        out = np.zeros(shape, dtype)
        if array is not None and k:
            out[:k] = array
        return out

    mask = np.zeros(num, bool)
    mask[:k] = True
    return {
        "keypoints": padded(features.keypoints, (num, 2)),
        "descriptors": padded(features.descriptors, (num, descriptor_dim)),
        "keypoint_scores": padded(features.keypoint_scores, (num,)),
        "scales": padded(features.scales, (num,)),
        "oris": padded(features.oris, (num,)),
        "mask": mask,
    }


def pad_labels(labels: np.ndarray, num: int) -> np.ndarray:
    out = np.full(num, IGNORE, np.int64)
    out[:len(labels)] = labels
    return out


@dataclass(frozen=True)
class _PosedPair:
    scene: Path
    pair: Any  # featloc.eval.pose.PosePair


def list_posed_pairs(scenes: list[str]) -> list[_PosedPair]:
    """The pairs of every scene folder (pairs_gt.txt), checked for depth maps."""
    from ...eval.pose import read_pose_pairs

    out = []
    for folder in scenes:
        root = Path(folder)
        pairs_file = root / "pairs_gt.txt"
        if not pairs_file.is_file():
            raise FileNotFoundError(f"{pairs_file} not found: data.posed_scenes takes folders "
                                    "written by `featloc make-scenes`")
        for pair in read_pose_pairs(pairs_file):
            if pair.rot0 or pair.rot1:
                raise NotImplementedError(f"{pairs_file}: EXIF rotations in posed training pairs")
            for name in (pair.name0, pair.name1):
                if not (root / "depth" / f"{Path(name).stem}.npy").is_file():
                    raise FileNotFoundError(f"{root}/depth/{Path(name).stem}.npy not found "
                                            f"(depth of {name})")
            out.append(_PosedPair(root, pair))
    return out


class MatchingPairs(Dataset):
    """Homographic and posed pairs with extracted features and GT labels (module docstring).

    Args:
        conf: `MatchingDataConf`.
        images: the decoded image cache of `conf.image_dirs` (None: no homographic pairs).
        seed: the run's seed.
        posed: the posed pairs (`list_posed_pairs(conf.posed_scenes)`).
    """

    def __init__(self, conf: MatchingDataConf, images: ImageCache | None, seed: int,
                 posed: list | None = None):
        self.conf, self.images, self.seed = conf, images, seed
        self.posed = list(posed or [])
        self.num_homographic = (len(images) if images is not None else 0) * conf.repeat
        if len(self) == 0:
            raise ValueError("no training pairs: give data.image_dirs and/or data.posed_scenes")
        self._extractor = None
        probe = self.extractor.extract(_probe_image())
        self.descriptor_dim = probe.descriptor_dim
        self.has_scale_ori = probe.scales is not None and probe.oris is not None
        self.cache_root = None
        if conf.pair_variants > 0:
            from ...config import resolved_conf

            # the extractor's resolved conf carries a digest of its weights file: new weights
            # at the same path make a new cache instead of reusing the old keypoints
            key = digest({"conf": asdict(conf), "seed": seed, "version": 1,
                          "extractor": resolved_conf(conf.features, self.extractor),
                          "images": images.digest if images is not None else None,
                          "posed": [(str(p.scene.resolve()), p.pair.name0, p.pair.name1)
                                    for p in self.posed]})
            self.cache_root = Path(conf.cache_dir) / f"matching-{key}"
            self.cache_root.mkdir(parents=True, exist_ok=True)

    def __getstate__(self):  # DataLoader workers build their own extractor
        state = dict(self.__dict__)
        state["_extractor"] = None
        return state

    @property
    def extractor(self):
        if self._extractor is None:
            from ...config import build

            conf = {"max_num_keypoints": self.conf.num_keypoints, **self.conf.extractor_conf}
            self._extractor = build("extractor", self.conf.features, **conf)
        return self._extractor

    def __len__(self) -> int:
        return self.num_homographic + len(self.posed) * self.conf.posed_repeat

    def __getitem__(self, item) -> dict[str, torch.Tensor]:
        epoch, index = item if isinstance(item, tuple) else (0, item)
        if self.cache_root is None or epoch >= VAL_EPOCH:
            return self._make(epoch, index)
        path = self.cache_root / f"{epoch % self.conf.pair_variants}-{index}.npz"
        if path.is_file():
            with np.load(path) as stored:
                return _from_storage(dict(stored))
        arrays = _to_storage(self._make(epoch % self.conf.pair_variants, index))
        tmp = path.with_name(path.name + f".tmp{os.getpid()}.npz")
        np.savez(tmp, **arrays)
        os.replace(tmp, path)  # atomic: concurrent workers never read half a file
        return _from_storage(arrays)

    def _make(self, epoch: int, index: int) -> dict[str, torch.Tensor]:
        rngs = [np.random.default_rng(s)
                for s in np.random.SeedSequence([self.seed, epoch, index]).spawn(4)]
        if index < self.num_homographic:
            views, sizes, label_fn, extra = self._homographic(index, rngs)
        else:
            index -= self.num_homographic
            views, sizes, label_fn, extra = self._posed(index % len(self.posed), rngs)
        out = {k: torch.from_numpy(v) for k, v in extra.items()}
        valid = []
        for i, (view, rng) in enumerate(zip(views, rngs[2:], strict=True)):
            view = photometric(view, self.conf.photometric, rng)
            features = self.extractor.extract(view)
            padded = pad_features(features, self.conf.num_keypoints, self.descriptor_dim)
            valid.append(padded["keypoints"][padded["mask"]])
            for k, v in padded.items():
                out[f"{k}{i}"] = torch.from_numpy(v)
            out[f"image_size{i}"] = torch.tensor(sizes[i], dtype=torch.float32)
        labels0, labels1 = label_fn(*valid)
        out["gt_matches0"] = torch.from_numpy(pad_labels(labels0, self.conf.num_keypoints))
        out["gt_matches1"] = torch.from_numpy(pad_labels(labels1, self.conf.num_keypoints))
        return out

    def _homographic(self, index: int, rngs):
        from ...geometry.homography import gt_matches_from_homography

        conf, S = self.conf, self.conf.image_size
        rng_crop, rng_h = rngs[0], rngs[1]
        src = self.images.image(index % len(self.images))
        M0, H = sample_view_pair(src.shape[:2], S, conf.crop_min, conf.crop_max,
                                 conf.identity_prob, conf.homography, rng_crop, rng_h)
        views = (_warp(src, M0, S), _warp(src, H @ M0, S))

        def labels(k0, k1):
            return gt_matches_from_homography(k0, k1, H, conf.pos_th_px, conf.neg_th_px,
                                              (S, S), (S, S), return_matches1=True)

        return views, ((S, S), (S, S)), labels, {"H_0to1": H.astype(np.float32)}

    def _posed(self, index: int, rngs):
        from ...geometry.depth import gt_matches_from_pose_depth
        from ...io.images import read_image

        entry = self.posed[index]
        pair, root = entry.pair, entry.scene
        views = tuple(read_image(root / "images" / name) for name in (pair.name0, pair.name1))
        depths = tuple(np.load(root / "depth" / f"{Path(name).stem}.npy")
                       for name in (pair.name0, pair.name1))
        sizes = tuple((v.shape[1], v.shape[0]) for v in views)

        def labels(k0, k1):
            return gt_matches_from_pose_depth(k0, k1, depths[0], depths[1], pair.K0, pair.K1,
                                              pair.T_0to1, self.conf.pos_th_px,
                                              self.conf.posed_neg_th_px, return_matches1=True)

        return views, sizes, labels, {"H_0to1": np.full((3, 3), np.nan, np.float32)}


def _to_storage(item: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """Item as numpy arrays, descriptors in float16 (half the disk, ~1e-3 relative error)."""
    return {k: v.numpy().astype(np.float16) if k.startswith("descriptors") else v.numpy()
            for k, v in item.items()}


def _from_storage(arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(v.astype(np.float32) if v.dtype == np.float16 else v)
            for k, v in arrays.items()}


def _probe_image() -> np.ndarray:
    from ...synth.textures import random_scene_image

    return random_scene_image(np.random.default_rng(0), 128, 128)
