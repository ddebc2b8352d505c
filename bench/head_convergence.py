"""The head stage before and after training it to convergence on cached features.

The case a new user tried: a small image folder far from ImageNet (1,500
images, 10 classes: 150 Fashion-MNIST test images per class written as PNG
files), `recipes/cats_dogs.py` with EfficientNet-Lite0 at 64 px and one
fine-tuning epoch. Runs, each in its own process:

- before: the former head stage, 3 epochs through the whole model (the
  augmentation made caching inexact, so nothing was cached);
- after: today's default, the head on features of the un-augmented images
  computed once, until val_loss stops improving (at most 30 epochs);
- random init: today's default from random weights;
- after with the depth `kft suggest` recommends for this folder (the top 7
  groups, layer decay 1) at 1e-3.

Prints the head stage's epochs, seconds and validation accuracy, the final
validation accuracy and the run's wall time of each.

Run: `python bench/head_convergence.py [--output /tmp/kft-head-convergence]`
"""

import argparse
import json
import os
import pathlib
import subprocess
import sys
import time

import numpy as np
from PIL import Image

REPO = pathlib.Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "cats_dogs.py"
COMMON = ["--set", "backbone=efficientnet_lite0", "--set", "image_size=64",
          "--set", "finetune_epochs=1"]
CASES = {
    "before (3 head epochs, uncached)": ["--set", "head_epochs=3", "--set", "head_patience=0",
                                         "--set", "cache_features=false"],
    "after (cached, to convergence)": [],
    "random init (after's settings)": ["--set", "weights=none"],
    # What `kft suggest` recommends for this folder (top 7 groups, decay 1), at the
    # rate 1e-4 instead of the photo default 1e-5 (1e-3 collapsed to 0.25 in one epoch).
    "after + kft suggest's depth, lr 1e-4": ["--set", "unfreeze=7", "--set", "layer_decay=1",
                                            "--set", "finetune_lr=1e-4"],
}


def write_folder(root, per_class=150):
    """`per_class` Fashion-MNIST test images per class as PNG files in `root/CLASS/`."""
    from kft.data.datasets import fashion_mnist

    if root.is_dir():
        return root
    _, (x, y), _ = fashion_mnist.load_arrays(train_size=10, test_size=per_class * 10)
    partial = root.with_name(root.name + ".partial")
    for label, name in enumerate(fashion_mnist.CLASS_NAMES):
        folder = partial / name.replace("/", "-").replace(" ", "_")
        folder.mkdir(parents=True)
        for index in np.flatnonzero(y == label):
            Image.fromarray(x[index]).save(folder / f"{index}.png")
    partial.rename(root)
    return root


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="/tmp/kft-head-convergence")
    parser.add_argument("--cases", default=None,
                        help="comma-separated case numbers to run (default: all)")
    args = parser.parse_args()
    chosen = None if args.cases is None else {int(n) for n in args.cases.split(",")}
    output = pathlib.Path(args.output)
    folder = write_folder(output / "clothes")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    print("| case | head epochs | head stage | head val acc | final val acc | run |")
    print("|---|---|---|---|---|---|")
    for number, (case, extra) in enumerate(CASES.items()):
        if chosen is not None and number not in chosen:
            continue
        parent = output / f"run{number}"
        began = time.time()
        subprocess.run([sys.executable, "-m", "kft", "run", str(RECIPE), "--data", str(folder),
                        *COMMON, *extra, "--output", str(parent)],
                       env=env, check=True, capture_output=True, text=True)
        seconds = time.time() - began
        (run_dir,) = parent.iterdir()
        metrics = json.loads((run_dir / "metrics.json").read_text())
        head = metrics["stages"][0]
        print(f"| {case} | {head['epochs']} | {head['seconds']:.0f} s | "
              f"{head['metrics']['val_accuracy']:.3f} | "
              f"{metrics['final']['val_accuracy']:.3f} | {seconds:.0f} s |", flush=True)


if __name__ == "__main__":
    main()
