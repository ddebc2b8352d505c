"""Compiles a model for one stage: optimizer, schedule and per-layer rates."""

import keras

from kft import schedules
from kft.training import accumulation
from kft.errors import KftError
from kft.optimizers import LayerwiseLR

_OPTIMIZERS = {
    "adam": lambda lr, wd: keras.optimizers.Adam(lr),
    "adamw": lambda lr, wd: keras.optimizers.AdamW(lr, weight_decay=wd),
    "sgd": lambda lr, wd: keras.optimizers.SGD(lr, momentum=0.9),
    "lion": lambda lr, wd: keras.optimizers.Lion(lr),
}
OPTIMIZER_NAMES = tuple(_OPTIMIZERS)
# `kft.Recipe`'s default loss.
_DEFAULT_LOSS = "sparse_categorical_crossentropy"


def compile_stage(model, recipe, stage, steps_per_epoch, accumulate=1):
    """Compiles `model` with the optimizer `stage` asks for.

    Call it after the stage's freezing is applied: Keras collects the
    trainable variables when the train function is built.

    Args:
        model: the model to compile.
        recipe: the `Recipe` (loss, metrics).
        stage: the `Stage` (optimizer, lr, schedule, warmup, layer_decay,
            weight_decay).
        steps_per_epoch: batches per epoch, to size schedules.
        accumulate: batches per optimizer update (gradient accumulation).
    """
    model.compile(
        optimizer=stage_optimizer(model, stage, steps_per_epoch, accumulate),
        jit_compile=recipe.jit_compile,
        **loss_and_metrics(model, recipe),
    )


def compile_for_evaluation(model, recipe):
    """Compiles `model` with the recipe's loss and metrics, to evaluate it."""
    model.compile(optimizer="adam", jit_compile=recipe.jit_compile,
                  **loss_and_metrics(model, recipe))


def loss_and_metrics(model, recipe):
    """`model.compile`'s loss and metrics arguments for the recipe.

    A causal LM's batches weigh each position (0 on prompts and padding), so
    its metrics are weighted ones, and the recipe's default loss (sparse
    categorical cross-entropy on probabilities) becomes the mean over
    response tokens on logits (`kft.text.response_loss`). Its generation
    is greedy unless `kft.text.generate` is told otherwise.
    """
    if not is_causal_lm(model):
        return {"loss": recipe.loss, "metrics": list(recipe.metrics)}
    from kft.models.instruction_preprocessor import response_loss

    loss = response_loss() if recipe.loss == _DEFAULT_LOSS else recipe.loss
    return {"loss": loss, "metrics": [], "weighted_metrics": list(recipe.metrics),
            "sampler": "greedy"}


def is_causal_lm(model):
    import keras_hub

    return isinstance(model, keras_hub.models.CausalLM)


def stage_optimizer(model, stage, steps_per_epoch, accumulate=1):
    """Builds the optimizer for a stage (see `Stage` for the options).

    With `accumulate` > 1 it updates once every `accumulate` batches.
    """
    learning_rate = stage_learning_rate(stage, steps_per_epoch, accumulate)
    if callable(stage.optimizer):
        optimizer = stage.optimizer(learning_rate)
    else:
        name = str(stage.optimizer).lower()
        if name not in _OPTIMIZERS:
            raise KftError(
                f"Stage {stage.name!r}: unknown optimizer {stage.optimizer!r}; "
                f"use one of {', '.join(_OPTIMIZERS)} or a callable."
            )
        optimizer = _OPTIMIZERS[name](learning_rate, stage.weight_decay)
    # On the wrapped optimizer: LayerwiseLR hands it every gradient.
    accumulation.accumulate_gradients(optimizer, accumulate)
    # LayerwiseLR applies per-group rates, weight decay that skips biases and
    # norms, and OneCycle's momentum cycle.
    if stage.layer_decay is not None or stage.weight_decay or _schedule_name(stage) == "one_cycle":
        optimizer = LayerwiseLR(
            optimizer,
            layer_decay=stage.layer_decay,
            weight_decay=stage.weight_decay,
            model=model,
        )
    return optimizer


def _schedule_name(stage):
    return str(stage.schedule or "").lower().replace("-", "_")


def stage_learning_rate(stage, steps_per_epoch, accumulate=1):
    """The stage's learning rate: a float, or a schedule over its updates.

    With `accumulate` > 1 the schedule counts optimizer updates (one per
    `accumulate` batches), so warmup and decay span the stage as without.
    """
    if _schedule_name(stage) in ("", "none"):
        return float(stage.lr)
    total = max(1, steps_per_epoch * stage.epochs // accumulate)
    schedule = schedules.from_name(
        stage.schedule, peak_lr=float(stage.lr), total_steps=total, warmup=stage.warmup,
        steps_per_epoch=max(1, steps_per_epoch // accumulate),
    )
    if accumulate > 1:
        schedule = schedules.PerUpdateSchedule(schedule, accumulate)
    return schedule
