"""kft.data.images: folders, arrays and TFDS as seeded, in-memory tf.data pipelines."""

import time

import numpy as np
import pytest
from PIL import Image

from kft.data import images
from kft.errors import KftError
from tests.helpers.tiny_models import tiny_image_model

# Each class has its own colour channel, so a batch shows whether its labels
# still belong to its images.
CHANNEL = {"blue": 2, "green": 1, "red": 0}
FORMATS = [("png", "PNG"), ("jpg", "JPEG"), ("bmp", "BMP"), ("gif", "GIF"),
           ("PNG", "PNG"), ("JPEG", "JPEG")]


def coloured(channel, size=(40, 50), seed=0):
    pixels = np.random.default_rng(seed).integers(0, 40, (*size, 3)).astype(np.uint8)
    pixels[..., channel] = 200
    return pixels


def write_folder(root, per_class=6, size=(40, 50)):
    """Writes a class folder per colour in every format, plus broken and stray files."""
    for name, channel in CHANNEL.items():
        (root / name).mkdir(parents=True)
        for index in range(per_class):
            extension, kind = FORMATS[index % len(FORMATS)]
            Image.fromarray(coloured(channel, size, seed=index)).save(
                root / name / f"{index}.{extension}", kind)
    (root / "red" / "corrupt.jpg").write_bytes(b"not an image at all")
    whole = (root / "green" / "1.jpg").read_bytes()
    (root / "green" / "truncated.jpg").write_bytes(whole[: len(whole) // 2])
    (root / "blue" / "notes.txt").write_text("not an image, not counted")
    (root / "blue" / ".hidden.png").write_bytes(b"editor junk, not counted")
    return root


def epoch(dataset):
    pairs = [(x.numpy(), y.numpy()) for x, y in dataset]
    return np.concatenate([x for x, _ in pairs]), np.concatenate([y for _, y in pairs])


def test_folder_reads_every_format_and_skips_unreadable_files(tmp_path):
    root = write_folder(tmp_path / "photos")

    data = images.from_folder(root, image_size=32, batch_size=4, validation_split=1 / 3)

    assert data.class_names == ["blue", "green", "red"]
    assert sorted(data.skipped) == [str(root / "green" / "truncated.jpg"),
                                    str(root / "red" / "corrupt.jpg")]
    assert (data.num_train, data.num_validation) == (12, 6)  # Of 3 x 6 readable images.
    assert data.image_size == (32, 32) and data.batch_size == 4
    assert int(data.train.cardinality()) == 3  # Known, so fit and the runner can count steps.
    for dataset, count in ((data.train, 12), (data.validation, 6)):
        x, y = epoch(dataset)
        assert x.dtype == np.uint8 and x.shape == (count, 32, 32, 3)
        assert y.dtype == np.int32
        dominant = x.reshape(count, -1, 3).mean(axis=1).argmax(axis=1)
        expected = [CHANNEL[data.class_names[label]] for label in y]
        np.testing.assert_array_equal(dominant, expected)


def test_folder_converts_every_image_mode_to_rgb(tmp_path):
    root = tmp_path / "modes"
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (16, 16, 3)).astype(np.uint8)
    grey = rng.integers(0, 256, (16, 16)).astype(np.uint8)
    palette = np.array([[255, 0, 0], [0, 128, 255], [10, 200, 30]], np.uint8)
    blocks = palette[np.arange(16 * 16).reshape(16, 16) % 3]
    expected = {}

    def save(name, image, file_name, **options):
        (root / name).mkdir(parents=True)
        image.save(root / name / file_name, **options)

    save("grey", Image.fromarray(grey, "L"), "a.png")
    expected["grey"] = np.repeat(grey[..., None], 3, axis=-1)
    save("grey16", Image.fromarray(grey.astype(np.uint16) * 257), "a.png")
    expected["grey16"] = expected["grey"]
    rgba = np.concatenate([rgb, rng.integers(0, 256, (16, 16, 1)).astype(np.uint8)], -1)
    save("rgba", Image.fromarray(rgba, "RGBA"), "a.png")
    expected["rgba"] = rgb
    # TF's own BMP decoder reads palette indices as grey levels.
    save("palette_bmp", Image.fromarray(blocks).quantize(3), "a.bmp")
    expected["palette_bmp"] = blocks
    frames = [Image.fromarray(blocks), Image.fromarray(255 - blocks)]
    save("gif", frames[0], "a.gif", save_all=True, append_images=frames[1:])
    expected["gif"] = blocks  # The first frame.
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: shown rotated 90 degrees clockwise.
    save("exif", Image.fromarray(rgb), "a.png", exif=exif)
    expected["exif"] = np.rot90(rgb, k=-1)

    data = images.from_folder(root, image_size=16, batch_size=8, validation_split=0)

    assert data.validation is None and data.num_validation == 0 and not data.skipped
    x, y = epoch(data.train)
    for image, label in zip(x, y):
        name = data.class_names[label]
        np.testing.assert_array_equal(image, expected[name], err_msg=name)


def test_folder_resizes_to_image_size(tmp_path):
    root = tmp_path / "sizes"
    colours = {"wide": (0, 100, 250), "tall": (40, 100, 250)}
    for name, size in (("wide", (30, 90)), ("tall", (120, 20))):
        (root / name).mkdir(parents=True)
        solid = np.full((*size, 3), colours[name], np.uint8)
        Image.fromarray(solid).save(root / name / "a.png")
        Image.fromarray(solid).save(root / name / "b.jpg", quality=100)

    data = images.from_folder(root, image_size=(24, 36), validation_split=0)

    x, y = epoch(data.train)
    assert x.shape == (4, 24, 36, 3)
    for image, label in zip(x, y):
        colour = colours[data.class_names[label]]
        np.testing.assert_allclose(image.reshape(-1, 3), np.broadcast_to(colour, (24 * 36, 3)),
                                   atol=2)


def test_split_is_seeded_stratified_and_complete(tmp_path):
    root = write_folder(tmp_path / "photos", per_class=10)

    first = images.from_folder(root, 16, batch_size=5, validation_split=0.3, seed=7)
    again = images.from_folder(root, 16, batch_size=5, validation_split=0.3, seed=7)
    other = images.from_folder(root, 16, batch_size=5, validation_split=0.3, seed=8)

    valid_x, valid_y = epoch(first.validation)
    np.testing.assert_array_equal(valid_x, epoch(again.validation)[0])
    assert not np.array_equal(valid_x, epoch(other.validation)[0])
    assert np.bincount(valid_y).tolist() == [3, 3, 3]  # 30% of each class's 10.
    train_x, _ = epoch(first.train)
    seen = {bytes(image) for image in np.concatenate([train_x, valid_x])}
    assert len(seen) == 30  # Every readable image is in exactly one split.


def test_training_order_is_reshuffled_each_epoch_from_the_seed(tmp_path):
    root = write_folder(tmp_path / "photos", per_class=10)
    data = images.from_folder(root, 16, batch_size=4, validation_split=0.1, seed=3)
    same_seed = images.from_folder(root, 16, batch_size=4, validation_split=0.1, seed=3)

    first, second = epoch(data.train)[0], epoch(data.train)[0]

    assert not np.array_equal(first, second)
    assert sorted(map(bytes, first)) == sorted(map(bytes, second))
    np.testing.assert_array_equal(first, epoch(same_seed.train)[0])


def test_folder_data_trains_a_model(tmp_path):
    root = write_folder(tmp_path / "photos", per_class=4)
    data = images.from_folder(root, 16, batch_size=4)
    model = tiny_image_model(num_classes=len(data.class_names), image_size=16)
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])

    history = model.fit(data.train, validation_data=data.validation, epochs=2, verbose=0)

    assert len(history.history["val_accuracy"]) == 2


def test_folder_errors_name_the_folder_and_the_fix(tmp_path):
    with pytest.raises(KftError, match=r"missing.* does not exist"):
        images.from_folder(tmp_path / "missing", 32)

    (tmp_path / "empty").mkdir()
    with pytest.raises(KftError, match=r"empty has no class subfolders with images"):
        images.from_folder(tmp_path / "empty", 32)

    loose = tmp_path / "loose"
    loose.mkdir()
    Image.fromarray(coloured(0)).save(loose / "a.png")
    with pytest.raises(KftError, match=r"must go in a subfolder per class"):
        images.from_folder(loose, 32)

    single = tmp_path / "single"
    (single / "cat").mkdir(parents=True)
    Image.fromarray(coloured(0)).save(single / "cat" / "a.png")
    with pytest.raises(KftError, match=r"single has only one class \(cat\)"):
        images.from_folder(single, 32)

    (single / "dog").mkdir()
    (single / "dog" / "readme.txt").write_text("no images")
    with pytest.raises(KftError, match=r"single: class folder\(s\) dog hold no images"):
        images.from_folder(single, 32)

    (single / "dog" / "broken.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(KftError, match=r"single: no readable image in class folder\(s\) dog "
                                       r"\(1 file\(s\) could not be read\)"):
        images.from_folder(single, 32)

    (single / "dog" / "fine.png").write_bytes((single / "cat" / "a.png").read_bytes())
    with pytest.raises(KftError, match=r"validation_split must be in \[0, 1\)"):
        images.from_folder(single, 32, validation_split=1.0)
    with pytest.raises(KftError, match=r"holds out no image"):
        images.from_folder(single, 32, validation_split=0.2)  # One image per class.
    with pytest.raises(KftError, match=r"image_size must be"):
        images.from_folder(single, "big")


def test_checking_a_folder_is_fast(tmp_path):
    root = tmp_path / "photos"
    photo = np.random.default_rng(0).integers(0, 256, (375, 500, 3)).astype(np.uint8)
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        for index in range(60):
            Image.fromarray(np.roll(photo, index, axis=1)).save(root / name / f"{index}.jpg")

    began = time.perf_counter()
    data = images.from_folder(root, 64)
    seconds = time.perf_counter() - began

    assert data.num_train + data.num_validation == 120
    assert seconds < 10, f"reading 120 photos took {seconds:.1f} s"


def test_arrays_become_rgb_uint8_batches():
    grey = np.random.default_rng(0).integers(0, 256, (12, 8, 8)).astype(np.uint8)
    labels = np.arange(12) % 3

    data = images.from_arrays(grey, labels, batch_size=5, validation_split=0.25)

    assert data.class_names == ["0", "1", "2"] and data.image_size == (8, 8)
    assert (data.num_train, data.num_validation) == (9, 3)
    x, y = epoch(data.train)
    assert x.dtype == np.uint8 and x.shape == (9, 8, 8, 3)
    for image, label in zip(x, y):
        match = [i for i in range(12) if np.array_equal(grey[i], image[..., 0])]
        assert len(match) == 1 and labels[match[0]] == label
        np.testing.assert_array_equal(image[..., 0], image[..., 2])


def test_arrays_resize_and_take_explicit_validation():
    train = np.full((6, 10, 10, 4), 200.0)  # Floats in 0..255, with an alpha channel.
    valid = np.full((4, 20, 20, 1), 50, np.int64)

    data = images.from_arrays(train, [0, 1, 0, 1, 0, 1], image_size=(16, 12),
                              class_names=["no", "yes"], validation=(valid, [1, 0, 1, 0]))

    assert (data.num_train, data.num_validation) == (6, 4)
    assert data.class_names == ["no", "yes"]
    train_x, _ = epoch(data.train)
    valid_x, valid_y = epoch(data.validation)
    assert train_x.shape == (6, 16, 12, 3) and valid_x.shape == (4, 16, 12, 3)
    assert (train_x == 200).all() and (valid_x == 50).all()
    np.testing.assert_array_equal(valid_y, [1, 0, 1, 0])  # Validation keeps its order.


def test_array_errors_say_what_is_wrong():
    x = np.zeros((4, 8, 8, 3), np.uint8)
    with pytest.raises(KftError, match=r"labels must be \[N\] class indices, one per image \(4\)"):
        images.from_arrays(x, [0, 1, 0])
    with pytest.raises(KftError, match=r"look scaled to 0\.\.1.*multiply by 255"):
        images.from_arrays(x.astype("float32") + 0.5, [0, 1, 0, 1])
    with pytest.raises(KftError, match=r"pixel values in 0\.\.255, got -1"):
        images.from_arrays(x.astype("int32") - 1, [0, 1, 0, 1])
    with pytest.raises(KftError, match=r"Label 2 has no class name"):
        images.from_arrays(x, [0, 1, 2, 0], class_names=["a", "b"])
    with pytest.raises(KftError, match=r"only class 'a'.*at least two classes"):
        images.from_arrays(x, [0, 0, 0, 0], class_names=["a", "b"])
    with pytest.raises(KftError,
                       match=r"\[N, H, W, 1\|3\|4\] pixel arrays, got shape \(4, 8, 8, 2"):
        images.from_arrays(np.zeros((4, 8, 8, 2)), [0, 1, 0, 1])
    with pytest.raises(KftError, match=r"pass image_size to resize both"):
        images.from_arrays(x, [0, 1, 0, 1], validation=(np.zeros((2, 9, 9, 3)), [0, 1]))


def test_tfds_dataset_is_resized_and_split(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    # TFDS's own test double: examples generated from the dataset's real
    # feature spec (cats_vs_dogs: images of random sizes, labels cat/dog).
    with tfds.testing.mock_data(num_examples=20):
        data = images.from_tfds("cats_vs_dogs", 24, batch_size=8, seed=1, data_dir=tmp_path)
        digits = images.load("tfds:mnist", 12, validation_split=0.5)

    assert data.class_names == ["cat", "dog"]
    assert data.num_train + data.num_validation == 20
    x, y = epoch(data.train)
    assert x.shape == (data.num_train, 24, 24, 3) and x.dtype == np.uint8
    assert set(y) <= {0, 1}
    assert digits.class_names == [str(digit) for digit in range(10)]
    x, _ = epoch(digits.train)
    assert x.shape[1:] == (12, 12, 3)  # Grey digits come out RGB.
    np.testing.assert_array_equal(x[..., 0], x[..., 1])


def test_tfds_download_failure_says_to_pass_a_folder(tmp_path, monkeypatch):
    pytest.importorskip("tensorflow_datasets")
    from tensorflow_datasets.core.download import downloader

    # A real download attempt (there is no network here); without TFDS's ten
    # retries with backoff it fails in a second instead of minutes.
    monkeypatch.setattr(downloader, "MAX_RETRIES", 0)
    began = time.perf_counter()
    with pytest.raises(KftError, match=r"Could not download TFDS dataset 'cats_vs_dogs'.*"
                                       r"pass a local image folder with --data DIR"):
        images.from_tfds("cats_vs_dogs", 32, data_dir=tmp_path)
    assert time.perf_counter() - began < 60


def test_unknown_tfds_name_is_a_clear_error(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    with pytest.raises(KftError, match=r"no TFDS dataset named 'no_such_dataset'.*--data DIR"):
        images.from_tfds("no_such_dataset", 32, data_dir=tmp_path)


def test_load_dispatches_on_the_source(tmp_path):
    root = write_folder(tmp_path / "photos", per_class=3)
    from_path = images.load(str(root), 16, batch_size=2, validation_split=0)
    assert from_path.class_names == ["blue", "green", "red"] and from_path.num_train == 9
    assert images.load(root, 16, validation_split=0).num_train == 9  # A PathLike too.

    x = np.zeros((6, 8, 8, 3), np.uint8)
    from_pair = images.load((x, [0, 1, 2, 0, 1, 2]), 8, validation_split=0)
    assert from_pair.num_train == 6 and from_pair.class_names == ["0", "1", "2"]

    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=6):
        assert images.load("mnist", 8, validation_split=0).num_train == 6

    accepted = r"pass an image folder \(a subfolder of images per class\), 'tfds:NAME'"
    with pytest.raises(KftError, match=r"'no/such/folder' does not exist and is not a TFDS.*"
                                       + accepted):
        images.load("no/such/folder", 16)
    (tmp_path / "file.zip").write_bytes(b"zip")
    with pytest.raises(KftError, match=r"is a file, not a folder"):
        images.load(str(tmp_path / "file.zip"), 16)
    with pytest.raises(KftError, match=r"Cannot read image data from a int; " + accepted):
        images.load(42, 16)
