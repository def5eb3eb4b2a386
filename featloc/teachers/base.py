"""The teacher interface and the group/edge helpers shared by every teacher.

Conventions (methods 1.8):
- `groups`: int32 [H, W]; each semantic group has an id >= 1, 0 marks a pixel that no group
  covers. Ids are per image and category-agnostic: only equality between pixels means anything.
- `edges`: float32 [H, W] in [0, 1] (1 = boundary). Caches store it as 8-bit `255 * edges`.
- `embedding`: float16 or float32 [C, h, w], a dense teacher feature map covering the image
  (for SAM, the image-encoder output after the neck; h, w are the teacher's own resolution).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from ..io.images import to_rgb

TARGET_KEYS = ("groups", "edges", "embedding")


@dataclass
class TeacherTargets:
    """What a teacher says about one image; a target the teacher does not provide is None.

    Attributes:
        groups: int32 [H, W] group ids (>= 1), 0 = pixel covered by no group.
        edges: float32 [H, W] in [0, 1].
        embedding: float16/float32 [C, h, w].
    """

    groups: np.ndarray | None = None
    edges: np.ndarray | None = None
    embedding: np.ndarray | None = None

    @property
    def provided(self) -> frozenset[str]:
        return frozenset(k for k in TARGET_KEYS if getattr(self, k) is not None)

    def check(self, height: int, width: int) -> None:
        """Raise ValueError unless the targets follow the conventions for an H x W image."""
        if self.groups is not None:
            g = self.groups
            if g.dtype != np.int32 or g.shape != (height, width):
                raise ValueError(
                    f"groups must be int32 {(height, width)}, got {g.dtype} {g.shape}"
                )
            if g.size and g.min() < 0:
                raise ValueError("groups must be >= 0 (0 = no group)")
        if self.edges is not None:
            e = self.edges
            if e.dtype != np.float32 or e.shape != (height, width):
                raise ValueError(
                    f"edges must be float32 {(height, width)}, got {e.dtype} {e.shape}"
                )
        if self.embedding is not None:
            m = self.embedding
            if m.dtype not in (np.float16, np.float32) or m.ndim != 3:
                raise ValueError(
                    f"embedding must be float16/float32 [C,h,w], got {m.dtype} {m.shape}"
                )


@dataclass(frozen=True)
class TeacherConf:
    """Base of the teachers' confs (each teacher declares its own frozen dataclass)."""


class Teacher:
    """Maps an RGB image to `TeacherTargets`; used at training time only.

    Subclasses set `Conf` (a frozen dataclass), `provides` (the subset of "groups", "edges",
    "embedding" that `__call__` fills in; an instance may narrow it from its conf) and
    implement `_targets(image, name)`. `name` identifies the image (a '/'-separated relative
    path such as "train/100075.jpg"); only cache-reading teachers use it.
    """

    Conf: type = TeacherConf
    provides: frozenset[str] = frozenset()
    # conf keys that change how fast targets are computed but not what they are
    runtime_keys: tuple[str, ...] = ()

    def __init__(self, conf=None):
        self.conf = conf if conf is not None else self.Conf()

    def __call__(self, image: np.ndarray, name: str = "") -> TeacherTargets:
        """Targets for `image` (uint8 [H, W, 3] RGB; gray is converted) named `name`."""
        image = to_rgb(image)
        targets = self._targets(image, name)
        targets.check(*image.shape[:2])
        return targets

    def _targets(self, image: np.ndarray, name: str) -> TeacherTargets:
        raise NotImplementedError


def edges_from_groups(groups: np.ndarray, dilation_px: int = 1) -> np.ndarray:
    """Binary edge map of a group id map (methods 1.8.3).

    A pixel is an edge if one of its 4-neighbours has a different id (so both sides of a
    boundary are marked), then the map is dilated by `dilation_px` with a square kernel.

    Args:
        groups: integer [H, W] id map.
        dilation_px: dilation radius in pixels (0: none).
    Returns:
        float32 [H, W] with values in {0, 1}.
    """
    g = np.asarray(groups)
    edge = np.zeros(g.shape, dtype=bool)
    dy = g[1:, :] != g[:-1, :]
    dx = g[:, 1:] != g[:, :-1]
    edge[1:, :] |= dy
    edge[:-1, :] |= dy
    edge[:, 1:] |= dx
    edge[:, :-1] |= dx
    edge = edge.astype(np.uint8)
    if dilation_px > 0 and edge.any():
        kernel = np.ones((2 * dilation_px + 1, 2 * dilation_px + 1), np.uint8)
        edge = cv2.dilate(edge, kernel)
    return edge.astype(np.float32)


def masks_to_groups(masks: np.ndarray) -> np.ndarray:
    """Rasterise overlapping binary masks into one id map, the finest mask winning.

    Mask k gets id k + 1. A pixel takes the id of the smallest (fewest pixels) mask that
    covers it; between masks of equal area the lower index wins. Pixels covered by no mask
    are 0. A mask entirely covered by smaller masks leaves no pixel with its id.

    Args:
        masks: bool [K, H, W].
    Returns:
        int32 [H, W].
    """
    masks = np.asarray(masks, dtype=bool)
    if masks.ndim != 3:
        raise ValueError(f"expected masks [K, H, W], got shape {masks.shape}")
    k = masks.shape[0]
    groups = np.zeros(masks.shape[1:], dtype=np.int32)
    if k == 0:
        return groups
    areas = masks.reshape(k, -1).sum(1)
    # paint from the largest to the smallest so that smaller masks overwrite larger ones;
    # among equal areas paint higher indices first so the lower index is painted last
    order = np.lexsort((-np.arange(k), -areas))
    for i in order:
        groups[masks[i]] = i + 1
    return groups
