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


def kill_points(source, folders, points, timeout=300):
    """Runs Python `source` once per kill point, all at once, each in its own folder.

    The script receives its folder and point as `sys.argv[1:3]` and is
    expected to SIGKILL itself there. Fails the test unless every run died
    of SIGKILL.
    """
    environment = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3",
                   "PYTHONPATH": os.pathsep.join(
                       filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    started = [subprocess.Popen([sys.executable, "-c", source, str(folder), point], cwd=REPO,
                                env=environment, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
               for folder, point in zip(folders, points)]
    for process, point in zip(started, points):
        _, stderr = process.communicate(timeout=timeout)
        assert process.returncode == -9, f"{point}: {stderr[-3000:]}"
