"""Decoding an image file: EXIF orientation, every PIL mode to 8-bit RGB, transparency on
white, the centre crop or the whole image squashed."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from harclip.data.decode import decode

SIZE = 16


def _encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def _half_red_half_blue(width=40, height=20) -> Image.Image:
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[:, : width // 2] = (255, 0, 0)
    pixels[:, width // 2:] = (0, 0, 255)
    return Image.fromarray(pixels)


def test_exif_orientation_is_applied():
    image = _half_red_half_blue()
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display": left (red) ends up on top
    array = decode(_encode(image, "JPEG", exif=exif, quality=95), SIZE, fit="squash")
    top, bottom = array[:, 2, SIZE // 2], array[:, -3, SIZE // 2]
    assert top[0] > 200 and top[2] < 60
    assert bottom[2] > 200 and bottom[0] < 60


@pytest.mark.parametrize("mode", ["L", "CMYK", "P", "RGBA", "LA", "I;16", "1"])
def test_every_mode_becomes_rgb_uint8(mode):
    rgb = _half_red_half_blue()
    if mode == "I;16":
        image = Image.fromarray(np.asarray(rgb.convert("L"), np.uint16) * 257)
        assert image.mode == "I;16"
        fmt = "PNG"
    else:
        image, fmt = rgb.convert(mode), ("TIFF" if mode == "CMYK" else "PNG")
    array = decode(_encode(image, fmt), SIZE, fit="squash")
    assert array.shape == (3, SIZE, SIZE) and array.dtype == np.uint8
    if mode == "I;16":  # 16-bit values are scaled down, not clipped to white
        grey = np.asarray(rgb.convert("L"))[0, 0]
        assert abs(int(array[0, 0, 0]) - int(grey)) <= 2


def test_transparent_pixels_become_white():
    image = Image.new("RGBA", (8, 8), (10, 200, 10, 0))
    assert (decode(_encode(image, "PNG"), SIZE) == 255).all()


def test_crop_keeps_the_centre_and_squash_keeps_everything():
    wide = np.zeros((20, 60, 3), np.uint8)
    wide[:, :20] = 255  # a white strip on the left third
    data = _encode(Image.fromarray(wide), "PNG")
    assert decode(data, SIZE, fit="crop").max() < 32  # the strip is cut off (bicubic edge aside)
    assert decode(data, SIZE, fit="squash")[:, :, 0].min() > 200
