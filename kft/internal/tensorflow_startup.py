"""Starts TensorFlow once, before the rest of kft, without its C++ start-up noise.

TensorFlow's C++ runtime prints its CUDA probe ("Could not find cuda
drivers", absl's pre-initialisation warning, CPU feature hints) straight to
file descriptor 2 when it loads and when its first device starts, whatever
TF_CPP_MIN_LOG_LEVEL says. Around kft's progress output and one-line errors
that is noise, so kft starts the runtime with stderr muted. Python-level
errors are unaffected (they are raised, not printed). Set KFT_TF_LOGS=1 to
see TensorFlow's lines.

With `TF_CONFIG` set (a multi-worker cluster) the runtime is left unstarted:
`MultiWorkerMirroredStrategy` must configure collective ops before it starts.
"""

import os
import sys


def start_tensorflow():
    """Imports TensorFlow and starts its runtime, muting its C++ stderr lines."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if "tensorflow" in sys.modules or os.environ.get("KFT_TF_LOGS") or os.environ.get("TF_CONFIG"):
        import tensorflow  # noqa: F401

        return
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        import tensorflow as tf

        tf.constant(0)
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


start_tensorflow()
