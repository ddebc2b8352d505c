"""Answers requests from SavedModel exports in a process that cannot import kft or keras-hub.

The stand-in for TF Serving in tests: TensorFlow only (plus TF Text's ops
with `--tensorflow-text`, which the official serving image links in).

Usage: `python serving_process.py REQUESTS.json RESULTS.json [--tensorflow-text]`

REQUESTS.json is a list of `{"export": DIR, "signature": NAME, "argument":
NAME}` plus one of `"files"` (paths whose bytes form a string batch), `"npy"`
(a `.npy` array) or `"strings"` (a list of str). RESULTS.json gets
`{"results": [{every output of the signature, "inputs"}, ...],
"modules": [kft or keras-hub modules loaded, which must be none]}`.
"""

import importlib.abc
import json
import sys

_FORBIDDEN = ("kft", "keras_hub")


class _Forbidden(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in _FORBIDDEN:
            raise ImportError(f"serving an export must not need {name}")
        return None


sys.meta_path.insert(0, _Forbidden())

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

if "--tensorflow-text" in sys.argv:
    import tensorflow_text  # noqa: E402,F401  (registers the tokenizer ops)


def _inputs(request):
    if "files" in request:
        return tf.constant([open(path, "rb").read() for path in request["files"]])
    if "npy" in request:
        return tf.constant(np.load(request["npy"]))
    return tf.constant(request["strings"])


def _plain(array):
    """An output as JSON: numbers as lists, strings decoded."""
    if array.dtype == object:
        return np.vectorize(lambda item: item.decode(), otypes=[object])(array).tolist()
    return array.tolist()


def main(requests_path, results_path):
    loaded = {}
    results = []
    for request in json.load(open(requests_path)):
        export = request["export"]
        if export not in loaded:
            loaded[export] = tf.saved_model.load(export)
        function = loaded[export].signatures[request["signature"]]
        outputs = function(**{request["argument"]: _inputs(request)})
        _, kwargs = function.structured_input_signature
        results.append({
            **{key: _plain(value.numpy()) for key, value in outputs.items()},
            "inputs": {
                key: [spec.dtype.name, spec.shape.as_list()] for key, spec in kwargs.items()
            },
        })
    modules = sorted(name for name in sys.modules if name.split(".")[0] in _FORBIDDEN)
    json.dump({"results": results, "modules": modules}, open(results_path, "w"))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
