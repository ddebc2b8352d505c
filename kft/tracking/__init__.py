"""Experiment tracking: a kft run recorded in MLflow while it trains.

`create` returns a tracker with the same four methods whatever the kind
(`start`, `callbacks`, `finish`, `end`), so the runner calls them without
checking whether tracking is on: `NullTracker` does nothing.

Example:
```python
tracker = kft.tracking.create("mlflow", uri="http://127.0.0.1:5000")
```
"""

from kft.errors import KftError
from kft.tracking.base import TRACKING_FILE
from kft.tracking.base import NullTracker

KINDS = ("mlflow",)
_OFF = ("", "none")


def create(kind, uri=None, experiment=None, out=None):
    """The tracker for the `tracking` run param.

    Args:
        kind: `"mlflow"`, or `""` / `"none"` for no tracking.
        uri: the tracking URI (a server, `sqlite:///...`); default: the run
            directory's `tracking.json` when resuming, else
            `MLFLOW_TRACKING_URI`, else `./mlruns/mlflow.db`.
        experiment: the experiment name; default `MLFLOW_EXPERIMENT_NAME`,
            else the recipe's name.
        out: the `kft.console.Console` that reports where the run is logged
            and the one warning a tracking failure gives.

    Returns:
        A tracker (`NullTracker` when `kind` is off).

    Raises:
        KftError: an unknown kind, a URI without tracking, or MLflow not
            installed.
    """
    kind = (kind or "").strip().lower()
    if kind in _OFF:
        if uri:
            raise KftError("A tracking URI needs tracking on: add --track mlflow "
                           "(or --set tracking=mlflow).")
        return NullTracker()
    if kind not in KINDS:
        raise KftError(f"Unknown tracking {kind!r}: use 'mlflow', or '' for none.")
    from kft.tracking.mlflow_tracker import MlflowTracker

    return MlflowTracker(uri=uri, experiment=experiment, out=out)
