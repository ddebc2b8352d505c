"""Training data: image folders, arrays, TFDS datasets and tagged words as tf.data pipelines."""

from kft.data import fashion_mnist
from kft.data import images
from kft.data import token_labels
from kft.data import wnut16
