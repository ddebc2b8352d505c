"""`kft bench`: what a run's model costs to serve, in every format kft exports.

For a run directory, `measure` exports the final model into a scratch
folder in each format (the Keras file as it is; the TF Serving SavedModel,
float and with Keras int8 weights; TFLite float and full int8 for image
models; ONNX float and int8), then measures each one in a fresh process of
its own (`kft/inference/cost_worker.py`) on the same inputs:

- latency at batch 1: median (p50) and 95th percentile of per-call times;
- throughput at `batch_size` over all inputs, and seconds per 1,000
  predictions at that rate;
- the serving process's peak resident memory, runtime included (ONNX
  Runtime's process never imports TensorFlow; the Keras one imports kft);
- size on disk, and accuracy when the inputs are the run's labelled
  validation examples (rebuilt by the run's recipe).

The inputs are what each format takes: the Keras model, SavedModels and
TFLite files take images or raw strings; ONNX text models take token ids,
tokenized beforehand (that tokenizing is not timed). The table goes to
`RUN_DIR/inference.json`, replaced by the next measurement.
"""

import dataclasses
import json
import os
import pathlib
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

from kft.errors import KftError

REPORT_FILE = "inference.json"
# Every format, in table order; `FORMAT_TITLES` names them for people.
FORMATS = ("keras", "saved_model", "saved_model_int8", "tflite", "tflite_int8", "onnx",
           "onnx_int8")
FORMAT_TITLES = {
    "keras": "Keras (.keras)", "saved_model": "SavedModel", "saved_model_int8":
    "SavedModel int8 weights", "tflite": "TFLite float", "tflite_int8": "TFLite int8",
    "onnx": "ONNX float", "onnx_int8": "ONNX int8",
}
_WORKER = pathlib.Path(__file__).with_name("cost_worker.py")
# Without labelled data, image models are timed on random pictures and text
# models on these sentences.
_SENTENCES = ["The film was good.", "Terrible service, never again!", "It works.",
              "A long sentence that goes on and on, with commas, to fill the sequence up.",
              "Not what I expected at all, but the price was right and it arrived early."]
_SYNTHETIC_EXAMPLES = 64


@dataclasses.dataclass(frozen=True)
class FormatCost:
    """One format's measurements (or why it was not measured).

    Attributes:
        format: a name in `FORMATS`.
        inputs: what the format was fed (`"uint8 images"`, `"strings"`,
            `"token ids"`).
        size_bytes: the artifact's size on disk.
        latency_p50_ms, latency_p95_ms: batch-1 latency percentiles.
        throughput: examples per second at the report's batch size.
        seconds_per_1000: seconds for 1,000 predictions at that throughput.
        peak_memory_bytes: the serving process's peak resident memory.
        load_seconds: from importing the runtime to a loaded model.
        accuracy: on the labelled inputs, or `None`.
        skipped: why the format was not measured, or `None`.
    """

    format: str
    inputs: str = None
    size_bytes: int = None
    latency_p50_ms: float = None
    latency_p95_ms: float = None
    throughput: float = None
    seconds_per_1000: float = None
    peak_memory_bytes: int = None
    load_seconds: float = None
    accuracy: float = None
    skipped: str = None

    @property
    def title(self):
        return FORMAT_TITLES[self.format]


@dataclasses.dataclass(frozen=True)
class InferenceCost:
    """What `measure` found, one `FormatCost` per format.

    Attributes:
        run_dir: the run directory measured.
        report_file: where the report was written (`run_dir/inference.json`).
        batch_size: the throughput batch size.
        examples: inputs each format ran.
        labelled: whether they were the run's labelled validation examples
            (else random images or fixed sentences: no accuracy).
        machine: CPU count, platform, accelerators, library versions.
        formats: the `FormatCost`s, in `FORMATS` order.
    """

    run_dir: pathlib.Path
    report_file: pathlib.Path
    batch_size: int
    examples: int
    labelled: bool
    machine: dict
    formats: tuple

    def as_dict(self):
        return {
            "run_dir": str(self.run_dir), "batch_size": self.batch_size,
            "examples": self.examples, "labelled": self.labelled, "machine": self.machine,
            "formats": [dataclasses.asdict(row) for row in self.formats],
        }


def measure(run_dir, batch_size=32, formats=None, seconds=3.0, latency_calls=200,
            max_examples=512, recipe=None, verbose_progress=None):
    """Measures the inference cost of a run's final model in each format.

    Args:
        run_dir: a finished run directory.
        batch_size: the batch size of the throughput measurement.
        formats: names from `FORMATS`; `None` for all that apply to the
            model (TFLite files are made for image models only).
        seconds: about how long each of the two measurements (latency,
            throughput) runs per format, at least one pass over the inputs.
        latency_calls: the most batch-1 calls timed per format.
        max_examples: the most validation examples to run.
        recipe: the run's recipe (a `kft.Recipe` or its file) to rebuild the
            labelled validation data and the int8 calibration images;
            defaults to the run's copy. Without one, formats are timed on
            synthetic inputs and int8 image formats are skipped.
        verbose_progress: `callable(format_name)` called before each format
            is measured, or `None`.

    Returns:
        An `InferenceCost`; also written to `run_dir/inference.json`.

    Example:
    ```python
    cost = kft.inference.measure_cost("runs/sentiment-20260101-120000", batch_size=32)
    {row.format: row.latency_p50_ms for row in cost.formats}
    ```
    """
    from kft.export import run_export
    from kft.inference import run_model
    from kft.runs.run_directory import RunDirectory

    run = run_model.load(run_dir)
    if batch_size < 1:
        raise KftError(f"batch_size must be at least 1, got {batch_size}.")
    wanted = _formats(formats, run.kind)
    _, params, _, _ = run_export.run_files(run.run_dir)
    calibration, examples, labels = _inputs(run, params, recipe, max_examples)
    with tempfile.TemporaryDirectory(prefix="kft-bench-") as scratch:
        scratch = pathlib.Path(scratch)
        inputs_file = scratch / "inputs.npz"
        arrays = _arrays(run, examples)
        if labels is not None:
            arrays["labels"] = labels
        np.savez(inputs_file, **arrays)
        artifacts = _artifacts(run, wanted, calibration, scratch)
        rows = []
        for name in FORMATS:
            if name not in wanted:
                continue
            path, reason = artifacts.get(name, (None, _not_made(name, run.kind)))
            if path is None:
                rows.append(FormatCost(name, skipped=reason))
                continue
            if verbose_progress is not None:
                verbose_progress(name)
            rows.append(_measure_one(name, path, inputs_file, run.kind, batch_size, seconds,
                                     latency_calls, scratch))
    result = InferenceCost(
        run_dir=run.run_dir, report_file=run.run_dir / REPORT_FILE, batch_size=batch_size,
        examples=len(examples), labelled=labels is not None, machine=_machine(),
        formats=tuple(rows),
    )
    RunDirectory.publish(result.report_file, lambda tmp: tmp.write_text(
        json.dumps(result.as_dict(), indent=2) + "\n"))
    return result


def _formats(formats, kind):
    available = [name for name in FORMATS
                 if kind == "image" or not name.startswith("tflite")]
    if kind == "token":
        available = ["keras", "saved_model"]
    if formats is None:
        return available
    formats = list(formats)
    unknown = [name for name in formats if name not in FORMATS]
    if unknown:
        raise KftError(f"Unknown format(s) {', '.join(unknown)}; kft measures "
                       f"{', '.join(FORMATS)}.")
    unavailable = [name for name in formats if name not in available]
    if unavailable:
        raise KftError(f"A {kind} model has no {', '.join(unavailable)} export; its formats "
                       f"are {', '.join(available)}.")
    return formats


def _not_made(name, kind):
    return f"no {FORMAT_TITLES[name]} export for a {kind} model"


def _inputs(run, params, recipe, max_examples):
    """Calibration images, the inputs to time, and their labels (or `None`)."""
    from kft.export import data_arrays
    from kft.export.serving_export import CALIBRATION_EXAMPLES
    from kft.export.signatures import model_input
    from kft.export import run_export

    no_recipe = recipe is None and not (run.run_dir / run_export.RECIPE_COPY).is_file()
    if no_recipe or run.kind == "token":
        return None, _synthetic(run), None
    data = run_export.recipe_data(run.run_dir, params, recipe,
                                  "kft bench measures on the run's validation data")
    spec = model_input(run.model)
    calibration = None
    if run.kind == "image":
        calibration = data_arrays.input_examples(data.train, spec, CALIBRATION_EXAMPLES)
    validation = getattr(data, "validation", None)
    if validation is None:
        return calibration, _synthetic(run), None
    examples, labels = data_arrays.labelled_examples(validation, spec)
    return calibration, examples[:max_examples], labels[:max_examples]


def _synthetic(run):
    if run.kind == "image":
        rng = np.random.default_rng(0)
        shape = tuple(run.model.inputs[0].shape[1:])
        return rng.integers(0, 256, (_SYNTHETIC_EXAMPLES, *shape)).astype("uint8")
    repeats = -(-_SYNTHETIC_EXAMPLES // len(_SENTENCES))
    return np.array((_SENTENCES * repeats)[:_SYNTHETIC_EXAMPLES], object)


def _arrays(run, examples):
    """The `.npz` arrays the workers read: images, or texts and their token ids."""
    if run.kind == "image":
        return {"images": examples}
    texts = [text.decode("utf-8") if isinstance(text, bytes) else str(text)
             for text in np.asarray(examples).reshape(-1)]
    key = "sentences" if run.kind == "token" else "text"
    arrays = {key: np.array(texts, dtype=str)}
    if run.kind == "text":
        from kft.export.onnx_export import token_feeds

        arrays.update(token_feeds(run.model, texts))
    return arrays


def _artifacts(run, wanted, calibration, scratch):
    """`{format: (path, None) or (None, why not)}` for the wanted formats."""
    from kft.export import onnx_export
    from kft.export import tflite
    from kft.export.serving_export import serving, without_lora
    from kft.runs.run_directory import final_model_of

    made = {"keras": (final_model_of(run.run_dir), None)}
    needs_calibration = run.kind == "image" and calibration is None
    no_calibration = ("int8 calibrates on the run's training images: pass the run's recipe "
                      "(--recipe)")
    if "saved_model" in wanted:
        made["saved_model"] = (serving(run.model, scratch / "serving", name="model",
                                       version=1, labels=run.labels), None)
    if "saved_model_int8" in wanted or "tflite_int8" in wanted:
        if needs_calibration:
            made["saved_model_int8"] = made["tflite_int8"] = (None, no_calibration)
        else:
            folder = serving(run.model, scratch / "serving", name="model", version=2,
                             labels=run.labels, quantize="int8",
                             representative_data=calibration)
            made["saved_model_int8"] = (folder, None)
            made["tflite_int8"] = (folder / "model_int8.tflite", None)
    if "tflite" in wanted:
        float_model, _ = without_lora(run.model)
        tflite.write_float_tflite(float_model, scratch / "model.tflite")
        made["tflite"] = (scratch / "model.tflite", None)
    if "onnx" in wanted or "onnx_int8" in wanted:
        quantize = "int8" if "onnx_int8" in wanted else None
        if quantize and needs_calibration:
            made["onnx_int8"] = (None, no_calibration)
            quantize = None
        report = onnx_export.onnx(run.model, scratch / "onnx", labels=run.labels,
                                  quantize=quantize, representative_data=calibration)
        made["onnx"] = (report.model_file, None)
        if quantize:
            made["onnx_int8"] = (report.int8_file, None)
    return made


def _measure_one(name, path, inputs_file, kind, batch_size, seconds, latency_calls, scratch):
    request = scratch / f"{name}.json"
    request.write_text(json.dumps({
        "format": name, "path": str(path), "inputs": str(inputs_file),
        "batch_size": batch_size, "seconds": seconds, "latency_calls": latency_calls,
    }))
    # The Keras worker imports the same kft as this process, installed or not.
    source = str(pathlib.Path(__file__).resolve().parents[2])
    python_path = os.pathsep.join(filter(None, [source, os.environ.get("PYTHONPATH")]))
    environment = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONWARNINGS": "ignore",
                   "PYTHONPATH": python_path}
    process = subprocess.run([sys.executable, str(_WORKER), str(request)], env=environment,
                             capture_output=True, text=True)
    lines = process.stdout.strip().splitlines()
    if process.returncode != 0 or not lines:
        return FormatCost(name, skipped=f"failed: {_failure(process.stderr)}")
    found = json.loads(lines[-1])
    latencies = sorted(found["latency_ms"])
    return FormatCost(
        name, inputs=_input_kind(name, kind), size_bytes=_size(path),
        latency_p50_ms=statistics.median(latencies),
        latency_p95_ms=float(np.percentile(latencies, 95)),
        throughput=found["throughput"], seconds_per_1000=1000 / found["throughput"],
        peak_memory_bytes=found["peak_rss_bytes"], load_seconds=found["load_seconds"],
        accuracy=found["accuracy"],
    )


def _failure(stderr):
    """The exception line of a worker's traceback (its last line may be a detail)."""
    lines = stderr.strip().splitlines() or ["no output"]
    errors = [line for line in lines if re.match(r"^[\w.]+(Error|Exception|Interrupt)\b", line)]
    return (errors or lines)[-1][:300]


def _input_kind(name, kind):
    if kind == "image":
        return "uint8 images"
    if kind == "token":
        return "sentences"
    return "token ids" if name.startswith("onnx") else "strings"


def _size(path):
    path = pathlib.Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(item.stat().st_size for item in path.rglob("*") if item.is_file()
               and item.name != "model_int8.tflite")


def _machine():
    import keras
    import tensorflow as tf

    versions = {"tensorflow": tf.__version__, "keras": keras.__version__}
    try:
        import onnxruntime

        versions["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    return {
        "cpus": os.cpu_count(), "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "gpus": [device.name for device in tf.config.list_physical_devices("GPU")],
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "versions": versions,
    }
