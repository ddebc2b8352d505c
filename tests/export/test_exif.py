import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageOps

from kft.export.exif import apply_orientation, exif_orientation


def _jpeg(pixels, orientation=None):
    options = {}
    if orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = orientation
        options["exif"] = exif.tobytes()
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=95, **options)
    return buffer.getvalue()


@pytest.mark.parametrize("orientation", range(1, 9))
def test_photos_turn_upright_like_pil_exif_transpose(orientation):
    pixels = np.random.default_rng(orientation).integers(0, 256, (14, 24, 3)).astype("uint8")
    data = _jpeg(pixels, orientation)
    found = exif_orientation(tf.constant(data))
    assert int(found) == orientation
    # The same decoder on both sides, so only the turn can differ.
    decoded = tf.io.decode_jpeg(data).numpy()
    expected = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))
    turned = apply_orientation(tf.constant(decoded), found).numpy()
    assert turned.shape == expected.shape
    reference = np.asarray(ImageOps.exif_transpose(
        _with_orientation(Image.fromarray(decoded), orientation)))
    np.testing.assert_array_equal(turned, reference)


def _with_orientation(image, orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    image.save(buffer, "PNG", exif=exif.tobytes())
    return Image.open(io.BytesIO(buffer.getvalue()))


def test_big_endian_tags_and_files_without_exif():
    # FFD8, an APP1 segment "Exif\0\0" + a Motorola-order TIFF header whose
    # IFD0 holds one entry: Orientation (0x0112), SHORT, 1 value, 6.
    tiff = (b"MM\x00\x2a\x00\x00\x00\x08" + b"\x00\x01"
            + b"\x01\x12\x00\x03\x00\x00\x00\x01\x00\x06\x00\x00" + b"\x00\x00\x00\x00")
    segment = b"Exif\x00\x00" + tiff
    data = b"\xff\xd8\xff\xe1" + (len(segment) + 2).to_bytes(2, "big") + segment + b"\xff\xd9"
    assert int(exif_orientation(tf.constant(data))) == 6
    plain = _jpeg(np.zeros((4, 4, 3), np.uint8))
    assert int(exif_orientation(tf.constant(plain))) == 1
    png = io.BytesIO()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(png, "PNG")
    assert int(exif_orientation(tf.constant(png.getvalue()))) == 1
    assert int(exif_orientation(tf.constant(b""))) == 1
