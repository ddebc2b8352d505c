"""Build an optimizer over every variable that may train, before `fit`.

Keras builds a model's optimizer over the variables trainable at the first
step (under a `tf.distribute` strategy: before any callback runs) and rejects
other variables afterwards. To unfreeze inside one `fit`, or between two fits
without recompiling, the optimizer is built up front over all variables that
may become trainable; it then keeps one set of slots for each and the
moments of variables that train early are never reset.
"""

from kft.errors import KftError
from kft.model_tree import layer_tree


def prepare_optimizer(model, optimizer=None, variables=None):
    """Builds `optimizer` (default: the model's) over every variable that may train.

    Works with any `keras.optimizers.Optimizer` (slots are created by the
    optimizer's own `build`), under the model's distribution strategy.
    Calling it again on an optimizer that already covers the variables does
    nothing.

    Args:
        model: a built Keras model, usually compiled.
        optimizer: the optimizer to build; defaults to `model.optimizer`.
        variables: the variables to build it over; defaults to every
            variable of the model that was created trainable, frozen or not.

    Returns:
        The optimizer.

    Raises:
        KftError: the model is not built or compiled, or the optimizer was
            already built over fewer variables.

    Example:
    ```python
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    kft.prepare_optimizer(model)
    model.fit(data, epochs=6, callbacks=[kft.GradualUnfreezing(every_epochs=2)])
    ```
    """
    optimizer = optimizer if optimizer is not None else getattr(model, "optimizer", None)
    if optimizer is None:
        raise KftError(
            "The model has no optimizer: call model.compile(optimizer=...) before "
            "preparing it for unfreezing."
        )
    if not model.built:
        raise KftError(
            f"Model {model.name!r} is not built yet: call it once on a batch (or build "
            "it with input shapes) before preparing its optimizer."
        )
    if variables is None:
        variables = trainable_candidates(model)
    if optimizer.built:
        missing = unknown_variables(optimizer, variables)
        if missing:
            raise KftError(
                f"The optimizer was already built over other variables and does not "
                f"know {len(missing)} of those that may train (e.g. {missing[0].path}). "
                "Compile the model with a new optimizer and prepare it before the "
                "first fit."
            )
        return optimizer
    strategy = getattr(model, "distribute_strategy", None)
    if strategy is not None:
        with strategy.scope():
            optimizer.build(list(variables))
    else:
        optimizer.build(list(variables))
    return optimizer


def trainable_candidates(model):
    """Every variable of `model` created as trainable, frozen or not, in model order."""
    candidates = {id(v) for node in layer_tree(model).walk() for v in node.own_variables}
    return [v for v in model.weights if id(v) in candidates]


def unknown_variables(optimizer, variables):
    """The variables among `variables` that a built `optimizer` has no slots for."""
    inner = optimizer
    while not hasattr(inner, "_trainable_variables_indices") and hasattr(
        inner, "inner_optimizer"
    ):
        inner = inner.inner_optimizer
    indices = getattr(inner, "_trainable_variables_indices", None)
    if indices is None:
        return []
    return [v for v in variables if inner._var_key(v) not in indices]
