"""`model.json`: what a served model is, beside the SavedModel in its version folder.

It records the label names, the input format, each signature's inputs and
outputs, the versions that wrote it, and whatever the caller knows about the
model's origin (`kft export` adds the run directory, its hyperparameters and
its validation metrics), plus the quantization report when there is one.
TF Serving ignores the file.
"""

import datetime

import keras
import tensorflow as tf

from kft.internal import json_text

FILE_NAME = "model.json"


def model_card(model, name, labels, model_input, signatures, metadata=None,
               lora_merged=False, quantization=None):
    """The content of `model.json`, as a dict.

    Args:
        model: the exported Keras model.
        name: the TF Serving model name.
        labels: the class names, in output order.
        model_input: its `kft.export.signatures.ModelInput`.
        signatures: what `kft.export.saved_model.describe_signatures` returns.
        metadata: a JSON-ready dict merged in last (`source`, `validation`, ...).
        lora_merged: whether LoRA adapters were folded into the kernels.
        quantization: the quantization report, or `None`.
    """
    import kft

    card = {
        "name": name,
        "model": model.name,
        "task": f"{model_input.kind}_classification",
        "labels": list(labels),
        "input": model_input.describe(),
        "signatures": signatures,
        "lora_merged": bool(lora_merged),
        "quantization": quantization,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "versions": {
            "kft": kft.__version__,
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
        },
    }
    card.update(metadata or {})
    return card


def write_model_json(folder, card):
    """Writes `card` as `folder/model.json`."""
    (folder / FILE_NAME).write_text(json_text.dumps(card))
