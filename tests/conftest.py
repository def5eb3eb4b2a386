"""Shared fixtures. Tests generate their own images; real-data tests use ../shared/data
and skip with a clear reason when it is absent (e.g. on a user's machine)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from featloc.synth.textures import random_scene_image

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def require_shared_data(*parts: str) -> Path:
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"needs the shared data set at {path} (absent on this machine)")
    return path


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def scene_image():
    return random_scene_image(np.random.default_rng(1), 240, 320)


def random_homography(rng, width, height, strength=0.1):
    corners = np.array([[0, 0], [width - 1, 0], [width - 1, height - 1], [0, height - 1]], np.float32)
    moved = (corners + rng.uniform(-strength, strength, (4, 2)) * [width, height]).astype(np.float32)
    return cv2.getPerspectiveTransform(corners, moved)


@pytest.fixture(scope="session")
def warped_pair(scene_image):
    """(image0, image1, H_0to1) with a moderate perspective change."""
    h, w = scene_image.shape[:2]
    H = random_homography(np.random.default_rng(2), w, h, 0.08)
    image1 = cv2.warpPerspective(scene_image, H, (w, h), flags=cv2.INTER_LINEAR)
    return scene_image, image1, H


@pytest.fixture
def image_folder(tmp_path, scene_image):
    """A folder with 3 generated images, one in a subfolder."""
    from featloc.io.images import write_image

    root = tmp_path / "images"
    rng = np.random.default_rng(3)
    write_image(root / "a.png", scene_image)
    write_image(root / "b.jpg", random_scene_image(rng, 200, 260))
    write_image(root / "sub" / "c.png", random_scene_image(rng, 180, 240))
    return root
