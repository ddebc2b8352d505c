"""kft.data.datasets.fashion_mnist: idx files from the Debian package, balanced subsets."""

import gzip

import numpy as np
import pytest

from kft.internal import assets
from kft.data.datasets import fashion_mnist
from kft.errors import KftError


def write_idx(path, array):
    header = bytes([0, 0, 0x08, array.ndim]) + np.array(array.shape, ">u4").tobytes()
    with gzip.open(path, "wb") as file:
        file.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def fresh_cache():
    """Parsed arrays are cached per process; each test here starts from the files."""
    fashion_mnist._full_arrays.cache_clear()
    yield
    fashion_mnist._full_arrays.cache_clear()


@pytest.fixture
def installed(tmp_path, monkeypatch, fresh_cache):
    """A small stand-in for the installed package's folder, 3 of each class."""
    folder = tmp_path / "fashion-mnist"
    folder.mkdir()
    rng = np.random.default_rng(0)
    arrays = {}
    for split, count in (("train", 30), ("t10k", 20)):
        arrays[split] = (rng.integers(0, 256, (count, 28, 28)), np.arange(count) % 10)
        write_idx(folder / f"{split}-images-idx3-ubyte.gz", arrays[split][0])
        write_idx(folder / f"{split}-labels-idx1-ubyte.gz", arrays[split][1])
    monkeypatch.setattr(fashion_mnist, "SYSTEM_DIR", folder)
    return arrays


def test_read_idx_checks_the_header(tmp_path):
    values = np.arange(24).reshape(2, 3, 4)
    write_idx(tmp_path / "good.gz", values)
    np.testing.assert_array_equal(fashion_mnist.read_idx(tmp_path / "good.gz"), values)

    with gzip.open(tmp_path / "floats.gz", "wb") as file:
        file.write(bytes([0, 0, 0x0D, 1]) + np.array([1], ">u4").tobytes() + b"\0" * 4)
    with pytest.raises(KftError, match=r"floats.gz is not an idx file of unsigned bytes"):
        fashion_mnist.read_idx(tmp_path / "floats.gz")

    with gzip.open(tmp_path / "short.gz", "wb") as file:
        file.write(bytes([0, 0, 0x08, 2]) + np.array([5, 5], ">u4").tobytes() + b"\0" * 7)
    with pytest.raises(KftError, match=r"damaged: its header says \(5, 5\) but it holds 7"):
        fashion_mnist.read_idx(tmp_path / "short.gz")


def test_installed_package_is_read_first(installed):
    (x_train, y_train), (x_test, y_test), names = fashion_mnist.load_arrays()

    np.testing.assert_array_equal(x_train, installed["train"][0])
    np.testing.assert_array_equal(y_test, installed["t10k"][1])
    assert x_train.dtype == np.uint8 and y_train.dtype == np.int32
    assert x_test.shape == (20, 28, 28)
    assert names[0] == "T-shirt/top" and names[9] == "Ankle boot"


def test_subsets_are_balanced_seeded_and_independent(installed):
    (x, y), (x_test, y_test), _ = fashion_mnist.load_arrays(train_size=23, test_size=10, seed=4)
    (x_again, _), _, _ = fashion_mnist.load_arrays(train_size=23, test_size=10, seed=4)
    (x_other, _), _, _ = fashion_mnist.load_arrays(train_size=23, test_size=10, seed=5)
    _, (x_test_same, _), _ = fashion_mnist.load_arrays(train_size=12, test_size=10, seed=4)

    assert sorted(np.bincount(y, minlength=10)) == [2] * 7 + [3] * 3
    assert np.bincount(y_test).tolist() == [1] * 10
    np.testing.assert_array_equal(x, x_again)
    assert not np.array_equal(x, x_other)
    np.testing.assert_array_equal(x_test, x_test_same)  # Does not depend on train_size.
    with pytest.raises(KftError, match=r"train_size must be an integer from 1 to 30, got 31"):
        fashion_mnist.load_arrays(train_size=31)


def test_image_data_validates_on_the_test_split(installed):
    data = fashion_mnist.image_data(train_size=20, validation_size=10, image_size=32,
                                    batch_size=8)

    assert (data.num_train, data.num_validation) == (20, 10)
    assert data.class_names[8] == "Bag" and data.image_size == (32, 32)
    x, y = next(iter(data.validation))
    assert x.shape == (8, 32, 32, 3) and x.dtype == "uint8"


def test_without_debian_or_network_the_error_says_how_to_install(
    tmp_path, monkeypatch, fresh_cache
):
    monkeypatch.setattr(fashion_mnist, "SYSTEM_DIR", tmp_path / "not-installed")

    def no_apt(name):
        raise KftError(f"Fetching the Debian package {name} needs apt-get and dpkg.")

    monkeypatch.setattr(assets, "debian_package", no_apt)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    try:
        (x, _), _, _ = fashion_mnist.load_arrays(train_size=10)
    except KftError as error:  # This machine has no network: keras' download fails.
        assert "needs apt-get and dpkg" in str(error)
        assert "keras.datasets download failed" in str(error)
        assert "apt-get install dataset-fashion-mnist" in str(error)
    else:  # Online, keras.datasets is the fallback.
        assert x.shape == (10, 28, 28)


@pytest.mark.slow
def test_real_fashion_mnist_from_the_debian_package(fresh_cache):
    (x_train, y_train), (x_test, y_test), names = fashion_mnist.load_arrays()

    assert x_train.shape == (60000, 28, 28) and x_test.shape == (10000, 28, 28)
    assert y_train[:5].tolist() == [9, 0, 0, 3, 0]  # The published first labels.
    assert np.bincount(y_train).tolist() == [6000] * 10
    assert abs(x_train.mean() - 72.94) < 0.01  # The published mean, 0.2860 * 255.
    data = fashion_mnist.image_data(train_size=200, validation_size=100, image_size=32)
    assert (data.num_train, data.num_validation) == (200, 100)
