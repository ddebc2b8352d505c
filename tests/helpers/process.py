"""Fresh Python processes for checks that must set TensorFlow up before it starts."""

import os
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[2]


def run_script(source, timeout=300):
    """Runs Python `source` in a fresh process from the repository root.

    For checks that must configure TensorFlow before it starts (two logical
    CPUs for MirroredStrategy), leaving the test process untouched. Fails the
    test with the script's output when it exits non-zero.

    Returns:
        The `subprocess.CompletedProcess`.
    """
    result = subprocess.run(
        [sys.executable, "-c", source], cwd=REPO, capture_output=True, text=True,
        timeout=timeout, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3",
                              # Scripts that chdir still import kft and tests from here.
                              "PYTHONPATH": os.pathsep.join(
                                  filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))},
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    return result
