"""`kft.export.onnx`: a Keras classifier as ONNX files, float and int8, checked against Keras.

What the graph takes:

- image models: `images`, `[batch, H, W, C]` in the Keras model's input
  dtype (uint8 for kft's classifiers), raw 0..255 pixels: the model's input
  scaling is a layer inside it, so it is inside the ONNX graph too.
- text models (keras-hub `TextClassifier`s, `kft.text.text_classifier`):
  the backbone's token inputs, int32 `[batch, sequence]` each (BERT:
  `token_ids`, `segment_ids`, `padding_mask`; RoBERTa-like models have no
  `segment_ids`). ONNX has no string tokenizer op that tf2onnx emits, so the
  tokenizer stays outside: `tokenizer/` beside the model is a keras-hub preset
  folder that rebuilds the run's exact preprocessor (see `onnx`).

Both output `probabilities`, float32 `[batch, classes]`. Conversion goes
through tf2onnx (opset 17) from a traced `tf.function`, the route Keras 3's
own `model.export(format="onnx")` takes. int8 is ONNX Runtime's
post-training quantization: static QDQ with per-channel weights and
activation ranges calibrated on training images for image models (their
convolutions become int8), dynamic (int8 weights, activations quantized at
run time) for transformers.
"""

import dataclasses
import logging
import os
import pathlib
import secrets
import shutil
import tempfile

import keras
import numpy as np
import tensorflow as tf

from kft.errors import KftError
from kft.export import data_arrays
from kft.export import model_json
from kft.export import signatures
from kft.export.serving_export import CALIBRATION_EXAMPLES, QUANTIZE_MODES
from kft.export.serving_export import class_labels, write_failure_reason, without_lora
from kft.internal import json_text

OPSET = 17
MODEL_FILE = "model.onnx"
INT8_FILE = "model_int8.onnx"
LABELS_FILE = "labels.json"
TOKENIZER_DIR = "tokenizer"
# Float ONNX Runtime and TensorFlow kernels sum in different orders; on
# probabilities the difference measured 1e-7 or less (tiny nets, BERT).
TOLERANCE = 1e-4
_CHECK_EXAMPLES = 8
_TEMP_PREFIX = ".kft-onnx-"
# Without validation data a text model is checked on these.
_CHECK_TEXTS = ["The film was good.", "Terrible service, never again!", "It works.",
                "A long sentence that goes on and on, with commas, to fill the sequence up."]


@dataclasses.dataclass(frozen=True)
class OnnxExport:
    """What `onnx` wrote and measured.

    Attributes:
        folder: the published folder.
        model_file: the float `model.onnx`; `model_bytes` its size.
        int8_file: `model_int8.onnx`, or `None` without `quantize`;
            `int8_bytes` its size.
        inputs: `{name: [dtype, shape]}` of the graph's inputs.
        checked_examples: inputs both Keras and ONNX Runtime ran.
        max_abs_difference: the largest probability difference between the
            float ONNX model and Keras on them.
        int8_max_abs_difference: the same for the int8 model.
        validation_examples: labelled examples scored, or `None`.
        keras_accuracy, float_accuracy, int8_accuracy: accuracy of the Keras
            model, the float and the int8 ONNX model on them.
        int8_agreement: fraction of top classes the int8 model shares with
            the float one.
    """

    folder: pathlib.Path
    model_file: pathlib.Path
    model_bytes: int
    inputs: dict
    checked_examples: int
    max_abs_difference: float
    int8_file: pathlib.Path = None
    int8_bytes: int = None
    int8_max_abs_difference: float = None
    validation_examples: int = None
    keras_accuracy: float = None
    float_accuracy: float = None
    int8_accuracy: float = None
    int8_agreement: float = None

    def as_dict(self):
        """A JSON-ready dict, paths as file names within the folder."""
        entry = dataclasses.asdict(self)
        entry.pop("folder")
        for key in ("model_file", "int8_file"):
            entry[key] = None if entry[key] is None else entry[key].name
        return entry

    def at(self, folder):
        """The same report for the folder its files were moved to."""
        folder = pathlib.Path(folder)
        return dataclasses.replace(
            self, folder=folder, model_file=folder / self.model_file.name,
            int8_file=None if self.int8_file is None else folder / self.int8_file.name,
        )


def onnx(model, folder, labels=None, quantize=None, representative_data=None,
         validation_data=None, metadata=None, verbose=False):
    """Exports a classifier as `folder/model.onnx` (and `model_int8.onnx`).

    `folder` gets `model.onnx`, with `quantize="int8"` also `model_int8.onnx`,
    `labels.json` (class names in output order), `model.json` (labels, inputs,
    versions, the measurements below) and, for text models, `tokenizer/`. It
    is written under a hidden name beside `folder` and renamed into place when
    complete; an existing `folder` is never overwritten, and a failed export
    leaves nothing.

    Before publishing, ONNX Runtime runs every file on the validation inputs
    (else a few training or random inputs) next to Keras: a float graph whose
    probabilities differ by more than 1e-4 is an error, not an export.

    Tokenizing for a text model: `tokenizer/` is a keras-hub preset folder
    holding the preprocessor (sequence length, special tokens) and its
    vocabulary file (`tokenizer/assets/tokenizer/vocabulary.txt` for BERT's
    WordPiece):

    ```python
    pre = keras_hub.models.TextClassifierPreprocessor.from_preset("out/tokenizer")
    feeds = {k: np.asarray(v, "int32") for k, v in pre(["Great phone."]).items()}
    onnxruntime.InferenceSession("out/model.onnx").run(None, feeds)
    ```

    Without keras-hub: WordPiece over the vocabulary (lowercased when
    `model.json`'s `tokenizer.lowercase`), `[CLS] pieces [SEP]` truncated and
    padded with id 0 to the sequence length, `padding_mask` 1 on real tokens,
    `segment_ids` 0.

    Args:
        model: a `keras.Model` with one fixed-size image input and a
            `(batch, classes)` output, or a keras-hub `TextClassifier`. It is
            not changed; LoRA adapters (kft.peft) are merged in a copy.
        folder: the folder to create.
        labels: class names in output order; defaults to `"0"`, `"1"`, ...
        quantize: `None`, or `"int8"` for `model_int8.onnx` beside the float
            file: static QDQ quantization, per-channel, calibrated on
            `representative_data`, for image models; dynamic for text models.
        representative_data: with `quantize`, training images to calibrate
            on (an array `[N, H, W, C]` or a `tf.data.Dataset` of images or
            `(images, labels)`); the first 200 are used. Required for image
            models, unused for text models.
        validation_data: `(inputs, labels)` arrays or a `tf.data.Dataset` of
            batches (images, or raw strings for text models): accuracy of
            Keras, float and int8 ONNX on it goes to the report.
        metadata: a JSON-ready dict added to `model.json`.
        verbose: print where the export went and what it measured.

    Returns:
        An `OnnxExport` report.

    Example:
    ```python
    report = kft.export.onnx(model, "exports/flowers", labels=["daisy", "rose"],
                             quantize="int8", representative_data=data.train,
                             validation_data=data.validation)
    report.model_bytes, report.int8_bytes, report.float_accuracy, report.int8_accuracy
    ```
    """
    folder = pathlib.Path(folder)
    if folder.exists():
        raise KftError(f"{folder} exists and is never overwritten: choose a new folder.")
    report = publish(model, lambda write: _publish_folder(folder, write), folder,
                     labels=labels, quantize=quantize, representative_data=representative_data,
                     validation_data=validation_data, metadata=metadata)
    from kft.console import Console

    Console(verbose).exported_onnx(report)
    return report


def publish(model, publisher, destination, labels=None, quantize=None,
            representative_data=None, validation_data=None, metadata=None, name=None):
    """`onnx`'s work, with the publishing step left to the caller.

    Args:
        model, labels, quantize, representative_data, validation_data,
            metadata: as for `onnx`.
        publisher: `publisher(write)` calls `write(staging_folder)` and
            returns the published folder (`versions.publish_version` does, for
            `BASE/NAME/VERSION/`).
        destination: where it goes, for error messages.
        name: the name `model.json` records; defaults to `model.name`.

    Returns:
        An `OnnxExport` for the published folder.
    """
    _check_installed()
    spec = signatures.model_input(model)
    labels = class_labels(labels, model)
    if quantize is not None and quantize not in QUANTIZE_MODES:
        raise KftError(f"quantize={quantize!r} is not supported; use None or 'int8'.")
    float_model, lora_merged = without_lora(model)
    graph = _Graph(float_model, spec)
    calibration = None
    if quantize and spec.kind == "image":
        if representative_data is None:
            raise KftError(
                "quantize='int8' for an image model needs representative_data: a few "
                "hundred training images (an array [N, H, W, 3] or a tf.data.Dataset) "
                "to calibrate the activation ranges."
            )
        calibration = data_arrays.input_examples(representative_data, spec,
                                                 CALIBRATION_EXAMPLES)
    validation = None
    if validation_data is not None:
        validation = data_arrays.labelled_examples(validation_data, spec)
    check_inputs = graph.check_inputs(validation, calibration)
    proto = graph.convert(labels)
    reports = []

    def write(path):
        path = pathlib.Path(path)
        model_file = path / MODEL_FILE
        model_file.write_bytes(proto.SerializeToString())
        int8_file = None
        if quantize:
            int8_file = path / INT8_FILE
            _quantize(model_file, int8_file, spec, calibration)
        report = _measure(path, graph, check_inputs, validation, model_file, int8_file)
        (path / LABELS_FILE).write_text(json_text.dumps(labels))
        tokenizer = graph.write_tokenizer(path / TOKENIZER_DIR) if spec.kind == "text" else None
        files = [MODEL_FILE] + ([INT8_FILE] if quantize else [])
        io = {key: graph.describe()[key] for key in ("inputs", "outputs")}
        card = model_json.model_card(
            float_model, name or model.name, labels, spec, {file: io for file in files},
            lora_merged=lora_merged,
            quantization=_quantization_entry(report, quantize, spec.kind),
            metadata={"format": "onnx", "input": graph.describe(), "tokenizer": tokenizer,
                      "onnx": _versions(), "check": _check_entry(report), **(metadata or {})},
        )
        model_json.write_model_json(path, card)
        reports.append(report)

    try:
        published = publisher(write)
    except (OSError, tf.errors.OpError) as error:
        raise KftError(
            f"Could not write the ONNX export to {destination}: "
            f"{write_failure_reason(error)}; nothing was published."
        ) from error
    return reports[0].at(published)


class _Graph:
    """The traced function tf2onnx converts, and the inputs it takes."""

    def __init__(self, model, spec):
        self.model, self.spec = model, spec
        if spec.kind == "text":
            self.preprocessor = signatures._preprocessor(model)
            if self.preprocessor is None:
                raise KftError(
                    f"Model {model.name!r} takes strings through its own layers; ONNX "
                    "export supports keras-hub text classifiers (kft.text."
                    "text_classifier), whose tokenizer stays outside the graph."
                )
            self.names = sorted(tensor.name for tensor in model.inputs)
            self.input_specs = [tf.TensorSpec([None, None], tf.int32, name=name)
                                for name in self.names]
        else:
            self.preprocessor = None
            self.names = ["images"]
            self.input_specs = [tf.TensorSpec([None, *spec.shape], spec.dtype, name="images")]

    def keras_probabilities(self, feeds, batch_size=64):
        # The model called directly: a keras-hub task's `predict` would run
        # its preprocessor on the token ids again.
        count = len(next(iter(feeds.values())))
        outputs = []
        for start in range(0, count, batch_size):
            batch = {name: tf.constant(feeds[name][start:start + batch_size])
                     for name in self.names}
            inputs = batch["images"] if self.spec.kind == "image" else batch
            outputs.append(keras.ops.convert_to_numpy(self.model(inputs, training=False)))
        return np.concatenate(outputs).astype("float32")

    def feeds(self, inputs):
        """ONNX feeds for model inputs (images, or raw strings for text)."""
        if self.spec.kind == "image":
            return {"images": inputs}
        return token_feeds(self.model, inputs)

    def check_inputs(self, validation, calibration):
        if validation is not None:
            return self.feeds(validation[0])
        if calibration is not None:
            return self.feeds(calibration[:_CHECK_EXAMPLES])
        rng = np.random.default_rng(0)
        if self.spec.kind == "image":
            images = rng.integers(0, 256, (_CHECK_EXAMPLES, *self.spec.shape))
            return {"images": images.astype(self.spec.dtype)}
        return self.feeds(np.array(_CHECK_TEXTS, object))

    def convert(self, labels):
        import tf2onnx

        logging.getLogger("tf2onnx").setLevel(logging.ERROR)
        model, spec = self.model, self.spec

        def probabilities(*inputs):
            if spec.kind == "image":
                outputs = model(inputs[0], training=False)
            else:
                outputs = model(dict(zip(self.names, inputs)), training=False)
            return {"probabilities": tf.cast(outputs, tf.float32)}

        function = tf.function(probabilities, input_signature=self.input_specs)
        try:
            proto, _ = tf2onnx.convert.from_function(
                function, input_signature=self.input_specs, opset=OPSET)
        except Exception as error:  # tf2onnx raises many types for what it cannot map.
            raise KftError(
                f"tf2onnx could not convert {model.name!r} to ONNX: {error}"
            ) from error
        _name_dimensions(proto, spec.kind)
        entry = proto.metadata_props.add()
        entry.key, entry.value = "labels", json_text.dumps(list(labels))
        return proto

    def describe(self):
        shape = (["batch", "sequence"] if self.spec.kind == "text"
                 else ["batch", *self.spec.shape])
        dtype = "int32" if self.spec.kind == "text" else self.spec.dtype
        return {
            "kind": self.spec.kind,
            "inputs": {name: [dtype, shape] for name in self.names},
            "outputs": {"probabilities": ["float32", ["batch", "classes"]]},
            "preprocessing": ("inside the graph: raw 0..255 pixels in" if self.spec.kind
                              == "image" else f"outside: tokenize with {TOKENIZER_DIR}/"),
        }

    def write_tokenizer(self, path):
        """A keras-hub preset folder that rebuilds the preprocessor; its description."""
        path.mkdir()
        self.preprocessor.save_to_preset(str(path))
        # from_preset picks the preprocessor class from the backbone's config
        # (architecture only, no weights).
        backbone = getattr(self.model, "backbone", None)
        (path / "config.json").write_text(
            json_text.dumps(keras.saving.serialize_keras_object(backbone)))
        tokenizer = self.preprocessor.tokenizer
        config = tokenizer.get_config()
        return {
            "folder": TOKENIZER_DIR,
            "class": type(tokenizer).__name__,
            "preprocessor": type(self.preprocessor).__name__,
            "sequence_length": getattr(self.preprocessor, "sequence_length", None),
            "lowercase": config.get("lowercase"),
            "files": sorted(str(p.relative_to(path.parent)) for p in path.rglob("*")
                            if p.is_file() and "assets" in p.parts),
        }


def _name_dimensions(proto, kind):
    # tf2onnx names unknown dimensions `unk__N`; readable names tell users
    # and runtimes (Triton, ORT's shape checks) which axes are free.
    free = {"input": ["batch", "sequence"] if kind == "text" else ["batch"],
            "output": ["batch"]}
    for side, values in (("input", proto.graph.input), ("output", proto.graph.output)):
        for value in values:
            for dim, dim_name in zip(value.type.tensor_type.shape.dim, free[side]):
                dim.ClearField("dim_value")
                dim.dim_param = dim_name


def _quantize(float_file, int8_file, spec, calibration):
    from onnxruntime import quantization

    with tempfile.TemporaryDirectory(prefix="kft-onnx-quant-") as scratch:
        # Shape inference and ORT's graph fusions first, as ORT's guide asks
        # (BatchNorm folded into convolutions is quantized as one op).
        # Symbolic shape inference needs sympy, which kft does not depend on.
        prepared = os.path.join(scratch, "prepared.onnx")
        try:
            quantization.quant_pre_process(str(float_file), prepared, skip_symbolic_shape=True)
            if spec.kind == "image":
                quantization.quantize_static(
                    prepared, str(int8_file), _Calibration(calibration),
                    quant_format=quantization.QuantFormat.QDQ, per_channel=True,
                    activation_type=quantization.QuantType.QInt8,
                    weight_type=quantization.QuantType.QInt8,
                    calibrate_method=quantization.CalibrationMethod.MinMax,
                )
            else:
                quantization.quantize_dynamic(
                    prepared, str(int8_file), per_channel=True,
                    weight_type=quantization.QuantType.QInt8,
                )
        except (OSError, MemoryError):
            raise
        except Exception as error:  # ORT's quantizer raises many types.
            raise KftError(f"ONNX Runtime could not quantize the model: {error}") from error


class _Calibration:
    """An `onnxruntime.quantization.CalibrationDataReader` over image batches."""

    def __init__(self, images, batch_size=16):
        self._batches = iter([{"images": images[start:start + batch_size]}
                              for start in range(0, len(images), batch_size)])

    def get_next(self):
        return next(self._batches, None)

    def __iter__(self):
        return self

    def __next__(self):
        batch = self.get_next()
        if batch is None:
            raise StopIteration
        return batch


def token_feeds(model, texts):
    """The ONNX feeds of a text model for raw `texts`: its preprocessor's token
    arrays, int32 `[N, sequence]`, one per model input (the graph's inputs)."""
    tokens = signatures._preprocessor(model)(
        tf.constant(np.asarray(texts, dtype=object).reshape(-1).tolist()))
    return {tensor.name: np.asarray(tokens[tensor.name]).astype("int32")
            for tensor in model.inputs}


def run_onnx(path, feeds, batch_size=64):
    """Probabilities from an ONNX file, through ONNX Runtime on CPU.

    Args:
        path: a file `onnx` wrote.
        feeds: `{input name: array [N, ...]}`.
        batch_size: examples per run.

    Returns:
        A float32 array `[N, classes]`.
    """
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    session = onnxruntime.InferenceSession(str(path), options,
                                           providers=["CPUExecutionProvider"])
    count = len(next(iter(feeds.values())))
    outputs = [
        session.run(["probabilities"], {k: v[start:start + batch_size] for k, v in feeds.items()})[0]
        for start in range(0, count, batch_size)
    ]
    return np.concatenate(outputs)


def _measure(folder, graph, check_inputs, validation, model_file, int8_file):
    check_keras = graph.keras_probabilities(check_inputs)
    check_float = run_onnx(model_file, check_inputs)
    difference = float(np.max(np.abs(check_float - check_keras)))
    if not difference <= TOLERANCE:
        raise KftError(
            f"The ONNX model's probabilities differ from Keras' by {difference:.2g} "
            f"(more than {TOLERANCE:g}); nothing was published. Please report it "
            "with the model's architecture."
        )
    values = dict(folder=folder, model_file=model_file, model_bytes=model_file.stat().st_size,
                  inputs=graph.describe()["inputs"], checked_examples=len(check_keras),
                  max_abs_difference=difference)
    check_int8 = None
    if int8_file is not None:
        check_int8 = run_onnx(int8_file, check_inputs)
        values.update(int8_file=int8_file, int8_bytes=int8_file.stat().st_size,
                      int8_max_abs_difference=float(np.max(np.abs(check_int8 - check_keras))))
    if validation is not None:
        targets = validation[1]
        values.update(validation_examples=len(targets),
                      keras_accuracy=_accuracy(check_keras, targets),
                      float_accuracy=_accuracy(check_float, targets))
        if check_int8 is not None:
            values.update(int8_accuracy=_accuracy(check_int8, targets),
                          int8_agreement=float(np.mean(
                              check_int8.argmax(-1) == check_float.argmax(-1))))
    return OnnxExport(**values)


def _accuracy(probabilities, targets):
    return float(np.mean(probabilities.argmax(-1) == targets))


def _check_entry(report):
    entry = report.as_dict()
    return {key: entry[key] for key in ("checked_examples", "max_abs_difference",
                                        "int8_max_abs_difference")}


def _quantization_entry(report, quantize, kind):
    if not quantize:
        return None
    entry = report.as_dict()
    return {"mode": "int8", "method": ("static QDQ, per-channel, MinMax calibration"
                                       if kind == "image" else
                                       "dynamic, per-channel int8 weights"),
            **{key: entry[key] for key in (
                "model_bytes", "int8_bytes", "validation_examples", "keras_accuracy",
                "float_accuracy", "int8_accuracy", "int8_agreement")}}


def _versions():
    import onnx as onnx_package
    import onnxruntime
    import tf2onnx

    return {"opset": OPSET, "tf2onnx": tf2onnx.__version__, "onnx": onnx_package.__version__,
            "onnxruntime": onnxruntime.__version__}


def _check_installed():
    try:
        import onnx as onnx_package  # noqa: F401
        import onnxruntime  # noqa: F401
        import tf2onnx  # noqa: F401
    except ImportError as error:
        raise KftError(
            f"ONNX export needs {error.name}: pip install 'kft[onnx]' (tf2onnx, onnx, "
            "onnxruntime)."
        ) from None


def _publish_folder(folder, write):
    """Fills a hidden folder beside `folder`, then renames it to `folder`."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = folder.parent / f"{_TEMP_PREFIX}{secrets.token_hex(6)}"
    staging.mkdir()
    try:
        write(staging)
        if folder.exists():
            raise KftError(f"{folder} appeared while exporting and is never overwritten.")
        os.rename(staging, folder)
        return folder
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
