"""How deep to unfreeze: the main job swept over `unfreeze`, next to `kft suggest`.

For each dataset (`fashion_mnist`: 3,000 + 1,000 Fashion-MNIST images;
`mnist`: 4,000 + 1,000 MNIST digits), runs `kft run recipes/fashion_mnist.py`
(EfficientNet-Lite0 with ImageNet weights at 96 px, the head to convergence on
cached features, then 3 fine-tuning epochs with L2-SP: `CONDITIONS`) once per unfreeze depth
N (the top N backbone groups train; 0 = only the head), each in its own
process, and prints the final validation accuracy of every N, the best N, and
where `kft suggest`'s recommendation for that dataset falls in the sweep.

Results are kept in `OUTPUT/sweep.json` as they finish, so an interrupted
sweep continues where it stopped.

Run: `python bench/unfreeze_sweep.py [--datasets fashion_mnist,mnist]
[--depths 0,1,3,5,7,9] [--output /tmp/kft-unfreeze-sweep]`
"""

import argparse
import json
import os
import pathlib
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "fashion_mnist.py"
# The README's sweep: 96 px, the head to convergence (the recipe's defaults on 2026-12-04,
# when it was measured).
CONDITIONS = ["--set", "image_size=96", "--set", "head_epochs=30", "--set", "head_patience=3"]


def _kft(*args):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run([sys.executable, "-m", "kft", *args], env=env, check=True,
                          capture_output=True, text=True)


def _run(dataset, depth, output):
    parent = output / f"{dataset}-unfreeze{depth}"
    began = time.time()
    _kft("run", str(RECIPE), "--set", f"dataset={dataset}", "--set", f"unfreeze={depth}",
         *CONDITIONS, "--output", str(parent))
    (run_dir,) = parent.iterdir()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    head, finetune = metrics["stages"]
    return {"val_accuracy": metrics["final"]["val_accuracy"],
            "head_val_accuracy": head["metrics"]["val_accuracy"],
            "head_epochs": head["epochs"], "seconds": time.time() - began}


def _suggestion(dataset, output):
    report = output / f"suggest-{dataset}.json"
    _kft("suggest", str(RECIPE), "--set", f"dataset={dataset}", *CONDITIONS,
         "--json", str(report))
    return json.loads(report.read_text())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="fashion_mnist,mnist")
    parser.add_argument("--depths", default="0,1,3,5,7,9")
    parser.add_argument("--output", default="/tmp/kft-unfreeze-sweep")
    parser.add_argument("--no-suggest", action="store_true",
                        help="only the sweep, without running kft suggest")
    args = parser.parse_args()
    output = pathlib.Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    store = output / "sweep.json"
    results = json.loads(store.read_text()) if store.is_file() else {}
    depths = [int(depth) for depth in args.depths.split(",")]
    for dataset in args.datasets.split(","):
        for depth in depths:
            key = f"{dataset}/{depth}"
            if key not in results:
                results[key] = _run(dataset, depth, output)
                store.write_text(json.dumps(results, indent=2))
            row = results[key]
            print(f"{dataset} unfreeze={depth}: val_accuracy {row['val_accuracy']:.3f} "
                  f"(head {row['head_val_accuracy']:.3f} after {row['head_epochs']} epochs), "
                  f"{row['seconds']:.0f}s", flush=True)
    print()
    print("| dataset | " + " | ".join(f"N={depth}" for depth in depths)
          + " | best N | suggested N (layer decay) |")
    print("|---" * (len(depths) + 3) + "|")
    for dataset in args.datasets.split(","):
        scores = [results[f"{dataset}/{depth}"]["val_accuracy"] for depth in depths]
        best = depths[scores.index(max(scores))]
        suggested = "-"
        if not args.no_suggest:
            found = _suggestion(dataset, output)
            suggested = f"{found['unfreeze']} ({found['layer_decay']:g})"
        print(f"| {dataset} | " + " | ".join(f"{score:.3f}" for score in scores)
              + f" | {best} | {suggested} |")


if __name__ == "__main__":
    main()
