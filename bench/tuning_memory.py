"""Memory across `kft tune` trials, with and without releasing each trial's state.

Runs a random search of N trials (default 6) of a small image classifier
(random-init MobileNetV3Small on 32x32 images, one head epoch and one
fine-tuning epoch per trial) in a fresh process per arm: once as `kft tune`
runs it (`keras.backend.clear_session()` and `gc.collect()` after every
trial), once with that release turned off. Prints the resident memory (RSS)
after each trial, the growth from trial 1 to trial N, and the growth per
trial. Figures, not pass/fail.

Run: `python bench/tuning_memory.py [--trials 6] [--backbone mobilenetv3small]`
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

ARM = r"""
import json, os, resource, sys
import numpy as np
import kft
from kft.data import images
from kft.recipe import Recipe, Stage
from kft.tuning import LogUniform
from kft.tuning.tuner import RecipeTuner, tune

trials, backbone, release, output = int(sys.argv[1]), sys.argv[2], sys.argv[3] == "1", sys.argv[4]
rng = np.random.default_rng(0)
labels = np.arange(128) % 4
x = np.clip(labels[:, None, None, None] * 60 + rng.integers(0, 60, (128, 32, 32, 3)), 0, 255)

def rss_mb():
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

rss = []
end_trial = RecipeTuner.on_trial_end
def on_trial_end(self, trial):
    end_trial(self, trial)
    rss.append(rss_mb())
RecipeTuner.on_trial_end = on_trial_end
if not release:
    RecipeTuner.release_memory = lambda self: None

recipe = Recipe(
    name="memory", params={"seed": 0, "lr": 1e-3},
    data=lambda p: images.from_arrays(x.astype("uint8"), labels, batch_size=32, seed=p.seed),
    model=lambda p, data: kft.vision.image_classifier(backbone, 4, weights=None, image_size=32),
    stages=lambda p: [Stage("head", epochs=1, train="head", lr=p.lr),
                      Stage("all", epochs=1, train="all", lr=p.lr / 10)],
    search={"lr": LogUniform(1e-4, 1e-2)},
)
tune(recipe, trials=trials, seed=1, output=output)
print("RSS_JSON " + json.dumps(rss))
"""


def run_arm(trials, backbone, release):
    with tempfile.TemporaryDirectory() as output:
        result = subprocess.run(
            [sys.executable, "-c", ARM, str(trials), backbone, "1" if release else "0", output],
            capture_output=True, text=True,
        )
    if result.returncode != 0:
        sys.exit(result.stdout[-2000:] + result.stderr[-4000:])
    line = next(line for line in result.stdout.splitlines() if line.startswith("RSS_JSON "))
    return json.loads(line[len("RSS_JSON "):])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--backbone", default="mobilenetv3small")
    args = parser.parse_args()

    arms = {}
    for release in (True, False):
        name = "released" if release else "kept"
        arms[name] = run_arm(args.trials, args.backbone, release)
    print(f"RSS (MiB) after each trial, {args.backbone}, {args.trials} trials")
    print("trial  " + "  ".join(f"{name:>9}" for name in arms))
    for index in range(args.trials):
        print(f"{index + 1:>5}  " + "  ".join(f"{arms[name][index]:9.0f}" for name in arms))
    for name, rss in arms.items():
        growth = rss[-1] - rss[0]
        print(f"{name:>9}: trial 1 -> {args.trials}: +{growth:.0f} MiB "
              f"(x{rss[-1] / rss[0]:.2f}), {growth / max(args.trials - 1, 1):.1f} MiB per trial")


if __name__ == "__main__":
    main()
