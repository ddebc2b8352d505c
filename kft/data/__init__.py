"""Training data: image folders, arrays and TFDS datasets as tf.data pipelines."""
