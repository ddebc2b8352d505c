"""Training data: images, texts and tagged words from folders, files, TFDS and arrays, as tf.data pipelines."""

from kft.data import fashion_mnist
from kft.data import images
from kft.data import sentiment_sentences
from kft.data import text
from kft.data import token_labels
from kft.data import wnut16
