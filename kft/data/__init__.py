"""Training data: image folders, arrays and TFDS datasets as tf.data pipelines."""

from kft.data import fashion_mnist
from kft.data import images
