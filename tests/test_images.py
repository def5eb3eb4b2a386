import io
import logging

import numpy as np
import pytest
from PIL import Image

from featloc.io.images import (
    ImageReadError,
    list_images,
    read_image,
    resize_image,
    scale_keypoints,
    to_uint8,
)


def test_list_images_filters_and_recurses(tmp_path):
    for name in ["b.jpg", "a.PNG", "sub/c.tiff", "sub/deep/d.webp", "H_1_2", "notes.txt",
                 ".hidden.jpg", ".git/e.jpg"]:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    assert list_images(tmp_path) == ["a.PNG", "b.jpg", "sub/c.tiff", "sub/deep/d.webp"]
    with pytest.raises(FileNotFoundError):
        list_images(tmp_path / "missing")


def _save(path, array, **kwargs):
    Image.fromarray(array).save(path, **kwargs)
    return path


def test_read_color_gray_16bit_rgba(tmp_path, scene_image):
    rgb = read_image(_save(tmp_path / "a.png", scene_image))
    assert rgb.dtype == np.uint8 and rgb.shape == scene_image.shape
    assert np.array_equal(rgb, scene_image)
    gray = read_image(tmp_path / "a.png", grayscale=True)
    assert gray.shape == scene_image.shape[:2]
    sixteen = (scene_image[..., 0].astype(np.uint16) * 257)
    img16 = read_image(_save(tmp_path / "b.png", sixteen), grayscale=True)
    assert np.array_equal(img16, scene_image[..., 0])
    rgba = np.dstack([scene_image, np.full(scene_image.shape[:2], 7, np.uint8)])
    assert np.array_equal(read_image(_save(tmp_path / "c.png", rgba)), scene_image)


def test_exif_orientation_is_applied(tmp_path):
    array = np.zeros((20, 40, 3), np.uint8)
    array[:, :10] = 255  # white band on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = tmp_path / "rot.jpg"
    Image.fromarray(array).save(path, exif=exif, quality=95)
    shown = read_image(path)
    assert shown.shape[:2] == (40, 20)  # displayed upright: tall
    assert shown[:10].mean() > 200 and shown[-10:].mean() < 50  # band now on top


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "empty file"),
        (b"this is not an image at all", "not an image file"),
    ],
)
def test_bad_files_give_one_line_errors(tmp_path, content, message):
    path = tmp_path / "bad.jpg"
    path.write_bytes(content)
    with pytest.raises(ImageReadError, match=message) as info:
        read_image(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_truncated_tiny_missing(tmp_path, scene_image):
    buffer = io.BytesIO()
    Image.fromarray(scene_image).save(buffer, format="JPEG")
    path = tmp_path / "truncated.jpg"
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(ImageReadError, match="cannot decode"):
        read_image(path)
    with pytest.raises(ImageReadError, match="too small"):
        read_image(_save(tmp_path / "tiny.png", np.zeros((4, 4), np.uint8)))
    with pytest.raises(ImageReadError, match="no such file"):
        read_image(tmp_path / "missing.png")


def test_mismatched_extension_warns_and_reads(tmp_path, scene_image, caplog):
    path = _save(tmp_path / "actually_png.jpg", scene_image, format="PNG")
    with caplog.at_level(logging.WARNING):
        image = read_image(path)
    assert np.array_equal(image, scene_image)
    assert "content is PNG" in caplog.text and "actually_png.jpg" in caplog.text


def test_resize_and_keypoint_mapping():
    image = np.zeros((300, 400), np.uint8)
    resized, scale = resize_image(image, 200)
    assert resized.shape == (150, 200) and scale == (0.5, 0.5)
    # the centre of resized pixel (0, 0) covers original pixels 0..1: centre at 0.5
    assert np.allclose(scale_keypoints(np.array([[0.0, 0.0]]), scale), [[0.5, 0.5]])
    assert resize_image(image, 1000)[1] == (1.0, 1.0)  # never upsampled by default


def test_to_uint8_conversions():
    assert to_uint8(np.ones((3, 3), np.float32)).max() == 255
    assert to_uint8(np.zeros((3, 3, 4), np.uint8)).shape == (3, 3, 3)
    with pytest.raises(ValueError):
        to_uint8(np.zeros((3, 3, 2), np.uint8))
