"""A small JSON record a kft layer saves next to its weights.

keras-hub blocks create their sublayers in `build()`, so a kft layer placed
inside one (a LoRA projection, a bottleneck adapter) is not in any config
Keras saves. The record (what the layer is and where it sits, by Keras
layer path) lets `kft.saving.load_model` put it back before loading weights.
"""

import json

import numpy as np

RECORD_KEY = "kft_record"


def encode(record):
    """A dict as a uint8 array a weights store can hold."""
    return np.frombuffer(json.dumps(record, sort_keys=True).encode("utf-8"), dtype=np.uint8)


def decode(array):
    """The dict `encode` stored."""
    return json.loads(np.asarray(array, dtype=np.uint8).tobytes().decode("utf-8"))
