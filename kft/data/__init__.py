"""Training data: images, texts and tagged words from folders, files, TFDS and arrays,
as tf.data pipelines. Every loader returns a `kft.data.Data`."""

from kft.data import datasets
from kft.data.data import Data
from kft.data.data import as_data
from kft.data import images
from kft.data import instructions
from kft.data import text
from kft.data import token_labels

# The named datasets' old paths (kft.data.fashion_mnist, ...) keep working.
from kft.data.datasets import fashion_mnist
from kft.data.datasets import sentiment_sentences
from kft.data.datasets import wnut16
