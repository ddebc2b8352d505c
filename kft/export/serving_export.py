"""`kft.export.serving`: a Keras classifier as a TF Serving model version."""

import os
import tempfile

import keras
import tensorflow as tf

from kft.console import Console
from kft.errors import KftError
from kft.export import data_arrays
from kft.export import model_json
from kft.export import quantize as quantization
from kft.export import saved_model
from kft.export import signatures
from kft.export import versions

QUANTIZE_MODES = ("int8",)
# TFLite's guide suggests 100 to 500 calibration examples.
CALIBRATION_EXAMPLES = 200


def serving(model, base_dir, name=None, version=None, labels=None, metadata=None,
            quantize=None, representative_data=None, validation_data=None, verbose=False):
    """Exports a classifier for TF Serving as `base_dir/name/version/`.

    The version folder holds a SavedModel (`saved_model.pb`, `variables/`,
    `assets/`) and `model.json`. It is written under a hidden temporary name
    and renamed into place when complete, so a polling server never sees a
    partial version and a failed export leaves none; an existing version is
    never overwritten.

    Signatures (see `kft.export.signatures`): for an image model,
    `serving_default` takes encoded JPEG/PNG bytes (`image_bytes`,
    `tf.string [batch]`) and `predict_images` decoded `[batch, H, W, C]`
    arrays; for a text model (string input), `serving_default` takes raw
    strings (`text`). Both return `probabilities`, `class_index` and `label`.
    A token classifier (`kft.text.token_classifier`) takes raw sentences
    (`sentences`) and returns `tags` (`tf.string [batch, words]`, one per
    word) and `num_words`.
    The graph holds only TensorFlow ops: serving needs neither kft nor
    keras-hub. LoRA adapters (kft.peft) are merged into the kernels first.

    Args:
        model: a `keras.Model` with one image (`(H, W, C)`, uint8 for kft's
            classifiers) or string input and a `(batch, classes)`
            probability output. It is not changed.
        base_dir: the folder TF Serving's model base paths live in.
        name: the model name (`base_dir/name/`); defaults to `model.name`.
        version: a positive integer; `None` takes the next free one.
        labels: class names in output order; defaults to `"0"`, `"1"`, ...
        metadata: a JSON-ready dict added to `model.json` (its origin,
            validation metrics, ...).
        quantize: `None`, or `"int8"`: the SavedModel gets Keras int8
            weights (`model.quantize("int8")`), and image models also get a
            full-int8 TFLite file, `model_int8.tflite`, in the version folder.
            Sizes and accuracies before and after go to `model.json`
            (`"quantization"`).
        representative_data: with `quantize`, training inputs to calibrate
            the TFLite file (an array `[N, H, W, C]` or a `tf.data.Dataset`
            of inputs or `(inputs, labels)`); the first 200 are used.
            Required for image models.
        validation_data: with `quantize`, `(inputs, labels)` arrays or a
            `tf.data.Dataset` of batches, to measure accuracy before and
            after; without it only sizes are reported.
        verbose: print the quantization report.

    Returns:
        The published version folder, a `pathlib.Path`.

    Example:
    ```python
    model = kft.vision.image_classifier("mobilenetv3small", 3, image_size=96)
    path = kft.export.serving(model, "models", name="flowers",
                              labels=["daisy", "rose", "tulip"])
    # models/flowers/1/ ; docker run -v "$PWD/models:/models" ... tensorflow/serving
    ```
    """
    spec = signatures.model_input(model)
    labels = class_labels(labels, model)
    folder = versions.model_dir(base_dir, name or model.name)
    versions.check_version(folder, version)
    calibration, validation = _quantization_data(
        quantize, spec, representative_data, validation_data
    )

    float_model, lora_merged = without_lora(model)
    export_model, quantized_layers = float_model, None
    if quantize:
        export_model = _copy(float_model)
        quantized_layers = quantization.quantize_int8(export_model)

    reports = []

    def write(path):
        saved_model.write_saved_model(export_model, labels, path)
        report = None
        if quantize:
            report = quantization.quantization_report(
                float_model, export_model, labels, path, quantized_layers,
                calibration=calibration, validation=validation,
            )
            reports.append(report)
        card = model_json.model_card(
            export_model, folder.name, labels, spec,
            saved_model.describe_signatures(export_model), metadata=metadata,
            lora_merged=lora_merged, quantization=report,
        )
        model_json.write_model_json(path, card)

    try:
        published = versions.publish_version(folder, version, write)
    except (OSError, tf.errors.OpError) as error:
        raise KftError(
            f"Could not write the export to {folder}: {write_failure_reason(error)}; nothing was "
            f"published (the next export takes version {versions.next_version(folder)})."
        ) from error
    for report in reports:
        Console(verbose).quantization(report)
    return published


def write_failure_reason(error):
    """The OS's words for a failed write (TensorFlow puts them after the path)."""
    if isinstance(error, OSError):
        return error.strerror or str(error)
    return str(error.message).rsplit("; ", 1)[-1]


def class_labels(labels, model):
    """The class names an export records: `labels` checked, or the model's own."""
    classes = model.outputs[0].shape[-1]
    if labels is None and hasattr(model, "tags"):
        return list(model.tags)
    if labels is None:
        return [str(index) for index in range(classes)]
    labels = [str(label) for label in labels]
    if len(labels) != classes:
        raise KftError(
            f"{len(labels)} labels for a model with {classes} output classes: "
            "pass one name per class, in output order."
        )
    return labels


def _quantization_data(quantize, spec, representative_data, validation_data):
    if quantize is None:
        if representative_data is not None or validation_data is not None:
            raise KftError(
                "representative_data and validation_data are only used with "
                "quantize='int8'."
            )
        return None, None
    if spec.kind == "token":
        raise KftError("quantize='int8' exports classifiers; export a token classifier "
                       "in float (quantize=None).")
    if quantize not in QUANTIZE_MODES:
        raise KftError(
            f"quantize={quantize!r} is not supported; use None or 'int8'."
        )
    calibration = None
    if spec.kind == "image":
        if representative_data is None:
            raise KftError(
                "quantize='int8' needs representative_data: a few hundred training "
                "images (an array [N, H, W, 3] or a tf.data.Dataset) to calibrate "
                "the int8 TFLite file."
            )
        calibration = data_arrays.input_examples(
            representative_data, spec, CALIBRATION_EXAMPLES
        )
    validation = None
    if validation_data is not None:
        validation = data_arrays.labelled_examples(validation_data, spec)
    return calibration, validation


def without_lora(model):
    """Returns `(model to export, whether LoRA adapters were merged into it)`."""
    try:
        # LoRA lives in kft.peft, a separate part of kft; a build without it
        # cannot have added LoRA layers through it, so there is nothing to merge.
        from kft import peft
    except ImportError:
        return model, False
    lora = peft.lora_layers(model)
    if not lora or any(layer.quantization_mode for _, layer in lora):
        # A quantized base cannot take a merge (it would quantize the update
        # again): such adapters are exported unmerged, with the same outputs.
        return model, False
    merged = _copy(model)
    peft.merge(merged, unload=True)
    return merged, True


def _copy(model):
    """A copy of `model` whose merge and quantization leave `model` as it is.

    Only layers containing `Dense`/`EinsumDense`/`Embedding` layers are
    rebuilt (with copied weights): merging LoRA and Keras' int8 mode change
    nothing else. Other layers are shared, which also keeps layers that
    cannot be rebuilt from their config alone, such as keras-hub tokenizers
    (their vocabulary is an asset, not config).
    """
    from kft.model_tree import is_keras_hub_task

    if is_keras_hub_task(model):
        return _copy_through_file(model)

    def clone(layer):
        inner = layer._flatten_layers()
        if not any(isinstance(each, quantization.INT8_LAYERS) for each in inner):
            return layer
        return layer.__class__.from_config(layer.get_config())

    try:
        copy = keras.models.clone_model(model, clone_function=clone)
    except Exception as error:  # Keras raises several types here.
        raise KftError(
            f"Could not copy model {model.name!r} to merge or quantize it ({error}); "
            "kft exports functional and Sequential Keras models."
        ) from error
    copy.set_weights(model.get_weights())
    return copy


def _copy_through_file(model):
    """A keras-hub task rebuilds its blocks itself, so a clone from config loses
    LoRA layers inside them; a `.keras` round trip through `kft.saving.load_model`
    restores them, and the tokenizer's vocabulary with them."""
    from kft import saving

    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "copy.keras")
        model.save(path)
        return saving.load_model(path, compile=False)
