"""What a search shows its user: the trials table, its CSV and plot, the best trial."""

import csv
import dataclasses
import math
from typing import Optional

from kft.runs import history
from kft.errors import KftError

# keras-tuner's trial statuses, as the table shows them. A trial still
# RUNNING in a reloaded search was interrupted and runs again on resume.
_STATUS = {"COMPLETED": "completed", "FAILED": "failed", "INVALID": "failed",
           "RUNNING": "interrupted"}


@dataclasses.dataclass
class TrialRow:
    """One trial of a search.

    Args:
        trial: keras-tuner's trial id.
        status: `"completed"`, `"failed"` or `"interrupted"`.
        score: the objective's best value over the trial's epochs, or `None`.
        seconds: how long the trial ran.
        values: the params the trial set (searched values, and the budget).
        run_dir: the trial's run directory, relative to the tune directory.
        message: why a failed trial failed.
    """

    trial: str
    status: str
    score: Optional[float]
    seconds: Optional[float]
    values: dict
    run_dir: Optional[str]
    message: Optional[str]


def status_name(keras_tuner_status):
    return _STATUS.get(keras_tuner_status, str(keras_tuner_status).lower())


def best_value(history_path, objective, direction):
    """The best value of `objective` over the epochs in a run's `history.csv`.

    Returns:
        The value, NaN when every epoch's value is NaN.

    Raises:
        KftError: the history has no `objective` column.
    """
    rows = history.read_history(history_path) if history_path.is_file() else []
    if not rows or objective not in rows[0]:
        known = ", ".join(key for key in (rows[0] if rows else {}) if key not in ("epoch", "stage"))
        raise KftError(
            f"The objective {objective!r} is not a metric the recipe's runs log "
            f"({known or 'no epochs logged'}). Pass --objective one of them, or add the "
            "metric to the recipe's metrics (and give it validation data for val_ metrics)."
        )
    values = [row[objective] for row in rows if row[objective] is not None and not math.isnan(row[objective])]
    if not values:
        return float("nan")
    return float(min(values) if direction == "min" else max(values))


def best_row(rows, direction):
    """The completed trial with the best score (the first of equals), or `None`."""
    scored = [row for row in rows if row.status == "completed" and row.score is not None
              and not math.isnan(row.score)]
    if not scored:
        return None
    pick = min if direction == "min" else max
    return pick(scored, key=lambda row: row.score)


def write_csv(rows, names, objective, path, publish):
    """Writes one line per trial: id, status, objective, seconds, values, run, message."""
    header = ["trial", "status", objective, "seconds", *names, "run_dir", "message"]

    def write(tmp):
        with open(tmp, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(header)
            for row in rows:
                writer.writerow([
                    row.trial, row.status, "" if row.score is None else repr(row.score),
                    "" if row.seconds is None else f"{row.seconds:.1f}",
                    *[_csv_value(row.values.get(name)) for name in names],
                    row.run_dir or "", row.message or "",
                ])

    publish(path, write)


def _csv_value(value):
    return "" if value is None else repr(value) if isinstance(value, float) else str(value)


def plot(rows, objective, direction, path):
    """Plots the objective per trial in run order, the best so far, and failures."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, axis = pyplot.subplots(figsize=(7, 4))
    numbers = list(range(1, len(rows) + 1))
    done = [(n, row.score) for n, row in zip(numbers, rows)
            if row.status == "completed" and row.score is not None and not math.isnan(row.score)]
    if done:
        axis.plot([n for n, _ in done], [s for _, s in done], "o", label=objective)
        best, best_so_far = None, []
        pick = min if direction == "min" else max
        for _, score in done:
            best = score if best is None else pick(best, score)
            best_so_far.append(best)
        axis.step([n for n, _ in done], best_so_far, where="post", color="grey",
                  label="best so far")
    failed = [n for n, row in zip(numbers, rows) if row.status != "completed"]
    for index, number in enumerate(failed):
        axis.axvline(number, color="red", linestyle=":", linewidth=1,
                     label="failed or interrupted" if index == 0 else None)
    axis.set_xlabel("trial (in run order)")
    axis.set_ylabel(f"{objective} ({direction})")
    axis.set_xlim(0.5, max(len(rows), 1) + 0.5)
    axis.set_xticks(numbers)
    axis.set_xticklabels([row.trial for row in rows], fontsize=8)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    pyplot.close(figure)


def check_objective_direction(direction):
    if direction not in ("min", "max"):
        raise KftError(f"--direction must be min or max, got {direction!r}.")
