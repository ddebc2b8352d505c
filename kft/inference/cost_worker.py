"""One format's inference cost, measured in a fresh process (run as a script).

`kft.inference.cost` starts `python cost_worker.py REQUEST.json` once per
format, so each one's peak memory is that of a process that loads only its
own runtime: ONNX Runtime without TensorFlow, TFLite and SavedModels without
Keras, the Keras model with kft and keras-hub as a Python user has them. It
is run by path, not as `kft.inference.cost_worker`, because importing the
`kft` package would load TensorFlow into every process.

The request names the format, the artifact and an `.npz` of inputs; the
worker prints one JSON line of measurements on stdout:

- `load_seconds`: from the first import of the runtime to a loaded model.
- `latency_ms`: per-call times at batch 1, after warm-up calls.
- `throughput`: examples per second at the requested batch size, running
  the inputs (repeated until `seconds` have passed).
- `accuracy`: on the inputs' `labels`, when there are labels.
- `peak_rss_bytes`: the process's peak resident memory (`VmHWM`).
"""

import json
import resource
import sys
import time

import numpy as np

# Calls before timing: first calls allocate, trace and pick kernels.
_WARMUP_CALLS = 3


def main(request_file):
    with open(request_file) as handle:
        request = json.load(handle)
    arrays = dict(np.load(request["inputs"], allow_pickle=False))
    labels = arrays.pop("labels", None)
    started = time.perf_counter()
    predict = _RUNNERS[request["format"]](request["path"], arrays)
    load_seconds = time.perf_counter() - started
    count = len(next(iter(arrays.values())))

    latencies = _latencies(predict, arrays, count, request["latency_calls"],
                           request["seconds"])
    batch_size = request["batch_size"]
    outputs, seconds_per_pass = _passes(predict, arrays, count, batch_size, request["seconds"])
    accuracy = None
    if labels is not None:
        accuracy = float(np.mean(np.concatenate(outputs).argmax(-1) == labels))
    print(json.dumps({
        "load_seconds": load_seconds,
        "latency_ms": [1000 * value for value in latencies],
        "throughput": count / seconds_per_pass,
        "examples": count,
        "accuracy": accuracy,
        "peak_rss_bytes": _peak_rss_bytes(),
    }))


def _peak_rss_bytes():
    """This process's peak resident memory since it started its program.

    Not `getrusage`'s `ru_maxrss`: Linux carries that over `exec` from the
    forked parent, so a child of a big process reports the parent's peak.
    `VmHWM` is the peak of this program's own address space.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB elsewhere


def _latencies(predict, arrays, count, calls, seconds):
    """Seconds per call at batch 1, over `calls` inputs or `seconds`, whichever ends first."""
    for index in range(_WARMUP_CALLS):
        predict(_slice(arrays, index % count, 1))
    times, deadline = [], time.perf_counter() + seconds
    for index in range(calls):
        one = _slice(arrays, index % count, 1)
        start = time.perf_counter()
        predict(one)
        times.append(time.perf_counter() - start)
        if time.perf_counter() > deadline and len(times) >= 10:
            break
    return times


def _passes(predict, arrays, count, batch_size, seconds):
    """Each batch's outputs, and the fastest pass's seconds over all inputs."""
    batches = [_slice(arrays, start, batch_size) for start in range(0, count, batch_size)]
    for batch in batches[:_WARMUP_CALLS]:  # Each batch shape may trace once.
        predict(batch)
    if len(batches[-1][next(iter(arrays))]) != batch_size:
        predict(batches[-1])
    best, outputs, spent = None, None, 0.0
    while outputs is None or spent < seconds:
        start = time.perf_counter()
        results = [predict(batch) for batch in batches]
        elapsed = time.perf_counter() - start
        spent += elapsed
        best = elapsed if best is None else min(best, elapsed)
        outputs = results
    return outputs, best


def _slice(arrays, start, size):
    return {name: values[start:start + size] for name, values in arrays.items()}


def _keras(path, arrays):
    from kft import saving  # kft's loader: it rebuilds LoRA layers before their weights load.

    model = saving.load_model(path, compile=False)
    for key in ("text", "sentences"):
        if key in arrays:
            # A keras-hub task tokenizes strings in predict_on_batch, as in predict.
            return lambda batch: np.asarray(model.predict_on_batch(batch[key].tolist()))
    return lambda batch: np.asarray(model.predict_on_batch(batch["images"]))


def _saved_model(path, arrays):
    import tensorflow as tf

    if "text" in arrays or "sentences" in arrays:
        # keras-hub tokenizers are TensorFlow Text ops (TF Serving has them built in).
        import tensorflow_text  # noqa: F401

    loaded = tf.saved_model.load(path)
    if "sentences" in arrays:  # A token classifier: tags per word.
        signature = loaded.signatures["serving_default"]
        return lambda batch: signature(sentences=tf.constant(batch["sentences"].tolist()))[
            "tags"].numpy()
    if "text" in arrays:
        signature = loaded.signatures["serving_default"]
        return lambda batch: signature(text=tf.constant(batch["text"].tolist()))[
            "probabilities"].numpy()
    signature = loaded.signatures["predict_images"]
    return lambda batch: signature(images=tf.constant(batch["images"]))["probabilities"].numpy()


def _tflite(path, arrays):
    import warnings

    import tensorflow as tf

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        interpreter = tf.lite.Interpreter(model_path=path)
    input_index = interpreter.get_input_details()[0]["index"]
    output_index = interpreter.get_output_details()[0]["index"]
    allocated = [None]

    def predict(batch):
        images = batch["images"]
        if images.shape != allocated[0]:
            interpreter.resize_tensor_input(input_index, images.shape)
            interpreter.allocate_tensors()
            allocated[0] = images.shape
        interpreter.set_tensor(input_index, images)
        interpreter.invoke()
        return np.array(interpreter.get_tensor(output_index))

    return predict


def _onnx(path, arrays):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    names = [node.name for node in session.get_inputs()]
    return lambda batch: session.run(["probabilities"], {name: batch[name] for name in names})[0]


_RUNNERS = {"keras": _keras, "saved_model": _saved_model, "saved_model_int8": _saved_model,
            "tflite": _tflite, "tflite_int8": _tflite, "onnx": _onnx, "onnx_int8": _onnx}


if __name__ == "__main__":
    main(sys.argv[1])
