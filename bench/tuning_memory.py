"""Memory across `kft tune` trials, with and without releasing each trial's state.

Runs a random search of N trials (default 6) of a small image classifier
(random-init MobileNetV3Small on 32x32 images, one head epoch and one
fine-tuning epoch per trial) in a fresh process per arm: "released" as `kft
tune` runs trials in-process (`keras.backend.clear_session()` and
`gc.collect()` after every trial), "kept" with that release turned off, and
"isolated" as `kft tune --isolate` runs them (one `kft run` process per
trial). Prints the search process's resident memory (RSS) after each trial,
the growth from trial 1 to trial N and per trial, and for "isolated" the
largest trial process. Figures, not pass/fail. About 5 minutes per arm on 2
busy CPU cores.

Run: `python bench/tuning_memory.py [--trials 6] [--backbone mobilenetv3small] [--arms ...]`
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

RECIPE = r"""
import numpy as np
import kft

rng = np.random.default_rng(0)
labels = np.arange(128) % 4
images = np.clip(labels[:, None, None, None] * 60 + rng.integers(0, 60, (128, 32, 32, 3)), 0, 255)

recipe = kft.Recipe(
    name="memory", params={"seed": 0, "lr": 1e-3, "backbone": "mobilenetv3small"},
    data=lambda p: kft.data.images.from_arrays(images.astype("uint8"), labels, batch_size=32,
                                               seed=p.seed),
    model=lambda p, data: kft.vision.image_classifier(p.backbone, 4, weights=None, image_size=32),
    stages=lambda p: [kft.Stage("head", epochs=1, train="head", lr=p.lr),
                      kft.Stage("all", epochs=1, train="all", lr=p.lr / 10)],
    search={"lr": kft.tuning.LogUniform(1e-4, 1e-2)},
)
"""

ARM = r"""
import json, os, resource, sys
from kft.runs.recipe import load
from kft.tuning.tuner import RecipeTuner, tune

recipe_file, trials, backbone, arm, output = sys.argv[1:6]

def rss_mb():
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

rss, children = [], []
end_trial = RecipeTuner.on_trial_end
def on_trial_end(self, trial):
    end_trial(self, trial)
    rss.append(rss_mb())
    children.append(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)
RecipeTuner.on_trial_end = on_trial_end
if arm == "kept":
    RecipeTuner.release_memory = lambda self: None

tune(load(recipe_file), trials=int(trials), seed=1, output=output,
     overrides=[f"backbone={backbone}"], isolate=arm == "isolated")
print("RSS_JSON " + json.dumps({"rss": rss, "children": children}))
"""


def run_arm(trials, backbone, arm):
    with tempfile.TemporaryDirectory() as output:
        recipe_file = os.path.join(output, "memory_recipe.py")
        with open(recipe_file, "w") as handle:
            handle.write(RECIPE)
        result = subprocess.run(
            [sys.executable, "-c", ARM, recipe_file, str(trials), backbone, arm, output],
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
    parser.add_argument("--arms", default="released,kept,isolated",
                        help="comma-separated: released (kft's default), kept, isolated")
    args = parser.parse_args()

    arms = {arm: run_arm(args.trials, args.backbone, arm) for arm in args.arms.split(",")}
    print(f"Search process RSS (MiB) after each trial, {args.backbone}, {args.trials} trials")
    print("trial  " + "  ".join(f"{name:>9}" for name in arms))
    for index in range(args.trials):
        print(f"{index + 1:>5}  " + "  ".join(f"{arms[name]['rss'][index]:9.0f}" for name in arms))
    for name, arm in arms.items():
        rss = arm["rss"]
        growth = rss[-1] - rss[0]
        print(f"{name:>9}: trial 1 -> {args.trials}: {growth:+.0f} MiB "
              f"(x{rss[-1] / rss[0]:.2f}), {growth / max(args.trials - 1, 1):+.1f} MiB per trial")
        if name == "isolated":
            print(f"{'':>9}  largest trial process: {max(arm['children']):.0f} MiB peak RSS")


if __name__ == "__main__":
    main()
