"""A run's `history.csv`: one row per epoch over all stages, read, trimmed and plotted."""

import csv
import os


def read_history(path):
    """Reads `history.csv` into a list of dicts with float metric values."""
    rows = []
    with open(path, newline="") as handle:
        for row in csv.DictReader(handle):
            parsed = {}
            for key, value in row.items():
                if key == "stage":
                    parsed[key] = value
                else:
                    parsed[key] = float(value) if value not in ("", None) else None
            rows.append(parsed)
    return rows


def drop_unfinished(run_dir, epochs_done):
    """Drops history rows of epochs that the last checkpoint does not include.

    A run killed after its history row but before its checkpoint would
    otherwise log that epoch twice once resumed.
    """
    if not run_dir.history.is_file():
        return
    lines = run_dir.history.read_text().splitlines(keepends=True)
    kept = lines[:1] + [line for line in lines[1:] if int(float(line.split(",")[0])) < epochs_done]
    run_dir.publish(run_dir.history, lambda tmp: tmp.write_text("".join(kept)))


def plot_curves(history_path, boundaries, target):
    """Plots loss and accuracy per epoch with dashed lines at stage starts.

    Args:
        history_path: the run's `history.csv`.
        boundaries: `(epoch, stage_name)` for each stage start.
        target: the PNG path to write.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    if not os.path.isfile(history_path):
        return
    rows = read_history(history_path)
    if not rows:
        return
    epochs = [int(row["epoch"]) + 1 for row in rows]
    panels = [name for name in ("loss", "accuracy") if name in rows[0]]
    figure, axes = pyplot.subplots(1, len(panels), figsize=(6 * len(panels), 4), squeeze=False)
    for axis, name in zip(axes[0], panels):
        for key, style in ((name, "-o"), ("val_" + name, "-s")):
            if key in rows[0]:
                axis.plot(epochs, [row[key] for row in rows], style, label=key, markersize=3)
        for epoch, stage_name in boundaries:
            axis.axvline(epoch + 0.5, color="grey", linestyle="--", linewidth=1)
            axis.annotate(stage_name, (epoch + 0.6, 1.0), xycoords=("data", "axes fraction"),
                          va="top", fontsize=8, color="grey")
        axis.set_xlabel("epoch")
        axis.set_title(name)
        axis.legend()
    figure.tight_layout()
    figure.savefig(target, dpi=100)
    pyplot.close(figure)
