"""Fashion-MNIST, read offline from the Debian package `dataset-fashion-mnist`.

The package ships Zalando's original idx files. They are read from
`/usr/share/datasets/fashion-mnist` when the package is installed, else from
the package fetched into kft's cache with apt-get (no root needed), else
downloaded by `keras.datasets.fashion_mnist` when the network allows.
"""

import functools
import gzip
import pathlib

import numpy as np

from kft.internal import assets
from kft.data import images
from kft.errors import KftError

CLASS_NAMES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
DEBIAN_PACKAGE = "dataset-fashion-mnist"
SYSTEM_DIR = pathlib.Path("/usr/share/datasets/fashion-mnist")
_PACKAGE_DIR = "usr/share/datasets/fashion-mnist"
_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
_IDX_UNSIGNED_BYTE = 0x08


def load_arrays(train_size=None, test_size=None, seed=0):
    """Returns Fashion-MNIST as numpy arrays, optionally a class-balanced subset.

    Args:
        train_size: number of training images (of 60,000), `None` for all.
            A subset has the same number of images of each class (give or
            take one).
        test_size: number of test images (of 10,000), `None` for all.
        seed: seeds which images a subset takes; each split's subset depends
            only on its own size and the seed.

    Returns:
        `(x_train, y_train), (x_test, y_test), class_names`: uint8 images
        `[N, 28, 28]`, int32 labels `[N]` and the 10 class names.

    Example:
    ```python
    (x, y), (x_test, y_test), names = kft.data.datasets.fashion_mnist.load_arrays(
        train_size=2000, test_size=500)
    ```
    """
    (x_train, y_train), (x_test, y_test) = _full_arrays()
    train = _balanced_subset(y_train, train_size, np.random.default_rng([seed, 0]), "train_size")
    test = _balanced_subset(y_test, test_size, np.random.default_rng([seed, 1]), "test_size")
    return (x_train[train], y_train[train]), (x_test[test], y_test[test]), list(CLASS_NAMES)


def image_data(train_size=None, validation_size=None, image_size=None, batch_size=32, seed=0):
    """Fashion-MNIST as `ImageData`: RGB images, validation from the test split.

    Args:
        train_size: number of training images (class-balanced), `None` for all.
        validation_size: number of test-split images used for validation,
            `None` for all.
        image_size: `(height, width)` or one side to resize to; `None` keeps
            28x28.
        batch_size: images per batch.
        seed: seeds the subsets and the shuffling.

    Returns:
        A `kft.data.images.ImageData`.

    Example:
    ```python
    data = kft.data.datasets.fashion_mnist.image_data(3000, 1000, image_size=96)
    ```
    """
    (x_train, y_train), (x_test, y_test), class_names = load_arrays(
        train_size, validation_size, seed
    )
    return images.from_arrays(
        x_train,
        y_train,
        image_size=image_size,
        batch_size=batch_size,
        seed=seed,
        class_names=class_names,
        validation=(x_test, y_test),
    )


def read_idx(path):
    """Reads a (gzipped) idx file of unsigned bytes, the MNIST file format.

    Args:
        path: the `.gz` file.

    Returns:
        A uint8 array of the file's shape.
    """
    with gzip.open(path, "rb") as file:
        data = file.read()
    # Header: two zero bytes, the element type, the number of dimensions,
    # then each dimension as a big-endian uint32.
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] != _IDX_UNSIGNED_BYTE:
        raise KftError(f"{path} is not an idx file of unsigned bytes.")
    rank = data[3]
    shape = tuple(int(side) for side in np.frombuffer(data, ">u4", count=rank, offset=4))
    values = np.frombuffer(data, np.uint8, offset=4 + 4 * rank)
    if values.size != int(np.prod(shape)):
        raise KftError(
            f"{path} is damaged: its header says {shape} but it holds {values.size} values."
        )
    return values.reshape(shape)


@functools.lru_cache(maxsize=1)
def _full_arrays():
    if SYSTEM_DIR.is_dir():
        return _idx_arrays(SYSTEM_DIR)
    try:
        unpacked = assets.debian_package(DEBIAN_PACKAGE)
    except KftError as debian_error:  # No apt-get here, or no Debian mirror.
        return _keras_arrays(debian_error)
    return _idx_arrays(unpacked / _PACKAGE_DIR)


def _idx_arrays(folder):
    return tuple(
        (read_idx(folder / image_file), read_idx(folder / label_file).astype(np.int32))
        for image_file, label_file in (_FILES["train"], _FILES["test"])
    )


def _keras_arrays(debian_error):
    import keras

    try:
        (x_train, y_train), (x_test, y_test) = keras.datasets.fashion_mnist.load_data()
    except Exception as error:  # keras raises a bare Exception on URL failure.
        raise KftError(
            f"Fashion-MNIST is not available: the Debian package {DEBIAN_PACKAGE} could "
            f"not be fetched ({debian_error}) and the keras.datasets download failed "
            f"({str(error)[:200]}). Install it with `apt-get install {DEBIAN_PACKAGE}`."
        ) from error
    return (x_train, y_train.astype(np.int32)), (x_test, y_test.astype(np.int32))


def _balanced_subset(labels, size, rng, what):
    """Indices of `size` examples, as many of each class as possible, in file order."""
    if size is None:
        return np.arange(len(labels))
    if not isinstance(size, (int, np.integer)) or not 0 < size <= len(labels):
        raise KftError(f"{what} must be an integer from 1 to {len(labels)}, got {size!r}.")
    classes = np.unique(labels)
    quota = np.full(len(classes), size // len(classes))
    quota[rng.permutation(len(classes))[: size % len(classes)]] += 1
    chosen = []
    for label, count in zip(classes, quota):
        members = np.flatnonzero(labels == label)
        if count > len(members):
            raise KftError(
                f"{what}={size} needs {count} images of class {label}; there are {len(members)}."
            )
        chosen.append(rng.choice(members, count, replace=False))
    return np.sort(np.concatenate(chosen))
