"""What every tracker does, and the tracker that does nothing."""

# In the run directory: which tracker run it logs to, so --resume continues it.
TRACKING_FILE = "tracking.json"


class NullTracker:
    """No tracking: every method does nothing.

    The interface a tracker implements; the runner calls it in this order:
    `start` once the run directory exists, `callbacks` for each stage's
    `fit`, then `finish` after the final results or `end` on a failure.
    No method raises for a tracking problem: training never depends on it.

    Example:
    ```python
    tracker = NullTracker()
    tracker.start(run_dir, recipe, params, stages)
    ```
    """

    def start(self, run_dir, recipe, params, stages):
        """Opens (or, on resume, reopens) the tracker's run.

        Args:
            run_dir: the `kft.runs.run_directory.RunDirectory`.
            recipe: the `kft.Recipe` (its name and source file).
            params: the resolved params namespace (`params.json`).
            stages: the recipe's `kft.Stage`s, in order.
        """

    def callbacks(self):
        """Keras callbacks for a stage's `fit`.

        Returns:
            A list (empty here).
        """
        return []

    def finish(self, run_dir, metrics):
        """Logs the final results and closes the run as finished.

        Args:
            run_dir: the `RunDirectory` (its plots, model and metrics files).
            metrics: what `metrics.json` holds.
        """

    def end(self, status, error=None):
        """Closes the run after a failure.

        Args:
            status: kft's status, `"failed"` or `"interrupted"`.
            error: the exception, if any.
        """
