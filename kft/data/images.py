"""Image classification data from folders, arrays and TFDS, as tf.data pipelines.

Every source ends the same way: uint8 RGB images of one size, decoded and
resized once and held in memory, a seeded train/validation split, and batches
of `(uint8 [B, H, W, 3], int32 [B])`. Decoding everything up front is also the
readability check: a corrupt file is found and left out before training,
never halfway through an epoch.
"""

import concurrent.futures
import dataclasses
import os
import pathlib
import warnings

import numpy as np
import tensorflow as tf
from PIL import Image, ImageOps

from kft.data import tfds_source
from kft.data.data import Data
from kft.data.splits import stratified_holdout
from kft.errors import KftError

EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")

_ACCEPTED = (
    "an image folder (a subfolder of images per class), 'tfds:NAME' or a TFDS "
    "dataset name, or an (images, labels) pair of arrays"
)
# Images converted per step when resizing arrays: bounds the float32 copy.
_CHUNK = 256


@dataclasses.dataclass(kw_only=True)
class ImageData(Data):
    """Image classification data, ready for `model.fit` (a `kft.data.Data`).

    `train` holds batches of `(uint8 [B, H, W, 3], int32 [B])`, reshuffled
    every epoch from the seed, held in memory and prefetched; `validation`
    the same in a fixed order; `skipped` the files that could not be read.

    Attributes:
        image_size: `(height, width)` of every image.
    """

    image_size: tuple[int, int]
    task: str = "image_classification"


def from_folder(path, image_size, batch_size=32, validation_split=0.2, seed=0, validation=None):
    """Reads a folder with a subfolder of images per class.

    Class names are the sorted subfolder names; images are found in each
    subfolder and below it by extension (jpg, jpeg, png, bmp, gif, any case).
    Every image is decoded and resized before training (in threads); files
    that cannot be read are left out and listed in `skipped`. Grayscale,
    palette and RGBA images become RGB, a GIF gives its first frame, and the
    EXIF orientation of photos is applied.

    Args:
        path: the folder.
        image_size: `(height, width)` or one side of square images.
        batch_size: images per batch.
        validation_split: fraction of each class held out for validation
            (0 for none); ignored when `validation` is given.
        seed: seeds the split and the shuffling; the same seed gives the
            same split.
        validation: optional folder of validation images laid out the same
            way (the same class subfolders), instead of a split.

    Returns:
        An `ImageData`.

    Raises:
        KftError: a folder is missing or empty, has fewer than two classes,
            a class has no readable image, or the validation folder's
            classes differ.

    Example:
    ```python
    data = kft.data.images.from_folder("pets/", image_size=160)
    data.class_names  # ['cat', 'dog']
    ```
    """
    image_size = _image_size(image_size)
    _check_options(batch_size, validation_split)
    folder = pathlib.Path(path).expanduser()
    class_names, files = _class_files(folder)
    held_out = np.zeros(len(files), bool)
    if validation is not None:
        valid_folder = pathlib.Path(validation).expanduser()
        valid_names, valid_files = _class_files(valid_folder)
        if valid_names != class_names:
            raise KftError(
                f"Validation folder {valid_folder} has classes {valid_names}, but {folder} "
                f"has {class_names}: give both the same class subfolders."
            )
        held_out = np.concatenate([held_out, np.ones(len(valid_files), bool)])
        files = files + valid_files
    paths = [str(file) for file, _ in files]
    labels = np.array([label for _, label in files], np.int32)

    images, readable = read_images(paths, image_size)
    skipped = [file for file, ok in zip(paths, readable) if not ok]
    if skipped:
        images, labels, held_out = images[readable], labels[readable], held_out[readable]
    counts = np.bincount(labels, minlength=len(class_names))
    unreadable = [name for name, count in zip(class_names, counts) if count == 0]
    if unreadable:
        raise KftError(
            f"In {folder}: no readable image in class folder(s) "
            f"{', '.join(unreadable)} ({len(skipped)} file(s) could not be read). "
            "Add valid images there or remove the folder."
        )
    split = None
    if validation is not None:
        split = (np.flatnonzero(~held_out), np.flatnonzero(held_out))
    return _image_data(
        images, labels, class_names, batch_size, validation_split, seed, skipped, split=split
    )


def from_arrays(
    images,
    labels,
    image_size=None,
    batch_size=32,
    validation_split=0.2,
    seed=0,
    class_names=None,
    validation=None,
):
    """Wraps images and integer labels held in numpy arrays.

    Args:
        images: `[N, H, W]`, `[N, H, W, 1]`, `[N, H, W, 3]` or `[N, H, W, 4]`
            pixel values in 0..255 (uint8 or any number type). Grayscale
            becomes RGB; an alpha channel is dropped.
        labels: `[N]` integer class indices.
        image_size: `(height, width)` or one side to resize to; `None` keeps
            the arrays' size.
        batch_size: images per batch.
        validation_split: fraction of each class held out for validation
            (0 for none); ignored when `validation` is given.
        seed: seeds the split and the shuffling.
        class_names: names of the classes; defaults to `"0"`, `"1"`, ...
        validation: optional `(images, labels)` used as validation data
            instead of a split of the training arrays.

    Returns:
        An `ImageData`.

    Example:
    ```python
    (x, y), _ = keras.datasets.cifar10.load_data()
    data = kft.data.images.from_arrays(x, y[:, 0], image_size=96)
    ```
    """
    _check_options(batch_size, validation_split)
    images = _pixel_array(images, "images")
    labels = _label_array(labels, len(images), "labels")
    size = _image_size(image_size) if image_size is not None else images.shape[1:3]
    arrays = [(images, labels)]
    if validation is not None:
        if not isinstance(validation, (tuple, list)) or len(validation) != 2:
            raise KftError("validation must be an (images, labels) pair of arrays.")
        valid_images = _pixel_array(validation[0], "validation images")
        valid_labels = _label_array(validation[1], len(valid_images), "validation labels")
        if image_size is None and valid_images.shape[1:3] != images.shape[1:3]:
            raise KftError(
                f"Training images are {images.shape[1:3]} but validation images are "
                f"{valid_images.shape[1:3]}; pass image_size to resize both."
            )
        arrays.append((valid_images, valid_labels))

    all_labels = np.concatenate([pair[1] for pair in arrays])
    class_names = _class_names(class_names, all_labels)
    if len(np.unique(labels)) < 2:
        raise KftError(
            f"The training labels hold only class {class_names[labels[0]]!r}; "
            "a classifier needs at least two classes."
        )
    fitted = [_fit_images(array, size) for array, _ in arrays]
    if validation is None:
        return _image_data(fitted[0], labels, class_names, batch_size, validation_split, seed)
    train = np.arange(len(images))
    held_out = np.arange(len(images), len(all_labels))
    return _image_data(
        np.concatenate(fitted), all_labels, class_names, batch_size, None, seed,
        split=(train, held_out),
    )


def from_tfds(name, image_size, batch_size=32, validation_split=0.2, seed=0, data_dir=None):
    """Loads the train split of a TFDS image classification dataset.

    The dataset is downloaded and prepared on first use (this needs network
    access), then decoded, resized and split like a folder.

    Args:
        name: a TFDS name, e.g. `"cats_vs_dogs"` or `"mnist:3.0.1"`.
        image_size: `(height, width)` or one side of square images.
        batch_size: images per batch.
        validation_split: fraction of each class held out for validation.
        seed: seeds the split and the shuffling.
        data_dir: where TFDS keeps its datasets (TFDS's default if `None`).

    Returns:
        An `ImageData`, with class names from the dataset's label feature.

    Raises:
        KftError: the name is unknown, the download failed, or the dataset
            is not (image, class label) pairs.

    Example:
    ```python
    data = kft.data.images.from_tfds("cats_vs_dogs", image_size=224)
    ```
    """
    image_size = _image_size(image_size)
    _check_options(batch_size, validation_split)
    builder, class_names = tfds_source.prepared_builder(
        name, data_dir, "image",
        "a local image folder with --data DIR (a subfolder of images per class)")
    try:
        dataset = builder.as_dataset(split="train", as_supervised=True)
    except ValueError as error:
        raise KftError(f"TFDS dataset {name!r} has no 'train' split ({error}).") from error

    images, labels = _materialize(dataset, image_size)
    return _image_data(images, labels, class_names, batch_size, validation_split, seed)


def load(source, image_size, batch_size=32, validation_split=0.2, seed=0, validation=None):
    """Loads image classification data from whatever `source` names.

    The arguments every kft loader shares (`batch_size`, `validation_split`,
    `seed`, `validation`) mean the same in `kft.data.text.load` and
    `kft.data.token_labels.load`.

    Args:
        source: an existing image folder (see `from_folder`); `"tfds:NAME"`
            or a TFDS dataset name (see `from_tfds`); or an
            `(images, labels)` pair of arrays (see `from_arrays`).
        image_size: `(height, width)` or one side of square images.
        batch_size: images per batch.
        validation_split: fraction held out for validation.
        seed: seeds the split and the shuffling.
        validation: validation data in the same form as `source` (a folder,
            or an `(images, labels)` pair) instead of a split; TFDS
            datasets split their train split.

    Returns:
        An `ImageData`.

    Raises:
        KftError: `source` is none of the above.

    Example:
    ```python
    data = kft.data.images.load("tfds:cats_vs_dogs", image_size=224)
    data = kft.data.images.load("~/pets", image_size=224)
    ```
    """
    options = dict(
        image_size=image_size,
        batch_size=batch_size,
        validation_split=validation_split,
        seed=seed,
    )
    if isinstance(source, (tuple, list)) and len(source) == 2:
        return from_arrays(source[0], source[1], validation=validation, **options)
    if not isinstance(source, (str, os.PathLike)):
        raise KftError(f"Cannot read image data from a {type(source).__name__}; pass {_ACCEPTED}.")
    text = os.fspath(source)
    if os.path.isdir(os.path.expanduser(text)):
        return from_folder(text, validation=validation, **options)
    name = tfds_source.named(text) or (text if tfds_source.is_registered(text) else None)
    if name is not None:
        if validation is not None:
            raise KftError(
                f"{text}: a TFDS dataset's validation set is a split of its train split; "
                "drop validation= (set validation_split) or use a local folder."
            )
        return from_tfds(name, **options)
    what = "is a file, not a folder" if os.path.exists(text) else "does not exist"
    raise KftError(f"Data {text!r} {what} and is not a TFDS dataset name; pass {_ACCEPTED}.")


def _class_files(folder):
    """Returns the class names and `(path, label)` of every image file."""
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise KftError(f"Image folder {folder} {what}.")
    subfolders = sorted(
        entry for entry in folder.iterdir() if entry.is_dir() and not entry.name.startswith(".")
    )
    per_class = {entry.name: image_files(entry) for entry in subfolders}
    if not any(per_class.values()):
        loose = "" if not image_files(folder) else " Its images must go in a subfolder per class."
        raise KftError(
            f"Image folder {folder} has no class subfolders with images "
            f"({', '.join(EXTENSIONS)}).{loose} Lay it out as {folder}/CLASS_NAME/IMAGE."
        )
    if len(per_class) < 2:
        raise KftError(
            f"Image folder {folder} has only one class ({subfolders[0].name}); "
            "a classifier needs a subfolder of images for each of at least two classes."
        )
    empty = [name for name, files in per_class.items() if not files]
    if empty:
        raise KftError(
            f"In {folder}: class folder(s) {', '.join(empty)} hold no images "
            f"({', '.join(EXTENSIONS)}). Add images there or remove the folder."
        )
    class_names = list(per_class)
    files = [
        (file, label) for label, name in enumerate(class_names) for file in per_class[name]
    ]
    return class_names, files


def image_files(folder):
    """Every image file under `folder`, recursively, in a stable order (hidden ones skipped)."""
    files = []
    for root, dirs, names in os.walk(folder, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        files += [
            pathlib.Path(root) / name
            for name in sorted(names)
            if name.lower().endswith(EXTENSIONS) and not name.startswith(".")
        ]
    return files


def read_images(paths, image_size):
    """Decodes and resizes image files as training does, in threads.

    EXIF orientation is applied, greys and palettes become RGB, and each
    image is resized to `image_size` (bilinear).

    Args:
        paths: image files.
        image_size: `(height, width)`.

    Returns:
        `(images, readable)`: uint8 `[N, height, width, 3]` (zeros where a
        file could not be read) and a boolean mask of the files read.
    """
    images = np.zeros((len(paths), *image_size, 3), np.uint8)
    readable = np.zeros(len(paths), bool)

    def read(index):
        try:
            images[index] = _read_image(paths[index], image_size)
            readable[index] = True
        except Exception:  # Corrupt files make PIL raise many kinds of errors.
            pass

    # PIL releases the GIL while it decodes and resizes, so threads scale.
    pool = concurrent.futures.ThreadPoolExecutor()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PIL warns about odd but readable files.
            list(pool.map(read, range(len(paths))))
    finally:
        pool.shutdown(cancel_futures=True)  # Ctrl-C stops at once, not after every file.
    return images, readable


def _read_image(path, image_size):
    height, width = image_size
    with Image.open(path) as image:
        # JPEG only: decode at a reduced scale no smaller than needed, which
        # makes big photos several times faster to read.
        image.draft("RGB", (max(image_size), max(image_size)))
        image = ImageOps.exif_transpose(image)
        image = _rgb(image)
        if image.size != (width, height):
            image = image.resize((width, height), Image.Resampling.BILINEAR)
        return np.asarray(image)


def _rgb(image):
    if image.mode.startswith("I"):
        # 16-bit greys: PIL's convert("RGB") clips them instead of scaling.
        grey = np.clip(np.asarray(image, np.float64) / 257.0, 0, 255)
        image = Image.fromarray(np.round(grey).astype(np.uint8), "L")
    return image.convert("RGB")


def _materialize(dataset, image_size):
    """Decodes and resizes a TFDS `(image, label)` dataset into numpy arrays."""

    def fit(image, label):
        return _fit_tensor(image[tf.newaxis], image_size)[0], tf.cast(label, tf.int32)

    batches = dataset.map(fit, num_parallel_calls=tf.data.AUTOTUNE).batch(_CHUNK)
    images, labels = [], []
    for image_batch, label_batch in batches.prefetch(2).as_numpy_iterator():
        images.append(image_batch)
        labels.append(label_batch)
    if not images:
        raise KftError("The TFDS dataset's train split is empty.")
    return np.concatenate(images), np.concatenate(labels)


def _fit_images(images, image_size):
    """Makes `[N, H, W, C]` pixel arrays uint8 RGB of `image_size`, in chunks."""
    image_size = tuple(int(side) for side in image_size)
    if images.dtype == np.uint8 and images.ndim == 4 and images.shape[1:] == (*image_size, 3):
        return images
    fitted = np.empty((len(images), *image_size, 3), np.uint8)
    for start in range(0, len(images), _CHUNK):
        chunk = tf.convert_to_tensor(images[start:start + _CHUNK])
        fitted[start:start + _CHUNK] = _fit_tensor(chunk, image_size).numpy()
    return fitted


def _fit_tensor(images, image_size):
    """`[N, H, W]` or `[N, H, W, C]` pixels in 0..255 -> uint8 RGB `[N, *image_size, 3]`."""
    if images.shape.rank == 3:
        images = images[..., tf.newaxis]
    channels = images.shape[-1]
    if channels == 1:
        images = tf.repeat(images, 3, axis=-1)
    elif channels == 4:
        images = images[..., :3]
    if images.dtype == tf.uint8 and images.shape[1:3] == tuple(image_size):
        return images
    images = tf.cast(images, tf.float32)
    if images.shape[1:3] != tuple(image_size):
        images = tf.image.resize(images, image_size, method="bilinear", antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(images), 0, 255), tf.uint8)


def _image_data(
    images, labels, class_names, batch_size, validation_split, seed, skipped=(), split=None
):
    train, held_out = split if split is not None else _split(labels, validation_split, seed)
    # One in-memory copy serves both splits: batches gather from it by index.
    images = tf.convert_to_tensor(images)
    labels = tf.convert_to_tensor(labels, tf.int32)
    return ImageData(
        train=_batches(images, labels, train, batch_size, seed),
        validation=_batches(images, labels, held_out, batch_size) if len(held_out) else None,
        class_names=list(class_names),
        num_train=len(train),
        num_validation=len(held_out),
        skipped=list(skipped),
        image_size=tuple(int(side) for side in images.shape[1:3]),
        batch_size=batch_size,
    )


def _split(labels, validation_split, seed):
    """Holds out `validation_split` of each class (at least one image stays in training)."""
    held_out = stratified_holdout(labels, validation_split, np.random.default_rng(seed))
    if validation_split > 0 and not len(held_out):
        raise KftError(
            f"validation_split={validation_split} of {len(labels)} images holds out no "
            "image; add images, raise it, or set it to 0 for no validation."
        )
    train = np.setdiff1d(np.arange(len(labels)), held_out)
    return train, held_out


def _batches(images, labels, indices, batch_size, seed=None):
    """Batches of `images[indices]`; shuffled every epoch when `seed` is given."""
    dataset = tf.data.Dataset.from_tensor_slices(tf.constant(indices, tf.int64))
    if seed is not None:
        # Shuffling indices, not images, gives a full shuffle at no memory cost.
        dataset = dataset.shuffle(len(indices), seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.batch(batch_size).map(
        lambda batch: (tf.gather(images, batch), tf.gather(labels, batch)),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    return dataset.prefetch(tf.data.AUTOTUNE)


def _pixel_array(images, what):
    images = np.asarray(images)
    if images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[-1] not in (1, 3, 4)):
        raise KftError(
            f"{what} must be [N, H, W] or [N, H, W, 1|3|4] pixel arrays, got shape {images.shape}."
        )
    if not len(images):
        raise KftError(f"{what} is empty.")
    if images.dtype == np.uint8:
        return images
    if not (np.issubdtype(images.dtype, np.integer) or np.issubdtype(images.dtype, np.floating)):
        raise KftError(f"{what} must hold numbers in 0..255, got dtype {images.dtype}.")
    low, high = images.min(), images.max()
    if low < 0 or high > 255:
        raise KftError(f"{what} must hold pixel values in 0..255, got {low}..{high}.")
    if np.issubdtype(images.dtype, np.floating) and 0 < high <= 1:
        raise KftError(
            f"{what} look scaled to 0..1; kft models take raw 0..255 pixel values "
            "(multiply by 255)."
        )
    return images


def _label_array(labels, count, what):
    labels = np.asarray(labels)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1 or len(labels) != count:
        raise KftError(
            f"{what} must be [N] class indices, one per image ({count}), got shape {labels.shape}."
        )
    if not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0:
        raise KftError(f"{what} must be class indices (integers from 0), got {labels.dtype}.")
    return labels.astype(np.int32)


def _class_names(class_names, labels):
    highest = int(labels.max())
    if class_names is None:
        return [str(label) for label in range(highest + 1)]
    class_names = [str(name) for name in class_names]
    if highest >= len(class_names):
        raise KftError(
            f"Label {highest} has no class name: class_names has {len(class_names)} entries."
        )
    return class_names


def _image_size(image_size):
    if isinstance(image_size, (int, np.integer)):
        image_size = (image_size, image_size)
    try:
        height, width = (int(side) for side in image_size)
    except (TypeError, ValueError):
        raise KftError(f"image_size must be a side or (height, width), got {image_size!r}.")
    if height <= 0 or width <= 0:
        raise KftError(f"image_size must be positive, got {image_size!r}.")
    return height, width


def _check_options(batch_size, validation_split):
    if not isinstance(batch_size, (int, np.integer)) or batch_size <= 0:
        raise KftError(f"batch_size must be a positive integer, got {batch_size!r}.")
    if not 0 <= validation_split < 1:
        raise KftError(f"validation_split must be in [0, 1), got {validation_split!r}.")
