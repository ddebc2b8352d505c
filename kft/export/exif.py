"""EXIF orientation of JPEG photos, read and applied with TensorFlow ops only.

Phone cameras store pixels as the sensor saw them and record how to turn
them in the EXIF `Orientation` tag; `kft.data.images` applies it (PIL's
`exif_transpose`), so a served photo must be turned the same way or the
model sees it sideways. `tf.io.decode_image` ignores EXIF, and the serving
graph may hold TensorFlow ops only, so the tag is parsed here from the raw
bytes: the `Exif\\0\\0` APP1 segment, its TIFF header (byte order, offset of
IFD0) and the IFD0 entry 0x0112.
"""

import tensorflow as tf

ORIENTATION_TAG = 0x0112
# The APP1 segment sits in a JPEG's first 64 KiB (a segment's length is 16 bits).
_SEARCHED = 65536
_EXIF = (0x45, 0x78, 0x69, 0x66, 0, 0)  # b"Exif\0\0"


def exif_orientation(data):
    """The EXIF orientation (1..8) of one encoded image; 1 when it has none.

    Args:
        data: a scalar `tf.string` holding the file's bytes.

    Returns:
        A scalar int32 tensor; values outside 1..8 (a damaged tag) give 1.
    """
    head = tf.io.decode_raw(tf.strings.substr(data, 0, _SEARCHED, unit="BYTE"), tf.uint8)
    raw = tf.cast(head, tf.int32)
    size = tf.size(raw)
    # Zeros past the end: reads near it stay in range, and give no tag.
    padded = tf.concat([raw, tf.zeros([16], tf.int32)], axis=0)
    width = len(_EXIF)
    windows = tf.range(tf.maximum(size - width + 1, 0))
    matches = tf.ones_like(windows, tf.bool)
    for offset, value in enumerate(_EXIF):
        matches &= tf.gather(padded, windows + offset) == value
    found = tf.where(matches)[:, 0]
    is_jpeg = tf.logical_and(size > 2, tf.reduce_all(padded[:2] == [0xFF, 0xD8]))

    def parse():
        tiff = tf.cast(found[0], tf.int32) + width
        little = tf.equal(padded[tiff], 0x49)  # "II": Intel byte order

        def read(position, length):
            position = tf.clip_by_value(position, 0, size + 15 - length)
            values = [tf.gather(padded, position + i) for i in range(length)]
            if length == 2:
                little_value = values[0] + 256 * values[1]
                big_value = 256 * values[0] + values[1]
            else:
                little_value = values[0] + 256 * (values[1] + 256 * (values[2] + 256 * values[3]))
                big_value = values[3] + 256 * (values[2] + 256 * (values[1] + 256 * values[0]))
            return tf.where(little, little_value, big_value)

        directory = tiff + read(tiff + 4, 4)
        count = tf.clip_by_value(read(directory, 2), 0, 512)
        entries = directory + 2 + 12 * tf.range(count)
        tags = tf.map_fn(lambda at: read(at, 2), entries,
                         fn_output_signature=tf.TensorSpec([], tf.int32))
        hits = tf.where(tf.equal(tags, ORIENTATION_TAG))[:, 0]
        value = tf.cond(tf.size(hits) > 0,
                        lambda: read(tf.gather(entries, hits[0]) + 8, 2),
                        lambda: tf.constant(1, tf.int32))
        return tf.where((value >= 1) & (value <= 8), value, 1)

    return tf.cond(is_jpeg & (tf.size(found) > 0), parse, lambda: tf.constant(1, tf.int32))


def apply_orientation(image, orientation):
    """Turns a decoded `[H, W, C]` image upright, as PIL's `exif_transpose` does.

    Args:
        image: the decoded image.
        orientation: its EXIF orientation, 1..8 (`exif_orientation`).

    Returns:
        The image as it should be seen (height and width swap for 5..8).
    """
    branches = [
        lambda: image,                                                   # 1: upright
        lambda: tf.image.flip_left_right(image),                         # 2: mirrored
        lambda: tf.image.rot90(image, 2),                                # 3: upside down
        lambda: tf.image.flip_up_down(image),                            # 4
        lambda: tf.image.transpose(image),                               # 5
        lambda: tf.image.rot90(image, 3),                                # 6: turned left
        lambda: tf.image.rot90(tf.image.transpose(image), 2),            # 7
        lambda: tf.image.rot90(image, 1),                                # 8: turned right
    ]
    return tf.switch_case(tf.clip_by_value(orientation, 1, 8) - 1, branches)
