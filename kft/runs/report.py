"""What a run shows its user: stage headers, the summary table, the curves."""

import csv

import click


def stage_header(index, count, stage, trainable, total):
    """Prints the banner that opens a stage."""
    title = f"Stage {index + 1}/{count}: {stage.name}"
    detail = (
        f"{stage.epochs} epoch(s), trains {stage.train!r}: {trainable:,} of {total:,} "
        f"parameters, lr {stage.lr:g}"
    )
    if stage.schedule:
        detail += f" ({stage.schedule} schedule)"
    if stage.layer_decay:
        detail += f", layer decay {stage.layer_decay:g}"
    click.secho(f"\n== {title} ==", bold=True)
    click.echo(detail)


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


def summary_table(stage_rows):
    """Formats one row per stage: epochs, time, trainable params, last metrics."""
    columns = ["stage", "epochs", "time", "trainable"]
    metric_names = []
    for row in stage_rows:
        for key in row["metrics"]:
            if key not in metric_names:
                metric_names.append(key)
    header = columns + metric_names
    lines = []
    for row in stage_rows:
        cells = [
            row["name"],
            str(row["epochs"]),
            f"{row['seconds']:.0f}s",
            f"{row['trainable']:,}",
        ] + [_fmt(row["metrics"].get(name)) for name in metric_names]
        lines.append(cells)
    return table(header, lines)


def table(header, rows):
    """Formats rows of strings under a header as aligned columns."""
    widths = [max([len(h)] + [len(cells[i]) for cells in rows]) for i, h in enumerate(header)]
    out = ["  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip()]
    out.append("  ".join("-" * w for w in widths))
    out += ["  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip() for cells in rows]
    return "\n".join(out)


def _fmt(value):
    return "" if value is None else f"{value:.4f}"


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
