"""A stage's regulariser in a run (`Stage(regularize=...)`).

The runner binds it to the model once the stage's freezing is applied and
fits `kft.regularizers.Regularized` (the model's layers, the penalty added to
its loss) instead of the model; checkpoints hold the model alone. What the
penalty compares against (the stage's start: L2-SP's start weights, a frozen
copy's weights) is written to `regularizers/stage-N.npz` in the run directory,
so a run resumed in the middle of the stage compares against the same start.
L2-SP needs no inputs and also regularises a head trained on cached features;
KL and feature distance need the backbone, so their stages never cache.
"""

import numpy as np

from kft import regularizers
from kft.training import feature_cache


def stage_regularizer(stage):
    """The stage's regulariser (unbound), or `None`."""
    return regularizers.from_spec(stage.regularize)


def reference_file(run_dir, index):
    """Where stage `index` (0-based) keeps what its regulariser compares against."""
    return run_dir.path / "regularizers" / f"stage-{index + 1}.npz"


def bind(regularizer, model, run_dir, index, mid_stage):
    """Binds `regularizer` to `model` at the stage's start, or to the saved start
    when the run resumes in the middle of the stage (`mid_stage`)."""
    path = reference_file(run_dir, index)
    if mid_stage and path.is_file():
        regularizer.bind(model, reference=_read(path))
        return regularizer
    regularizer.bind(model)
    path.parent.mkdir(exist_ok=True)
    run_dir.publish(path, lambda tmp: _write(tmp, regularizer.reference_arrays()))
    return regularizer


def wrap(regularizer, fit_model, model, train, validation):
    """`(Regularized model, train, validation)` to fit instead of `fit_model`.

    Args:
        regularizer: the bound regulariser.
        fit_model: what the stage would fit: `model`, or its head on cached
            features.
        model: the compiled full model (its loss, metrics and optimizer are
            shared).
        train, validation: the datasets for `fit_model`.
    """
    with fit_model.distribute_strategy.scope():
        trainer = regularizers.Regularized(fit_model, regularizer)
    feature_cache.compile_head(trainer, model)
    if fit_model is model:
        # A keras-hub task's fit applies its preprocessor; the wrapper's does not.
        train = feature_cache.preprocessed(model, train)
        if validation is not None:
            validation = feature_cache.preprocessed(model, validation)
    return trainer, train, validation


def _write(path, arrays):
    keys = list(arrays)
    with open(path, "wb") as handle:
        np.savez(handle, *[arrays[key] for key in keys], keys=np.array(keys, dtype=str))


def _read(path):
    with np.load(path) as stored:
        keys = [str(key) for key in stored["keys"]]
        return {key: stored[f"arr_{i}"] for i, key in enumerate(keys)}
