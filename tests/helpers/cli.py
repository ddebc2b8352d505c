"""Running the `kft` command as a user does: a fresh process, from a folder, or
in this process through the console script's entry point."""

import os
import pathlib
import subprocess
import sys

import numpy as np
from PIL import Image

from tests.helpers.process import REPO

KFT = [sys.executable, "-m", "kft"]
RECIPES = REPO / "tests" / "helpers" / "recipes"
TINY = str(RECIPES / "tiny.py")
TINY_TEXT = str(RECIPES / "tiny_text.py")


def kft(*args, cwd, env=None, timeout=600, background=False, **popen):
    """Runs `kft ARGS...` in `cwd`; returns the `CompletedProcess` (or the
    `Popen` with `background=True`), text output captured."""
    environment = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="3")
    environment.update(env or {})
    command = [*KFT, *map(str, args)]
    if background:
        return subprocess.Popen(command, cwd=cwd, env=environment, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, **popen)
    return subprocess.run(command, cwd=cwd, env=environment, capture_output=True, text=True,
                          timeout=timeout, **popen)


def entry_point(monkeypatch, capsys, *args):
    """`kft ARGS` in this process, through the console script's entry point
    (`python -m kft` calls the same): `(exit status, stdout, stderr)`."""
    from kft import cli

    monkeypatch.setattr(sys, "argv", ["kft", *map(str, args)])
    try:
        cli.entry_point()
        status = 0
    except SystemExit as exit_:
        status = exit_.code
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def write_pet_images(root, classes=("cat", "dog"), per_class=12):
    """Small photos of distinguishable classes in `root/CLASS/`; returns `root`."""
    root = pathlib.Path(root)
    rng = np.random.default_rng(0)
    for name, base in zip(classes, (40, 200, 120)):
        folder = root / name
        folder.mkdir(parents=True)
        for index in range(per_class):
            pixels = np.clip(base + rng.integers(-30, 30, (20, 24, 3)), 0, 255).astype("uint8")
            suffix = ("jpg", "png")[index % 2]
            Image.fromarray(pixels).save(folder / f"{index}.{suffix}")
    return root


def run_dirs(output):
    """The run directories in `output` (none if it does not exist)."""
    output = pathlib.Path(output)
    return sorted(path for path in output.iterdir() if path.is_dir()) if output.is_dir() else []
