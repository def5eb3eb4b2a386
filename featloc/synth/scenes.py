"""Synthetic posed scenes: textured piecewise-planar interiors and facades with exact depth.

A scene is a list of textured planar quads (walls, floor, ceiling, boxes, framed pictures)
built from any folder of images. Each view renders every quad through its plane-induced
homography (`cv2.warpPerspective` from a mip-mapped texture) and composites them with an
inverse-depth z-buffer, so the depth of every pixel is the exact ray-plane intersection at
its centre. The geometry (layout, textures) depends only on (kind, seed); the camera path on
(seed, path) and the lighting on (seed, lighting), so a database and a query set of the same
scene are rendered by two calls that differ in `path` (and `lighting`).

Output folder of `make_scenes`:
    images/<path>_<i:04d>.png   rendered RGB views, 8 bit (or .jpg with image_format="jpg")
    depth/<path>_<i:04d>.npy    float32 [H, W] z-depth (along the optical axis) in METRES at
                                the pixel centres, project convention: depth[y, x] belongs to
                                pixel (x, y), the centre of the top-left pixel being (0, 0);
                                0 = no surface (sky)
    sparse/                     COLMAP text model: cameras.txt, images.txt (cam_from_world),
                                points3D.txt (empty)
    pairs_gt.txt                SuperGlue "pairs with ground truth": per line name0 name1
                                rot0 rot1 K0[9] K1[9] T_0to1[16] (row-major; K in the project
                                pixel convention; translation in metres; rot = 0)
    pairs_info.json             per pair: overlap (depth-reprojection covisibility, the min of
                                both directions), baseline_m, rotation_deg
    kapture/                    the cameras and poses in kapture format (records_data links
                                to ../../images)
    scene.json                  configuration, texture names, counts and timings
World frame: metres, z up. Camera frames: OpenCV (x right, y down, z forward).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np

from ..config import make_conf
from ..geometry.camera import Camera
from ..geometry.pose import Pose, relative_pose, rotation_angle_deg
from ..io.colmap import model_from_views, write_model
from ..io.images import list_images, read_image, write_image

logger = logging.getLogger(__name__)

KINDS = ("room", "gallery", "facade")
PATHS = ("db", "query")
LIGHTINGS = ("neutral", "evening", "bright", "random")
NEAR_M = 0.05  # nothing closer than this to a camera is drawn
TEXTURE_MAX_SIDE = 1024  # textures are downsized to this (px) before mip-mapping
MIP_LEVELS = 5  # texture pyramid levels; textures are cropped to multiples of 2**(L-1)
OVERLAP_STRIDE_PX = 8  # pixel grid used to measure the covisibility of two views
OVERLAP_DEPTH_TOL = 0.05  # relative depth agreement that counts a grid point as covisible


@dataclass(frozen=True)
class SceneConf:
    kind: str = "gallery"  # room | gallery | facade
    seed: int = 0  # scene layout and textures (the path and lighting are seeded from it too)
    num_views: int = 100  # rendered views
    width: int = 640  # image width (px)
    height: int = 480  # image height (px)
    hfov_deg: float = 65.0  # horizontal field of view of the pinhole camera
    path: str = "db"  # camera path: db (a walk along the walls) | query (another walk)
    lighting: str = "neutral"  # neutral | evening | bright | random (random photometry per view)
    noise_std: float = 1.0  # Gaussian sensor noise, in 8-bit grey levels
    image_format: str = "png"  # png | jpg
    jpeg_quality: int = 95  # for image_format=jpg
    num_pairs: int = 300  # pairs written to pairs_gt.txt, balanced over the overlap bins
    overlap_bins: tuple[float, ...] = (0.1, 0.3, 0.5, 0.8)  # bin edges of the pair overlap
    min_baseline_m: float = 0.1  # below this camera motion the translation direction is noise
    write_kapture: bool = True  # also write the kapture copy

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if self.path not in PATHS:
            raise ValueError(f"path must be one of {PATHS}, got {self.path!r}")
        if self.lighting not in LIGHTINGS:
            raise ValueError(f"lighting must be one of {LIGHTINGS}, got {self.lighting!r}")
        if self.image_format not in ("png", "jpg"):
            raise ValueError(f"image_format must be png or jpg, got {self.image_format!r}")
        if self.num_views < 1 or self.width < 16 or self.height < 16:
            raise ValueError("need num_views >= 1 and images of at least 16x16 px")
        if not 1 < self.hfov_deg < 170:
            raise ValueError(f"hfov_deg must be in (1, 170), got {self.hfov_deg}")
        bins = list(self.overlap_bins)
        if len(bins) < 2 or bins != sorted(bins) or bins[0] < 0 or bins[-1] > 1:
            raise ValueError(f"overlap_bins must be increasing edges in [0, 1], got {bins}")


# -- scene description ------------------------------------------------------------------------
@dataclass
class Quad:
    """A textured planar rectangle. Texture (u, v) in [0, 1]^2 maps to the world point
    origin + u * axis_u + v * axis_v; `window` (u0, v0, u1, v1) selects the texture region
    in fractions of the texture size (spans above 1 tile the texture)."""

    origin: np.ndarray  # [3] world position of the texture's top-left corner
    axis_u: np.ndarray  # [3] world vector along the texture width (left to right)
    axis_v: np.ndarray  # [3] world vector along the texture height (top to bottom)
    texture: int  # index into Scene.textures
    window: tuple[float, float, float, float] = (0.0, 0.0, 1.0, 1.0)

    def __post_init__(self):
        self.origin = np.asarray(self.origin, np.float64)
        self.axis_u = np.asarray(self.axis_u, np.float64)
        self.axis_v = np.asarray(self.axis_v, np.float64)

    @property
    def corners(self) -> np.ndarray:
        o, u, v = self.origin, self.axis_u, self.axis_v
        return np.stack([o, o + u, o + u + v, o + v])

    @property
    def front_normal(self) -> np.ndarray:
        """Unit normal of the side the texture reads correctly from (v x u: the builders
        orient every quad so that this side faces the viewers)."""
        n = np.cross(self.axis_v, self.axis_u)
        return n / np.linalg.norm(n)


@dataclass
class Scene:
    kind: str
    quads: list[Quad]
    textures: list[list[np.ndarray]]  # mip pyramids of uint8 RGB textures
    texture_names: list[str]
    lights: dict[str, list[tuple[np.ndarray, float]]]  # per lighting: (position, intensity)
    paths: dict[str, dict]  # camera path parameters per path name
    background: tuple[tuple[float, float, float], tuple[float, float, float]] | None = None
    bounds: np.ndarray = field(default_factory=lambda: np.zeros((2, 3)))
    lightmap_cache: dict[str, list[np.ndarray]] = field(default_factory=dict, repr=False)


class _TextureBank:
    """Textures from a folder, loaded on first use, in several variants."""

    def __init__(self, folder: str | Path, rng: np.random.Generator):
        self.folder = Path(folder)
        names = list_images(self.folder)
        if not names:
            raise ValueError(f"{self.folder}: no texture images found")
        self.names = [names[i] for i in rng.permutation(len(names))]
        self.pyramids: list[list[np.ndarray]] = []
        self.labels: list[str] = []
        self._index: dict[tuple, int] = {}
        self._next = 0
        self.aspects: dict[int, float] = {}

    def take(self, variant: str = "plain") -> int:
        """A new texture (cycling through the folder) in the given variant."""
        name = self.names[self._next % len(self.names)]
        self._next += 1
        return self.get(name, variant)

    def get(self, name: str, variant: str = "plain") -> int:
        key = (name, variant)
        if key not in self._index:
            image = read_image(self.folder / name).astype(np.float32) / 255
            h, w = image.shape[:2]
            ratio = min(1.0, TEXTURE_MAX_SIDE / max(h, w))
            if ratio < 1:
                image = cv2.resize(image, (round(w * ratio), round(h * ratio)),
                                   interpolation=cv2.INTER_AREA)
            image = _variant(image, variant)
            self._index[key] = self._add(image, f"{name}:{variant}")
        return self._index[key]

    def solid(self, rgb) -> int:
        key = ("solid", tuple(round(float(c), 3) for c in rgb))
        if key not in self._index:
            image = np.ones((16, 16, 3), np.float32) * np.asarray(rgb, np.float32)
            self._index[key] = self._add(image, f"solid{key[1]}")
        return self._index[key]

    def _add(self, image: np.ndarray, label: str) -> int:
        m = 2 ** (MIP_LEVELS - 1)
        h, w = image.shape[:2]
        h2, w2 = max(m, h // m * m), max(m, w // m * m)
        y0, x0 = (h - h2) // 2, (w - w2) // 2
        image = image[y0 : y0 + h2, x0 : x0 + w2] if h >= h2 and w >= w2 else cv2.resize(image, (w2, h2))
        level = np.clip(image * 255 + 0.5, 0, 255).astype(np.uint8)
        pyramid = [level]
        for _ in range(MIP_LEVELS - 1):
            # Exact halving with a 2x2 box filter keeps every level aligned with the pixel
            # centre convention (cv2.pyrDown would shift by half a texel).
            h, w = pyramid[-1].shape[:2]
            pyramid.append(cv2.resize(pyramid[-1], (w // 2, h // 2), interpolation=cv2.INTER_AREA))
        self.pyramids.append(pyramid)
        self.labels.append(label)
        index = len(self.pyramids) - 1
        self.aspects[index] = w2 / h2
        return index


def _variant(image: np.ndarray, variant: str) -> np.ndarray:
    """Derived textures: plaster walls and floors need less contrast than photographs."""
    if variant == "plain":
        return image
    gray = image.mean(2, keepdims=True)
    if variant == "plaster":  # pale, low-contrast wall paint
        return np.clip(0.72 + 0.25 * (gray - gray.mean()), 0, 1) * np.array([1.0, 0.98, 0.94], np.float32)
    if variant == "floor":  # darker, warm, medium contrast
        return np.clip(0.45 + 0.6 * (image - image.mean()), 0, 1) * np.array([1.0, 0.85, 0.7], np.float32)
    if variant == "muted":
        return np.clip(0.6 + 0.6 * (image - image.mean()), 0, 1)
    raise ValueError(f"unknown texture variant {variant!r}")


# -- scene builders ------------------------------------------------------------------------------
_Z = np.array([0.0, 0.0, 1.0])


def _wall(p0, p1, z0, z1, texture, window=(0.0, 0.0, 1.0, 1.0), offset=0.0) -> Quad:
    """A vertical rectangle over the floor segment p0 -> p1 from height z0 to z1, textured
    so that it reads left to right from the left side of p0 -> p1 (the room interior for
    counter-clockwise walls), pushed `offset` metres toward that side."""
    p0, p1 = np.r_[np.asarray(p0, float), 0.0], np.r_[np.asarray(p1, float), 0.0]
    e = p1 - p0
    inward = np.array([-e[1], e[0], 0.0]) / np.linalg.norm(e)
    origin = p1 + inward * offset + _Z * z1
    return Quad(origin, p0 - p1, _Z * (z0 - z1), texture, window)


def _fit_window(aspect_tex: float, width: float, height: float, rng) -> tuple:
    """A random texture window with the aspect ratio of a width x height surface."""
    target = width / height
    if target < aspect_tex:
        span = target / aspect_tex
        u0 = rng.uniform(0, 1 - span)
        return (u0, 0.0, u0 + span, 1.0)
    span = aspect_tex / target
    v0 = rng.uniform(0, 1 - span)
    return (0.0, v0, 1.0, v0 + span)


def _box(center, size, height, yaw, textures, bank, rng, z0=0.0) -> list[Quad]:
    """Four textured sides and a top of an upright box."""
    c, s, cy = np.asarray(center, float), np.asarray(size, float) / 2, np.cos(yaw)
    sy = np.sin(yaw)
    corners = [c + np.array([cy * dx - sy * dy, sy * dx + cy * dy]) for dx, dy in
               ((-s[0], -s[1]), (s[0], -s[1]), (s[0], s[1]), (-s[0], s[1]))]
    quads = []
    for k in range(4):
        a, b = corners[k], corners[(k + 1) % 4]
        tex = textures[k % len(textures)]
        width = np.linalg.norm(b - a)
        # Clockwise seen from outside: the texture reads correctly from outside the box.
        quads.append(_wall(b, a, z0, z0 + height, tex, _fit_window(bank.aspects[tex], width, height, rng)))
    top = textures[-1]
    p = [np.r_[x, z0 + height] for x in corners]
    quads.append(Quad(p[3], p[2] - p[3], p[0] - p[3], top,
                      _fit_window(bank.aspects[top], 2 * s[0], 2 * s[1], rng)))
    if z0 > 0:  # a raised box is seen from below: close it (its front faces down)
        b = [np.r_[x, z0] for x in corners]
        quads.append(Quad(b[0], b[1] - b[0], b[3] - b[0], top))
    return quads


def _picture(p0, p1, along, center_z, width, bank, rng, frame_rgb, offset=0.015) -> list[Quad]:
    """A framed picture on the wall p0 -> p1 (interior on its left), `along` metres from p0."""
    tex = bank.take("plain")
    height = width / bank.aspects[tex]
    p0, p1 = np.asarray(p0, float), np.asarray(p1, float)
    e = (p1 - p0) / np.linalg.norm(p1 - p0)
    border = 0.04 + 0.03 * rng.random()
    a0, a1 = p0 + e * (along - width / 2 - border), p0 + e * (along + width / 2 + border)
    b0, b1 = p0 + e * (along - width / 2), p0 + e * (along + width / 2)
    frame = _wall(a0, a1, center_z - height / 2 - border, center_z + height / 2 + border,
                  bank.solid(frame_rgb), offset=offset)
    picture = _wall(b0, b1, center_z - height / 2, center_z + height / 2, tex, offset=2 * offset)
    return [frame, picture]


def _room_shell(w, d, h, bank, rng, wall_variant, panel=2.5, floor_tile=2.0) -> list[Quad]:
    corners = [np.array(p, float) for p in ((0, 0), (w, 0), (w, d), (0, d))]  # counter-clockwise
    quads = []
    for k in range(4):
        a, b = corners[k], corners[(k + 1) % 4]
        length = np.linalg.norm(b - a)
        n = max(1, round(length / panel))
        for i in range(n):
            pa, pb = a + (b - a) * i / n, a + (b - a) * (i + 1) / n
            tex = bank.take(wall_variant)
            quads.append(_wall(pa, pb, 0.0, h, tex, _fit_window(bank.aspects[tex], length / n, h, rng)))
    floor_tex = bank.take("floor")
    ceiling_tex = bank.take("plaster")
    # The floor is seen from above: u along +x, v along -y reads correctly from inside.
    quads.append(Quad([0, d, 0], [w, 0, 0], [0, -d, 0], floor_tex,
                      (0, 0, w / floor_tile, d / floor_tile * bank.aspects[floor_tex])))
    quads.append(Quad([0, 0, h], [w, 0, 0], [0, d, 0], ceiling_tex,
                      (0, 0, w / 3.0, d / 3.0 * bank.aspects[ceiling_tex])))
    return quads


def _ceiling_lights(w, d, h, nx, ny, intensity):
    return [(np.array([w * (i + 0.5) / nx, d * (j + 0.5) / ny, h - 0.2]), intensity)
            for i in range(nx) for j in range(ny)]


def build_scene(kind: str, textures_dir: str | Path, seed: int = 0) -> Scene:
    """The geometry, textures and lights of a scene; deterministic given (kind, seed) and
    the folder's content."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    rng = np.random.default_rng([seed, KINDS.index(kind)])
    bank = _TextureBank(textures_dir, rng)
    frames = [(0.12, 0.1, 0.08), (0.55, 0.42, 0.2), (0.85, 0.85, 0.82), (0.2, 0.2, 0.25)]
    if kind == "room":
        w, d, h = 8.0, 6.0, 3.0
        quads = _room_shell(w, d, h, bank, rng, "plain", panel=2.2)
        for _ in range(4):
            center = rng.uniform([w / 2 - 0.8, d / 2 - 0.35], [w / 2 + 0.8, d / 2 + 0.35])
            size = rng.uniform(0.4, 0.9, 2)
            quads += _box(center, size, rng.uniform(0.4, 1.3), rng.uniform(0, np.pi),
                          [bank.take("plain") for _ in range(2)], bank, rng)
        walls = [((0, 0), (w, 0)), ((w, 0), (w, d)), ((w, d), (0, d)), ((0, d), (0, 0))]
        for p0, p1 in walls:
            length = np.linalg.norm(np.subtract(p1, p0))
            for slot in range(2):  # one picture per half wall: pictures never overlap
                along = length * (slot + 0.5) / 2 + rng.uniform(-0.4, 0.4)
                quads += _picture(p0, p1, along, rng.uniform(1.4, 1.9), rng.uniform(0.5, 0.9),
                                  bank, rng, frames[rng.integers(len(frames))])
        lights = {"neutral": _ceiling_lights(w, d, h, 2, 2, 1.0),
                  "evening": [(np.array([0.6, 0.6, 1.2]), 1.6)],
                  "bright": _ceiling_lights(w, d, h, 3, 2, 1.2)}
        paths = {"db": {"center": (w / 2, d / 2), "axes": (2.7, 1.8)},
                 "query": {"center": (w / 2, d / 2), "axes": (2.2, 1.5)}}
        bounds = np.array([[0, 0, 0], [w, d, h]], float)
        background = None
    elif kind == "gallery":
        w, d, h = 14.0, 7.0, 3.5
        quads = _room_shell(w, d, h, bank, rng, "plaster", panel=3.5, floor_tile=1.5)
        walls = [((0, 0), (w, 0)), ((w, 0), (w, d)), ((w, d), (0, d)), ((0, d), (0, 0))]
        for p0, p1 in walls:
            length = np.linalg.norm(np.subtract(p1, p0))
            n = max(1, int(length / 2.0))
            for i in range(n):
                along = length * (i + 0.5) / n + rng.uniform(-0.2, 0.2)
                quads += _picture(p0, p1, along, rng.uniform(1.5, 1.8), rng.uniform(0.6, 1.3),
                                  bank, rng, frames[rng.integers(len(frames))])
        # Free-standing partitions with pictures on both sides occlude the far walls.
        for cx in (w * 0.3, w * 0.7):
            length, thick, ph = 2.6, 0.16, 2.6
            plaster = bank.take("plaster")
            quads += _box((cx, d / 2), (length, thick), ph, 0.0, [plaster], bank, rng)
            for side in (-1, 1):
                y = d / 2 + side * thick / 2
                # The viewer's side must be on the left of p0 -> p1.
                p0, p1 = ((cx + 1.1, y), (cx - 1.1, y)) if side < 0 else ((cx - 1.1, y), (cx + 1.1, y))
                quads += _picture(p0, p1, 1.1 + rng.uniform(-0.2, 0.2), 1.55, rng.uniform(0.8, 1.3),
                                  bank, rng, frames[rng.integers(len(frames))])
        for cx in (w * 0.5 - 0.8, w * 0.5, w * 0.5 + 0.8):  # plinths between the partitions
            quads += _box((cx, d / 2), (0.5, 0.5), 1.0, rng.uniform(0, np.pi / 2),
                          [bank.take("muted"), bank.take("muted")], bank, rng)
        lights = {"neutral": _ceiling_lights(w, d, h, 4, 2, 0.9),
                  "evening": [(np.array([1.0, 1.0, 1.5]), 1.4), (np.array([w - 1, d - 1, 1.5]), 0.8)],
                  "bright": _ceiling_lights(w, d, h, 5, 3, 1.1)}
        paths = {"db": {"center": (w / 2, d / 2), "axes": (5.4, 2.35)},
                 "query": {"center": (w / 2, d / 2), "axes": (4.6, 2.0)}}
        bounds = np.array([[0, 0, 0], [w, d, h]], float)
        background = None
    else:  # facade
        quads = []
        ground = bank.take("floor")
        quads.append(Quad([-30, 40, 0], [100, 0, 0], [0, -60, 0], ground,
                          (0, 0, 100 / 4.0, 60 / 4.0 * bank.aspects[ground])))
        x, blocks = -12.0, []
        while x < 45:
            width, height, setback = rng.uniform(6, 11), rng.uniform(7, 15), rng.uniform(0, 1.8)
            blocks.append((x, x + width, height, setback))
            x += width
        for x0, x1, height, setback in blocks:
            # The street is at y > 0; facades face +y.
            tiles = max(1, round((x1 - x0) / 5))
            for i in range(tiles):
                a, b = x0 + (x1 - x0) * i / tiles, x0 + (x1 - x0) * (i + 1) / tiles
                tex = bank.take("plain")
                quads.append(_wall((a, -setback), (b, -setback), 0.0, height, tex,
                                   _fit_window(bank.aspects[tex], b - a, height, rng)))
            for _ in range(rng.integers(2, 5)):  # protruding balconies / signs
                bw = rng.uniform(1.0, 2.5)
                cx = rng.uniform(x0 + bw, x1 - bw)
                quads += _box((cx, -setback + 0.4), (bw, 0.8), rng.uniform(0.8, 1.6), 0.0,
                              [bank.take("muted"), bank.take("muted")], bank, rng,
                              z0=rng.uniform(3, max(3.5, height - 2)))
        for (_, x1, h0, s0), (_, _, h1, s1) in zip(blocks[:-1], blocks[1:], strict=True):
            if abs(s0 - s1) > 0.05:  # side wall joining two setbacks
                tex = bank.take("muted")
                lo, hi = sorted((-s0, -s1))
                # It faces +x when the left block protrudes (the viewer side on the left).
                ends = ((x1, hi), (x1, lo)) if -s0 > -s1 else ((x1, lo), (x1, hi))
                quads.append(_wall(*ends, 0.0, min(h0, h1), tex,
                                   _fit_window(bank.aspects[tex], hi - lo, min(h0, h1), rng)))
        lights = {"neutral": [(np.array([10.0, 30.0, 40.0]), 4.0)],
                  "evening": [(np.array([-20.0, 15.0, 6.0]), 4.0)],
                  "bright": [(np.array([20.0, 20.0, 60.0]), 6.0)]}
        paths = {"db": {"x": (0.0, 30.0), "y": 10.0}, "query": {"x": (2.0, 28.0), "y": 10.0}}
        bounds = np.array([[-12, -2, 0], [45, 40, 15]], float)
        background = ((0.55, 0.7, 0.95), (0.85, 0.9, 1.0))
    return Scene(kind, quads, bank.pyramids, bank.labels, lights, paths, background, bounds)


# -- camera paths --------------------------------------------------------------------------------
def look_pose(position, yaw: float, pitch: float = 0.0, roll: float = 0.0) -> Pose:
    """cam_from_world of a camera at `position` (z-up world) looking along the heading `yaw`
    (radians from +x toward +y), tilted up by `pitch`, rolled by `roll` about its axis."""
    d = np.array([np.cos(pitch) * np.cos(yaw), np.cos(pitch) * np.sin(yaw), np.sin(pitch)])
    right = np.cross(d, _Z)
    right /= np.linalg.norm(right)
    down = np.cross(d, right)
    c, s = np.cos(roll), np.sin(roll)
    world_from_cam = np.stack([c * right + s * down, -s * right + c * down, d], 1)
    R = world_from_cam.T
    return Pose(R, -R @ np.asarray(position, np.float64))


def camera_path(scene: Scene, path: str, num_views: int, seed: int = 0) -> list[Pose]:
    """cam_from_world poses along the scene's `path` ("db" or "query")."""
    if path not in PATHS:
        raise ValueError(f"path must be one of {PATHS}, got {path!r}")
    rng = np.random.default_rng([seed, 1 + PATHS.index(path)])
    spec = scene.paths[path]
    poses = []
    i = np.arange(num_views)
    deg = np.deg2rad
    if scene.kind == "facade":
        x0, x1 = spec["x"]
        if path == "db":
            x = np.linspace(x0, x1, num_views)
            y = spec["y"] + 1.5 * np.sin(4 * np.pi * i / num_views)
            yaw = deg(-90 + 35 * np.sin(6 * np.pi * i / num_views)) + rng.normal(0, deg(5), num_views)
            pitch = deg(8) + rng.normal(0, deg(3), num_views)
            z = 1.6 + rng.normal(0, 0.05, num_views)
        else:
            x = np.sort(rng.uniform(x0, x1, num_views))
            y = spec["y"] + rng.uniform(-3, 3, num_views)
            yaw = deg(-90) + rng.uniform(-deg(45), deg(45), num_views)
            pitch = rng.uniform(0, deg(20), num_views)
            z = rng.uniform(1.4, 2.2, num_views)
        roll = rng.normal(0, deg(2), num_views)
        for k in range(num_views):
            poses.append(look_pose([x[k], y[k], z[k]], yaw[k], pitch[k], roll[k]))
        return poses
    (cx, cy), (a, b) = spec["center"], spec["axes"]
    if path == "db":
        theta = 2 * np.pi * i / num_views
        radial = 1.0
        # Look outward, sweeping between forward and backward diagonals so that the same
        # wall is seen from several directions (wide baselines, perspective changes).
        offset = deg(55) * np.sin(5 * theta) + rng.normal(0, deg(8), num_views)
        z = 1.55 + 0.1 * np.sin(3 * theta) + rng.normal(0, 0.03, num_views)
        pitch = rng.normal(0, deg(5), num_views)
        roll = rng.normal(0, deg(2), num_views)
    else:
        theta = -2 * np.pi * i / num_views + rng.uniform(0, 2 * np.pi)
        radial = 1.0 + rng.uniform(-0.12, 0.12, num_views)
        offset = rng.uniform(-deg(70), deg(70), num_views)
        z = rng.uniform(1.2, 1.9, num_views)
        pitch = rng.normal(0, deg(8), num_views)
        roll = rng.normal(0, deg(3), num_views)
    px = cx + radial * a * np.cos(theta)
    py = cy + radial * b * np.sin(theta)
    outward = np.arctan2(np.sin(theta) / b, np.cos(theta) / a)
    for k in range(num_views):
        poses.append(look_pose([px[k], py[k], z[k]], outward[k] + offset[k], pitch[k], roll[k]))
    return poses


# -- lighting ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Photometric:
    """Per-view camera response: out = gain * tint * (radiance ** gamma) * ramp, where the
    ramp is 1 + gradient * (a linear ramp in [-1, 1] across the image along `angle_deg`)."""

    gain: float = 1.0
    gamma: float = 1.0
    tint: tuple[float, float, float] = (1.0, 1.0, 1.0)
    gradient: float = 0.0
    angle_deg: float = 0.0


def photometric_for(lighting: str, rng: np.random.Generator) -> Photometric:
    if lighting == "neutral":
        return Photometric()
    if lighting == "evening":
        return Photometric(0.85, 1.15, (1.0, 0.82, 0.62), 0.25, float(rng.uniform(0, 360)))
    if lighting == "bright":
        return Photometric(1.15, 0.85, (0.9, 0.97, 1.08), 0.15, float(rng.uniform(0, 360)))
    if lighting == "random":
        tint = tuple(float(v) for v in rng.uniform(0.88, 1.12, 3))
        return Photometric(float(rng.uniform(0.6, 1.3)), float(rng.uniform(0.75, 1.3)), tint,
                           float(rng.uniform(0, 0.35)), float(rng.uniform(0, 360)))
    raise ValueError(f"lighting must be one of {LIGHTINGS}, got {lighting!r}")


# -- rendering ----------------------------------------------------------------------------------------
def _clip_near(poly: np.ndarray, near: float) -> np.ndarray:
    """Sutherland-Hodgman clipping of a convex [K, 3] camera-frame polygon to z >= near."""
    out = []
    for k in range(len(poly)):
        a, b = poly[k], poly[(k + 1) % len(poly)]
        if a[2] >= near:
            out.append(a)
        if (a[2] >= near) != (b[2] >= near):
            out.append(a + (near - a[2]) / (b[2] - a[2]) * (b - a))
    return np.asarray(out)


def render_view(
    scene: Scene,
    camera: Camera,
    cam_from_world: Pose,
    lighting: str = "neutral",
    photometric: Photometric | None = None,
    noise_std: float = 0.0,
    rng: np.random.Generator | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Render one view.

    Args:
        camera: an undistorted pinhole `Camera` (project pixel convention).
        cam_from_world: the camera pose.
        lighting: which scene lights to use; photometric: the per-view response.
        noise_std: Gaussian noise in 8-bit levels (needs `rng`).
    Returns:
        image [H, W, 3] uint8 RGB and depth [H, W] float32 z-depth in metres (0: no surface).
    """
    if camera.is_distorted:
        raise ValueError("render_view needs an undistorted camera")
    W, H = camera.size
    K, Kinv = camera.K, np.linalg.inv(camera.K)
    R, t = cam_from_world.R, cam_from_world.t
    albedo = np.zeros((H, W, 3), np.uint8)
    shading = np.ones((H, W), np.float32)
    inv_depth = np.zeros((H, W), np.float32)
    lightmaps = scene_lightmaps(scene, lighting)
    for quad, lightmap in zip(scene.quads, lightmaps, strict=True):
        _draw_quad(quad, scene.textures[quad.texture], lightmap, K, Kinv, R, t,
                   albedo, shading, inv_depth)
    valid = inv_depth > 0
    depth = np.zeros((H, W), np.float32)
    depth[valid] = 1.0 / inv_depth[valid]
    image = albedo.astype(np.float32)
    image *= (shading * np.float32(1 / 255))[..., None]
    if scene.background is not None and not valid.all():
        top, bottom = (np.asarray(c, np.float32) for c in scene.background)
        ramp = np.linspace(0, 1, H, dtype=np.float32)[:, None, None]
        sky = np.broadcast_to(top + (bottom - top) * ramp, (H, W, 3))
        image[~valid] = sky[~valid]
    image = _apply_photometric(image, photometric or Photometric())
    if noise_std > 0:
        if rng is None:
            raise ValueError("noise_std > 0 needs an rng")
        image += rng.standard_normal(image.shape, dtype=np.float32) * np.float32(noise_std / 255)
    image = np.clip(image * 255 + 0.5, 0, 255).astype(np.uint8)
    return image, depth


def _draw_quad(quad, pyramid, lightmap, K, Kinv, R, t, albedo, shading, inv_depth):
    H, W = inv_depth.shape
    corners_cam = quad.corners @ R.T + t
    poly = _clip_near(corners_cam, NEAR_M)
    if len(poly) < 3:
        return
    uv = (poly @ K.T)[:, :2] / poly[:, 2:]
    x0, y0 = np.floor(uv.min(0)).astype(int) - 1
    x1, y1 = np.ceil(uv.max(0)).astype(int) + 1
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, W - 1), min(y1, H - 1)
    if x0 > x1 or y0 > y1:
        return
    # Pixel p -> q = M^-1 K^-1 p with M = [R u, R v, R o + t]: q ~ (s, t, 1) on the quad and
    # q_3 = 1 / z exactly (K^-1 p has z = 1), so the inverse depth needs no division.
    M = np.stack([R @ quad.axis_u, R @ quad.axis_v, R @ quad.origin + t], 1)
    try:
        Hq = np.linalg.inv(M) @ Kinv
    except np.linalg.LinAlgError:  # the camera lies in the quad's plane
        return
    xs = np.arange(x0, x1 + 1, dtype=np.float64)[None, :]
    ys = np.arange(y0, y1 + 1, dtype=np.float64)[:, None]
    roi = (slice(y0, y1 + 1), slice(x0, x1 + 1))
    q3 = Hq[2, 0] * xs + Hq[2, 1] * ys + Hq[2, 2]
    draw = (q3 > inv_depth[roi]) & (q3 < 1.0 / NEAR_M)
    if not draw.any():
        return
    q0 = Hq[0, 0] * xs + Hq[0, 1] * ys + Hq[0, 2]
    draw &= (q0 >= 0) & (q0 <= q3)
    del q0
    q1 = Hq[1, 0] * xs + Hq[1, 1] * ys + Hq[1, 2]
    draw &= (q1 >= 0) & (q1 <= q3)
    del q1
    if not draw.any():
        return
    # Mip level from the texel footprint of one pixel at the centre of the visible polygon.
    cx_, cy_ = np.clip(uv.mean(0), [x0, y0], [x1, y1])
    qc = Hq @ np.array([cx_, cy_, 1.0])
    u0, v0, u1, v1 = quad.window
    h0, w0 = pyramid[0].shape[:2]
    J = (Hq[:2, :2] * qc[2] - np.outer(qc[:2], Hq[2, :2])) / qc[2] ** 2
    J *= np.array([[(u1 - u0) * w0], [(v1 - v0) * h0]])
    # The largest singular value: no aliasing along the most compressed direction.
    footprint = np.linalg.norm(J, 2)
    level = int(np.clip(np.floor(np.log2(max(footprint, 1.0))), 0, len(pyramid) - 1))
    tex = pyramid[level]
    th, tw = tex.shape[:2]
    shift = np.array([[1.0, 0, x0], [0, 1.0, y0], [0, 0, 1]])
    size = (x1 - x0 + 1, y1 - y0 + 1)
    # (s, t) -> texel of this level (texel centres at integers).
    B = np.array([[(u1 - u0) * tw, 0, u0 * tw - 0.5], [0, (v1 - v0) * th, v0 * th - 0.5], [0, 0, 1]])
    tiled = max(u1 - u0, v1 - v0) > 1 or min(u0, v0) < 0 or max(u1, v1) > 1
    warped = cv2.warpPerspective(
        tex, B @ Hq @ shift, size, flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_WRAP if tiled else cv2.BORDER_REFLECT_101,
    )
    lh, lw = lightmap.shape
    L = np.array([[lw, 0, -0.5], [0, lh, -0.5], [0, 0, 1]])
    light = cv2.warpPerspective(
        lightmap, L @ Hq @ shift, size, flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_REPLICATE,
    )
    albedo[roi][draw] = warped[draw]
    shading[roi][draw] = light[draw]
    inv_depth[roi][draw] = q3[draw]


LIGHTMAP_TEXELS_PER_M = 8  # resolution of the baked diffuse lighting


def scene_lightmaps(scene: Scene, lighting: str) -> list[np.ndarray]:
    """Per-quad diffuse shading maps (ambient + point lights with distance fall-off on the
    quad's front side), baked once per lighting in the world frame so that every view sees
    the same surface radiance. Cached on the scene."""
    cache = scene.lightmap_cache
    if lighting in cache:
        return cache[lighting]
    lights = scene.lights.get(lighting, scene.lights["neutral"])
    ambient = 0.22 if lighting == "evening" else 0.35
    falloff_m = 40.0 if scene.kind == "facade" else 4.0
    maps = []
    for quad in scene.quads:
        ns = int(np.clip(np.linalg.norm(quad.axis_u) * LIGHTMAP_TEXELS_PER_M, 2, 256))
        nt = int(np.clip(np.linalg.norm(quad.axis_v) * LIGHTMAP_TEXELS_PER_M, 2, 256))
        s_, t_ = np.meshgrid((np.arange(ns) + 0.5) / ns, (np.arange(nt) + 0.5) / nt)
        world = quad.origin + s_[..., None] * quad.axis_u + t_[..., None] * quad.axis_v
        value = np.full(s_.shape, ambient)
        for position, intensity in lights:
            to_light = position - world
            dist = np.linalg.norm(to_light, axis=-1)
            lambert = np.clip(to_light @ quad.front_normal / np.maximum(dist, 1e-6), 0, 1)
            value += intensity * 0.55 * lambert / (1 + (dist / falloff_m) ** 2)
        maps.append(np.clip(value, 0, 1.6).astype(np.float32))
    cache[lighting] = maps
    return maps


def _apply_photometric(image: np.ndarray, p: Photometric) -> np.ndarray:
    if p == Photometric():
        return image
    H, W = image.shape[:2]
    out = np.power(np.clip(image, 0, None), np.float32(p.gamma))
    out *= np.float32(p.gain) * np.asarray(p.tint, np.float32)
    if p.gradient:
        a = np.deg2rad(p.angle_deg)
        x = np.linspace(-1, 1, W, dtype=np.float32)[None, :]
        y = np.linspace(-1, 1, H, dtype=np.float32)[:, None] * (H / W)
        ramp = (np.cos(a) * x + np.sin(a) * y) / max(abs(np.cos(a)) + abs(np.sin(a)) * H / W, 1e-6)
        out *= (1 + np.float32(p.gradient) * ramp)[..., None]
    return out


# -- overlap and pairs ----------------------------------------------------------------------------
def _grid_points(depth, camera: Camera, pose: Pose, stride: int):
    """World points of a grid of pixels with valid depth."""
    H, W = depth.shape
    ys, xs = np.mgrid[stride // 2 : H : stride, stride // 2 : W : stride]
    xs, ys = xs.ravel(), ys.ravel()
    z = depth[ys, xs].astype(np.float64)
    ok = z > 0
    cam = camera.unproject(np.stack([xs[ok], ys[ok]], 1), z[ok])
    return (cam - pose.t) @ pose.R


def covisibility(world_points, depth, camera: Camera, pose: Pose, tol=OVERLAP_DEPTH_TOL) -> float:
    """Fraction of [N, 3] world points (sampled in another view) that `pose` sees
    unoccluded: inside the image and within `tol` relative depth of its depth map."""
    if len(world_points) == 0:
        return 0.0
    cam = pose.transform(world_points)
    z = cam[:, 2]
    front = z > NEAR_M
    uv = np.full((len(z), 2), -1.0)
    uv[front] = camera.project(cam[front])
    x = np.round(uv[:, 0]).astype(np.int64)
    y = np.round(uv[:, 1]).astype(np.int64)
    H, W = depth.shape
    inside = front & (x >= 0) & (x < W) & (y >= 0) & (y < H)
    d = np.zeros(len(z))
    d[inside] = depth[y[inside], x[inside]]
    seen = inside & (d > 0) & (np.abs(z - d) < tol * np.maximum(d, 1e-9))
    return float(seen.mean())


def covisibility_matrix(depths, cameras, poses, stride: int = OVERLAP_STRIDE_PX) -> np.ndarray:
    """[N, N] directional covisibility: [i, j] = share of view i's pixels that view j sees."""
    n = len(depths)
    points = [_grid_points(d, c, p, stride) for d, c, p in zip(depths, cameras, poses, strict=True)]
    cov = np.eye(n)
    for i in range(n):
        for j in range(n):
            if i != j:
                cov[i, j] = covisibility(points[i], depths[j], cameras[j], poses[j])
    return cov


def overlap_matrix(depths, cameras, poses, stride: int = OVERLAP_STRIDE_PX) -> np.ndarray:
    """[N, N] overlap: min of the two directional covisibilities (1 on the diagonal)."""
    cov = covisibility_matrix(depths, cameras, poses, stride)
    return np.minimum(cov, cov.T)


def select_pairs(overlap, poses, num_pairs, bins, min_baseline_m, rng) -> list[tuple[int, int]]:
    """Pairs balanced over the overlap bins (edges `bins`), each with enough baseline."""
    n = len(poses)
    centers = np.stack([p.center for p in poses])
    nbins = len(bins) - 1
    quota = int(np.ceil(num_pairs / nbins))
    chosen = []
    for b in range(nbins):
        lo, hi = bins[b], bins[b + 1]
        candidates = [
            (i, j) for i in range(n) for j in range(i + 1, n)
            if lo <= overlap[i, j] < hi and np.linalg.norm(centers[i] - centers[j]) >= min_baseline_m
        ]
        order = rng.permutation(len(candidates))[:quota]
        chosen += [candidates[k] for k in order]
        if len(order) < quota:
            logger.info("overlap bin [%.2f, %.2f): only %d pairs available", lo, hi, len(order))
    return sorted(chosen[: max(num_pairs, 0)] if len(chosen) > num_pairs else chosen)


# -- the whole set -------------------------------------------------------------------------------------
def make_scenes(
    textures_dir: str | Path,
    output_dir: str | Path,
    kind: str = "gallery",
    seed: int = 0,
    num_views: int = 100,
    width: int = 640,
    height: int = 480,
    **options,
) -> Path:
    """Render a posed image set of a synthetic scene into `output_dir` (layout: module doc).

    `options` are the other `SceneConf` fields (path, lighting, hfov_deg, noise_std,
    image_format, num_pairs, overlap_bins, min_baseline_m, write_kapture). Returns the folder.
    """
    conf = make_conf(SceneConf, dict(kind=kind, seed=seed, num_views=num_views, width=width,
                                     height=height, **options))
    out = Path(output_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "depth").mkdir(parents=True, exist_ok=True)
    timings = {}
    tic = time.perf_counter()
    scene = build_scene(conf.kind, textures_dir, conf.seed)
    camera = Camera.from_fov(conf.hfov_deg, conf.width, conf.height)
    poses = camera_path(scene, conf.path, conf.num_views, conf.seed)
    timings["build_s"] = time.perf_counter() - tic
    light_rng = np.random.default_rng([conf.seed, 10 + LIGHTINGS.index(conf.lighting), 1 + PATHS.index(conf.path)])
    noise_rng = np.random.default_rng([conf.seed, 99, 1 + PATHS.index(conf.path)])
    names, depths = [], []
    tic = time.perf_counter()
    for k, pose in enumerate(poses):
        name = f"{conf.path}_{k:04d}.{conf.image_format}"
        photometric = photometric_for(conf.lighting, light_rng)
        image, depth = render_view(scene, camera, pose, conf.lighting, photometric,
                                   conf.noise_std, noise_rng)
        if conf.image_format == "jpg":
            bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
            if not cv2.imwrite(str(out / "images" / name), bgr,
                               [cv2.IMWRITE_JPEG_QUALITY, conf.jpeg_quality]):
                raise OSError(f"{out / 'images' / name}: could not write image")
        else:
            write_image(out / "images" / name, image)
        np.save(out / "depth" / f"{Path(name).stem}.npy", depth)
        names.append(name)
        depths.append(depth)
    timings["render_s"] = time.perf_counter() - tic
    tic = time.perf_counter()
    cameras = [camera] * len(poses)
    overlap = overlap_matrix(depths, cameras, poses)
    pair_rng = np.random.default_rng([conf.seed, 50, 1 + PATHS.index(conf.path)])
    pairs = select_pairs(overlap, poses, conf.num_pairs, list(conf.overlap_bins),
                         conf.min_baseline_m, pair_rng)
    timings["pairs_s"] = time.perf_counter() - tic
    from ..eval.pose import PosePair, format_pose_pair_line

    lines, info = [], []
    for i, j in pairs:
        T = relative_pose(poses[i], poses[j])
        lines.append(format_pose_pair_line(PosePair(names[i], names[j], camera.K, camera.K, T)))
        info.append({"name0": names[i], "name1": names[j], "overlap": round(float(overlap[i, j]), 4),
                     "baseline_m": round(float(np.linalg.norm(T.t)), 4),
                     "rotation_deg": round(rotation_angle_deg(T.R), 3)})
    (out / "pairs_gt.txt").write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    (out / "pairs_info.json").write_text(json.dumps(info, indent=1), encoding="utf-8")
    by_name = dict(zip(names, poses, strict=True))
    write_model(model_from_views(dict.fromkeys(names, camera), by_name), out / "sparse")
    if conf.write_kapture:
        from ..io.kapture_io import write_kapture

        write_kapture(out / "kapture", dict.fromkeys(names, camera), by_name, out / "images")
    hist = np.histogram([p["overlap"] for p in info], bins=list(conf.overlap_bins))[0].tolist()
    summary = {
        "conf": asdict(conf),
        "camera": {"model": camera.model, "width": camera.width, "height": camera.height,
                   "params": camera.params.tolist()},
        "num_quads": len(scene.quads),
        "textures": scene.texture_names,
        "num_pairs": len(pairs),
        "pairs_per_overlap_bin": hist,
        "depth_format": "float32 .npy, z-depth in metres at pixel centres, 0 = no surface",
        "timings": {k: round(v, 3) for k, v in timings.items()},
    }
    (out / "scene.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
    logger.info("%s: %d views of a %s scene (%d quads) rendered in %.1f s, %d pairs %s",
                out, len(poses), conf.kind, len(scene.quads), timings["render_s"], len(pairs), hist)
    return out
