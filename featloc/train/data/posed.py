"""Posed training pairs for SAMFeat: two real views of a scene with depth maps and their relative
pose (methods 1.12.1, the MegaDepth recipe), an optional source next to the homographic pairs.

Scene folder format (`data.posed_scenes` lists such folders; `featloc make-scenes` writes them,
other data sets can be converted to it):
    images/<name>      the views, undistorted pinhole images (any format featloc reads;
                       sub-folders allowed)
    depth/<stem>.npy   float32 [H, W] z-depth (along the optical axis, not along the ray) of
                       images/<name> at the image's full resolution, <stem> = its file name
                       without extension (so stems must be unique); depth[y, x] belongs to pixel
                       (x, y), the centre of the top-left pixel being (0, 0); <= 0 or
                       non-finite: no depth. Metres, or any unit that T_0to1 also uses.
    pairs_gt.txt       SuperGlue "pairs with ground truth", one pair per line:
                       name0 name1 rot0 rot1 K0[9] K1[9] T_0to1[16] (row-major; names relative
                       to images/; K in full-resolution pixels of that convention; T_0to1 maps
                       camera-0 to camera-1 coordinates; rot0 = rot1 = 0)
Other files in the folder (sparse/, pairs_info.json, ...) are not read.

Each posed image is cached like a homographic source image (downsized to `cache_max_side`)
under the key '<scene folder name>/<name>' (prefixed with its list index when two scene
folders share a name); its detector pseudo-labels (homographic adaptation) and teacher
targets are computed once from that cached image, exactly as for the homographic sources.

The two views of a pair (`sample_posed_views`): an anchor point of image 0 with depth that is
visible in image 1 is drawn at random (occlusion-checked); each view is a square crop centred
on the anchor's position in its image (shifted to lie inside the image), resized to
`image_size`. The crop sides are drawn so that both lie in [crop_min, crop_max] cached pixels
(clipped to each image's short side) and their ratio is the local scale ratio at the anchor,
(f1 / z1) / (f0 / z0), so both views show the scene at about the same scale; when the range
allows no such pair, the closest one is taken. With no covisible anchor (no overlap), both
crops are centred and the item has few or no valid points (the descriptor loss then gets
nothing from it; the other terms still do).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...geometry.depth import project_with_depth, sample_depth
from ..labels import LabelConf, LabelStore, build_labels
from .cache import ImageCache, cache_image_files
from .homographies import crop_resize_matrix
from .matching import list_posed_pairs
from .targets import TeacherStore, build_teacher_targets

# random points of image 0 tried as the crop anchor: at 10 % overlap all miss with
# probability 0.9^512 ~ 1e-23, and projecting them costs well under a millisecond
ANCHOR_TRIES = 512


@dataclass
class PosedSource:
    """The posed pairs of some scene folders with their cached images, labels and targets.

    Attributes:
        pairs: `featloc.train.data.matching.list_posed_pairs` entries (scene folder, PosePair).
        images: the cache of every image of those pairs.
        image_index: [P, 2] cache index of image 0 and image 1 of each pair.
        full_hw: [I, 2] (h, w) of each cached image at full resolution (its depth map's size).
        labels, teacher: the pseudo-labels and teacher targets of the cached images (or None).
    """

    pairs: list
    images: ImageCache
    image_index: np.ndarray
    full_hw: np.ndarray
    labels: LabelStore | None = None
    teacher: TeacherStore | None = None

    def __len__(self) -> int:
        return len(self.pairs)

    def depth(self, pair: int, view: int) -> np.ndarray:
        entry = self.pairs[pair]
        return np.load(_depth_path(entry.scene, (entry.pair.name0, entry.pair.name1)[view]),
                       mmap_mode="r")

    def full_to_cached(self, image: int) -> np.ndarray:
        """Affine [3, 3] from full-resolution pixels to cached pixels (pixel-centre
        convention, per-axis scale as in `featloc.io.images.resize_image`)."""
        sy, sx = np.asarray(self.images.shapes[image][:2], np.float64) / self.full_hw[image]
        return np.array([[sx, 0, 0.5 * sx - 0.5], [0, sy, 0.5 * sy - 0.5], [0, 0, 1]])


def _depth_path(scene: Path, name: str) -> Path:
    return scene / "depth" / f"{Path(name).stem}.npy"


def _cached_hw(full_hw: tuple[int, int], max_side: int) -> tuple[int, int]:
    """The size `resize_image` gives an image of `full_hw` (h, w) under `max_side`."""
    h, w = full_hw
    if not max_side or max(h, w) <= max_side:
        return h, w
    ratio = max_side / max(h, w)
    return max(1, round(h * ratio)), max(1, round(w * ratio))


def build_posed_source(scenes: list[str], cache_dir: str | Path, max_side: int,
                       labels: LabelConf | None, teacher: dict | None) -> PosedSource:
    """List the pairs of `scenes`, cache their images and compute (or reuse) the pseudo-labels
    (when `labels` is given) and teacher targets (when `teacher` is given) of each image."""
    pairs = list_posed_pairs(list(scenes))
    if not pairs:
        raise ValueError(f"data.posed_scenes: no pairs in the pairs_gt.txt of {list(scenes)}")
    roots = [Path(s) for s in scenes]
    bases = [r.resolve().name for r in roots]
    unique = len(set(bases)) == len(bases)
    prefix = {r: b if unique else f"{i}-{b}"
              for i, (r, b) in enumerate(zip(roots, bases, strict=True))}
    entries, facts, depth_of = [], [], {}
    for entry in pairs:
        for name in (entry.pair.name0, entry.pair.name1):
            key = f"{prefix[entry.scene]}/{name}"
            if key in depth_of:
                continue
            folder = entry.scene / "images"
            path = folder / name
            if not path.is_file():
                raise FileNotFoundError(
                    f"{path} not found (an image of {entry.scene}/pairs_gt.txt)")
            stat = path.stat()
            entries.append((key, str(folder), name))
            facts.append((str(folder.resolve()), name, stat.st_size, stat.st_mtime_ns))
            depth_of[key] = _depth_path(entry.scene, name)
    # "source" keeps these caches apart from an image_dirs cache of the same files (other keys)
    images = cache_image_files(entries, facts, cache_dir, max_side, extra={"source": "posed"})
    position = {k: i for i, k in enumerate(images.keys)}
    missing = [k for k in depth_of if k not in position]
    if missing:
        raise ValueError(f"posed images that could not be read: {missing[:5]}")
    full_hw = np.zeros((len(images), 2), np.int64)
    for key, i in position.items():
        shape = np.load(depth_of[key], mmap_mode="r").shape
        if len(shape) != 2 or _cached_hw(shape, max_side) != tuple(images.shapes[i][:2]):
            raise ValueError(f"{depth_of[key]}: depth of shape {shape} does not fit its image "
                             f"{key} (cached as {tuple(images.shapes[i][:2])}); depth maps must "
                             "be [H, W] at the image's full resolution")
        full_hw[i] = shape
    image_index = np.array([[position[f"{prefix[e.scene]}/{e.pair.name0}"],
                             position[f"{prefix[e.scene]}/{e.pair.name1}"]] for e in pairs])
    return PosedSource(
        pairs, images, image_index, full_hw,
        labels=build_labels(images, labels, cache_dir) if labels is not None else None,
        teacher=build_teacher_targets(images, dict(teacher), cache_dir)
        if teacher is not None else None)


@dataclass(frozen=True)
class PosedViews:
    """The two views of a posed pair: A0/A1 map full-resolution pixels of image 0/1 to view
    pixels, M0/M1 cached pixels to view pixels (affine [3, 3]); the view intrinsics are
    A_v @ K_v."""

    A0: np.ndarray
    A1: np.ndarray
    M0: np.ndarray
    M1: np.ndarray


def _crop_sides(ratio: float, range0: tuple[float, float], range1: tuple[float, float],
                rng: np.random.Generator) -> tuple[float, float]:
    """Sides (c0, c1) with c_v in range_v and c1 = ratio c0 when possible, else the closest."""
    lo, hi = max(range0[0], range1[0] / ratio), min(range0[1], range1[1] / ratio)
    if lo <= hi:
        c0 = rng.uniform(lo, hi)
        return c0, c0 * ratio
    if range0[1] * ratio < range1[0]:  # view 1 would need a crop below its range
        return range0[1], range1[0]
    return range0[0], range1[1]


def _place(center: np.ndarray, crop: float, hw: tuple[int, int]) -> tuple[float, float]:
    """Top-left pixel (x0, y0) of a crop centred on `center` (cached px), kept inside."""
    h, w = hw
    x0 = center[0] + 0.5 - crop / 2  # the crop spans [x0 - 0.5, x0 - 0.5 + crop]
    y0 = center[1] + 0.5 - crop / 2
    return float(np.clip(x0, 0, w - crop)), float(np.clip(y0, 0, h - crop))


def sample_posed_views(source: PosedSource, pair: int, depths: tuple[np.ndarray, np.ndarray],
                       size: int, crop_min: float, crop_max: float, rel_depth_tol: float,
                       rng_crop: np.random.Generator, rng_anchor: np.random.Generator
                       ) -> PosedViews:
    """The two crops of pair `pair` (recipe in the module docstring); `depths` are the pair's
    depth maps (`source.depth(pair, 0)`, `source.depth(pair, 1)`)."""
    entry = source.pairs[pair]
    K0, K1, T = entry.pair.K0, entry.pair.K1, entry.pair.T_0to1
    i0, i1 = source.image_index[pair]
    R0, R1 = source.full_to_cached(i0), source.full_to_cached(i1)
    hw0, hw1 = tuple(source.images.shapes[i0][:2]), tuple(source.images.shapes[i1][:2])
    depth0, depth1 = depths
    h, w = source.full_hw[i0]
    candidates = rng_anchor.uniform(0, 1, (ANCHOR_TRIES, 2)) * [w - 1, h - 1]
    projected, visible = project_with_depth(candidates, depth0, K0, T, K1, depth1,
                                            rel_depth_tol=rel_depth_tol)
    if visible.any():
        k = int(np.flatnonzero(visible)[0])  # the candidates are random: the first will do
        a0, a1 = candidates[k], projected[k]
        z0 = sample_depth(depth0, a0[None])[0][0]
        z1 = sample_depth(depth1, a1[None])[0][0]
        focal = [math.sqrt(abs(np.linalg.det(K[:2, :2]))) for K in (K0, K1)]
        zoom = [math.sqrt(abs(np.linalg.det(R[:2, :2]))) for R in (R0, R1)]
        # cached pixels per unit of scene length around the anchor, view 1 over view 0
        ratio = (focal[1] * zoom[1] / z1) / (focal[0] * zoom[0] / z0)
        c0 = (R0 @ [*a0, 1.0])[:2]
        c1 = (R1 @ [*a1, 1.0])[:2]
    else:
        ratio = 1.0
        c0 = np.array([hw0[1] - 1, hw0[0] - 1]) / 2
        c1 = np.array([hw1[1] - 1, hw1[0] - 1]) / 2
    ranges = [(min(crop_min, min(hw)), min(crop_max, min(hw))) for hw in (hw0, hw1)]
    side0, side1 = _crop_sides(ratio, ranges[0], ranges[1], rng_crop)
    M0 = crop_resize_matrix(*_place(c0, side0, hw0), side0, size)
    M1 = crop_resize_matrix(*_place(c1, side1, hw1), side1, size)
    return PosedViews(A0=M0 @ R0, A1=M1 @ R1, M0=M0, M1=M1)
