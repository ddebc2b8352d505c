"""Recipes: named hyperparameters, how to build data and model, and the stages."""

import dataclasses
import hashlib
import importlib.util
import json
import numbers
import os
import pathlib
import sys
import types
from typing import Any, Callable, Optional, Sequence

from kft.errors import KftError
from kft.internal.checks import is_number

# Params every recipe takes without declaring them; a recipe that declares
# one changes its default. Runs save them in params.json, so --resume keeps them.
RUN_PARAMS = {
    # kft.training.distribute.STRATEGY_NAMES; `kft run --strategy NAME` sets it.
    "strategy": "auto",
    # kft.training.precision.PRECISIONS: float32, mixed_float16, mixed_bfloat16.
    "precision": "float32",
    # Batches per optimizer update (gradient accumulation).
    "accumulate": 1,
    # kft.tracking.KINDS ("mlflow") or "" for none; `kft run --track mlflow` sets it.
    "tracking": "",
}


# A causal-LM run's answers to held-out prompts (`Recipe.generation`).
GENERATION_DEFAULTS = {"max_tokens": 64, "prompts": 64, "split": None, "temperature": None,
                       "top_p": None, "top_k": None, "seed": None}


@dataclasses.dataclass
class Stage:
    """One phase of a fine-tuning plan: what trains, for how long, how fast.

    Every stage starts from the model as the previous stage left it. Before
    it trains, everything is frozen and then `train` is unfrozen, so what a
    stage declares trainable is exactly what trains.

    Args:
        name: a short name shown in headers, history and plots.
        epochs: number of epochs of this stage.
        train: what is trainable, in kft's selection language (`kft.select`):
            `"head"`, `"all"`, `"groups:2"`, `"top:30"`, `"biases"`,
            `"adapters"`, a layer-name pattern (`"conv5_.*"`), a
            comma-joined union, a callable or selector.
        lr: base learning rate (peak rate when a schedule is used).
        optimizer: `"adam"`, `"adamw"`, `"sgd"` (momentum 0.9), `"lion"`, or a
            callable `lr -> keras.optimizers.Optimizer`.
        schedule: `None` or `"none"` (constant) or a `kft.schedules` name: `"cosine"`,
            `"linear"`, `"polynomial"`, `"constant"` (each after `warmup`),
            `"slanted_triangular"` or `"one_cycle"`.
        warmup: warmup length for `schedule`: steps (int) or a fraction of the
            stage's steps (float below 1).
        layer_decay: layer-wise learning-rate decay per layer group below the
            top (e.g. 0.9); `None` for one rate everywhere.
        weight_decay: decoupled weight decay (skips biases and norms).
        train_bn: also train BatchNormalization layers that `train` leaves
            frozen, in training mode (fastai's `train_bn`).
        cache_features: train the head on backbone features computed once.
            `None`: whenever that is exact (nothing below the head trains
            or draws random numbers). `True`: also with augmentation or
            dropout below the head, whose features are then those of the
            un-augmented images (Keras' fast feature extraction); an error
            when something below the head trains. `False`: never.
        callbacks: extra Keras callbacks for this stage.
        early_stopping: `None`, or a patience in epochs: the stage ends once
            `val_loss` has not improved for that many epochs, and ends (then
            or after `epochs`) with the weights of its best `val_loss` epoch.
            The next stage still starts at this stage's last epoch number,
            so the history shows the gap and a resumed run lines up.
        regularize: keep what the pretrained model knew during this stage
            (`kft.regularizers`): `"l2sp:ALPHA"` or `"l2sp:ALPHA,BETA"`
            (weights that train pulled towards their values at the stage's
            start; BETA: plain L2 on the new head), `"kl:WEIGHT"` (KL to the
            pretrained outputs), `"features:WEIGHT"` (distance to the
            pretrained backbone features), a `kft.regularizers` object, or
            `None`. The history logs the penalty (`l2sp_penalty`, ...);
            `loss` includes it, `val_loss` does not. KL and features run the
            backbone on every batch, so they turn feature caching off.
    """

    name: str
    epochs: int
    train: Any = "all"
    lr: float = 1e-3
    optimizer: Any = "adam"
    schedule: Optional[str] = None
    warmup: float = 0.0
    layer_decay: Optional[float] = None
    weight_decay: float = 0.0
    train_bn: bool = False
    cache_features: Optional[bool] = None
    callbacks: Sequence[Any] = ()
    early_stopping: Optional[int] = None
    regularize: Any = None

    def __post_init__(self):
        # Checked here, when the recipe's stages() builds the plan: before
        # any data is read or model built, and so before a run directory.
        if not isinstance(self.name, str) or not self.name.strip():
            raise KftError(f"A Stage needs a non-empty name, got {self.name!r}.")
        problem = _stage_problem(self)
        if problem:
            raise KftError(f"Stage {self.name!r}: {problem}")


@dataclasses.dataclass
class Recipe:
    """A fine-tuning job: hyperparameters, data, model and stages.

    A recipe file is a Python file that defines `recipe = kft.Recipe(...)`.
    `kft run FILE --set key=value` overrides any entry of `params`; the
    builders receive the resolved params as an attribute namespace.

    Args:
        name: the recipe's name; run directories are `runs/<name>-<time>/`.
        params: named hyperparameters with their defaults. A `data` entry is
            what `kft run --data PATH` sets. `RUN_PARAMS` (`strategy`,
            `precision`, `accumulate`) are added unless declared here.
        data: `params -> kft.data.images.ImageData` (or any object with
            `train`, `validation`, `class_names`).
        model: `(params, data) -> keras.Model`, not compiled.
        stages: `params -> list of Stage`.
        metrics: Keras metrics to compile with; the loss is sparse categorical
            cross-entropy unless `loss` is given. A causal LM weighs them by
            its loss weights (the response tokens).
        loss: a Keras loss or its name. For a causal LM the default is the
            mean cross-entropy over response tokens (`kft.text.response_loss`).
        monitor: the validation metric that picks the best checkpoint (and
            that `kft tune` optimises by default).
        monitor_mode: `"auto"` (the loss falls, a metric moves in its Keras
            direction: `val_mae` falls, `val_auc` rises), `"min"` or `"max"`.
        callbacks: `params -> list of Keras callbacks` added to every stage.
        baseline: `"linear_probe"` to also train a new head on the frozen
            pretrained model before the stages and report it next to the
            fine-tuned result (`kft.evaluation.linear_probe`), or `None`; or
            `params -> either`.
        forgetting: `params -> reference data or None`: a set the pretrained
            model handles well and the run does not train on (labelled data
            for a classifier, `kft.data.instructions` text for a causal LM).
            Before the stages and after them kft scores the model on it
            (`kft.evaluation.forgetting`: a linear probe's accuracy, or
            perplexity) and reports what fine-tuning lost
            (`forgetting.json`, `metrics.json`). Reports name it by the
            recipe's `forgetting` param when it has one, else by its source.
        jit_compile: `model.compile`'s `jit_compile` for every stage: `"auto"`
            (Keras' choice), `True` or `False` (XLA compilation of a
            transformer can take longer than a short run on CPU).
        search: what `kft tune` searches: param name -> `kft.tuning.LogUniform`,
            `Uniform`, `Int`, `Choice` or `Budget`; every name must be a param.
        generation: for causal-LM runs (`data()` returns a
            `kft.data.instructions.InstructionData`), how the held-out
            prompts are answered by the base and the fine-tuned model:
            a dict (or `params -> dict`) of `max_tokens` (64), `prompts`
            (how many held-out prompts, 64), `split` (`"test"`, else
            `"validation"`) and `kft.text.generate`'s `temperature`,
            `top_p`, `top_k`, `seed`.

    Example:
    ```python
    recipe = kft.Recipe(
        name="flowers",
        params={"data": "flowers/", "lr": 1e-3},
        data=lambda p: kft.data.images.load(p.data, image_size=(96, 96)),
        model=lambda p, data: kft.vision.image_classifier(
            "mobilenetv3small", len(data.class_names), image_size=96),
        stages=lambda p: [kft.Stage("head", epochs=2, train="head", lr=p.lr)],
        search={"lr": kft.tuning.LogUniform(1e-4, 1e-2)},
    )
    ```
    """

    name: str
    params: dict
    data: Callable
    model: Callable
    stages: Callable
    metrics: Sequence[Any] = ("accuracy",)
    loss: Any = "sparse_categorical_crossentropy"
    monitor: str = "val_accuracy"
    monitor_mode: str = "auto"
    callbacks: Optional[Callable] = None
    baseline: Any = None
    forgetting: Optional[Callable] = None
    jit_compile: Any = "auto"
    search: Optional[dict] = None
    generation: Any = None
    # The file the recipe was loaded from (set by `load`); runs keep a copy.
    source: Optional[str] = dataclasses.field(default=None, repr=False)

    def __post_init__(self):
        from kft.runs.monitor import MODES
        from kft.tuning import space

        if self.monitor_mode not in MODES:
            raise KftError(
                f"Recipe {self.name!r}: monitor_mode must be one of {', '.join(MODES)}, "
                f"got {self.monitor_mode!r}."
            )
        space.check(self.search, self.defaults(), self.name)

    def defaults(self):
        """Every param this recipe takes with its default: its own and `RUN_PARAMS`."""
        return {**RUN_PARAMS, **self.params}

    def resolve(self, overrides=None, data=None):
        """Returns the params with `--set` overrides applied, as a namespace.

        Args:
            overrides: a dict of values, or a sequence of `key=value` strings
                and `(key, value)` pairs applied in order (later ones win).
            data: the `--data` value, stored as the `data` param.
        """
        params = self.defaults()
        if isinstance(overrides, dict):
            pairs = list(overrides.items())
        else:
            pairs = [item if isinstance(item, tuple) else _split_assignment(item)
                     for item in overrides or ()]
        for key, value in pairs:
            if key not in params:
                raise KftError(
                    f"Unknown hyperparameter {key!r} for recipe {self.name!r}. "
                    f"Known: {', '.join(sorted(params))}."
                )
            params[key] = _convert(key, value, params[key])
        if data is not None:
            if "data" not in params:
                raise KftError(f"Recipe {self.name!r} takes no --data (it has no 'data' param).")
            params["data"] = data
        return types.SimpleNamespace(**params)

    def build_data(self, params):
        """The recipe's data for `params`: a `kft.data.Data`, or the
        `InstructionData` of a causal-LM run (batched once the model exists,
        `InstructionData.run_data`)."""
        from kft.data import as_data
        from kft.data.instructions import InstructionData

        data = self._call("data", params)
        return data if isinstance(data, InstructionData) else as_data(data)

    def fit_data(self, data, model, params):
        """What `build_data` returned, as the `kft.data.Data` that `model` fits: a
        causal LM's instruction data is batched through its own tokenizer and
        chat template (`InstructionData.run_data`); a `Data` is returned as is."""
        from kft.data.instructions import InstructionData

        if not isinstance(data, InstructionData):
            return data
        batches = data.run_data(model, seed=int(getattr(params, "seed", 0)))
        self.generation_for(params)  # Bad options fail before anything trains.
        return batches

    def generation_for(self, params):
        """The resolved `generation` options for `params` (see the class docstring)."""
        given = self._call("generation", params) if callable(self.generation) \
            else self.generation
        options = dict(GENERATION_DEFAULTS)
        unknown = sorted(set(given or {}) - set(options))
        if unknown:
            raise KftError(f"Recipe {self.name!r}: unknown generation option(s) "
                           f"{', '.join(map(repr, unknown))}; known: {', '.join(options)}.")
        options.update(given or {})
        if options["split"] not in (None, "test", "validation"):
            raise KftError(f"Recipe {self.name!r}: generation split must be 'test' or "
                           f"'validation', got {options['split']!r}.")
        for name in ("max_tokens", "prompts"):
            value = options[name]
            if isinstance(value, bool) or not isinstance(value, int) or value < 0 or \
                    (name == "max_tokens" and value < 1):
                raise KftError(f"Recipe {self.name!r}: generation {name} must be a whole "
                               f"number >= {1 if name == 'max_tokens' else 0}, got {value!r}.")
        return options

    def build_model(self, params, data):
        """The recipe's (uncompiled) model for `params` and `data`."""
        return self._call("model", params, data)

    def build_callbacks(self, params):
        """The recipe's callbacks for every stage (a list, maybe empty)."""
        return list(self._call("callbacks", params)) if self.callbacks else []

    def baseline_for(self, params):
        """The baseline to report for `params`: `"linear_probe"` or `None`."""
        name = self._call("baseline", params) if callable(self.baseline) else self.baseline
        if name not in (None, False, "none", "linear_probe"):
            raise KftError(
                f"Recipe {self.name!r}: baseline must be 'linear_probe' or None, got {name!r}."
            )
        return "linear_probe" if name == "linear_probe" else None

    def build_forgetting(self, params):
        """`(name, reference data)` of the forgetting measure for `params`, or `None`."""
        from kft.data import as_data
        from kft.data.instructions import InstructionData

        if self.forgetting is None:
            return None
        reference = self._call("forgetting", params)
        if reference is None:
            return None
        if not isinstance(reference, InstructionData):
            reference = as_data(reference)
        named = getattr(params, "forgetting", None)
        name = named if isinstance(named, str) and named else \
            (getattr(reference, "source", "") or "reference")
        return name, reference

    def build_stages(self, params):
        """The recipe's stages for `params`, each a checked `Stage`."""
        stages = list(self._call("stages", params))
        if not stages:
            raise KftError(f"Recipe {self.name!r} defines no stages.")
        for stage in stages:
            if not isinstance(stage, Stage):
                raise KftError(f"Recipe {self.name!r}: stages must be kft.Stage, got {stage!r}.")
        return stages

    def _call(self, part, *args):
        """Calls the recipe's `part` function; an error it raises that is not
        a `KftError` becomes one naming the recipe file, function and line."""
        function = getattr(self, part)
        try:
            return function(*args)
        except KftError:
            raise
        except Exception as error:
            raise KftError(_recipe_failure(self, part, function, error)) from error


def _recipe_failure(recipe, part, function, error):
    """`FILE, line N, in FUNCTION: the recipe's data() raised TYPE: MESSAGE`."""
    code = getattr(function, "__code__", None)
    source = recipe.source or (code.co_filename if code else None)
    place = None
    tb = error.__traceback__
    while tb is not None:
        if source and os.path.abspath(tb.tb_frame.f_code.co_filename) == os.path.abspath(source):
            place = tb  # the deepest frame in the recipe's own file
        tb = tb.tb_next
    where = (f"{source}, line {place.tb_lineno}, in {place.tb_frame.f_code.co_name}"
             if place else f"Recipe {recipe.name!r}")
    lines = str(error).strip().splitlines()
    message = lines[0] + (" [...]" if len(lines) > 1 else "") if lines else ""
    return (f"{where}: the recipe's {part}() raised {type(error).__name__}"
            f"{': ' + message if message else ''} (KFT_DEBUG=1 shows the traceback).")


def _stage_problem(stage):
    """What is wrong with `stage`'s settings, or `None`."""
    from kft import schedules
    from kft.runs.compiling import OPTIMIZER_NAMES

    if isinstance(stage.epochs, bool) or not isinstance(stage.epochs, numbers.Integral) \
            or stage.epochs < 0:
        return f"epochs must be a whole number >= 0, got {stage.epochs!r}."
    if not (is_number(stage.lr) and stage.lr > 0):
        return f"lr must be a number > 0, got {stage.lr!r}."
    if not callable(stage.optimizer) and str(stage.optimizer).lower() not in OPTIMIZER_NAMES:
        return (f"unknown optimizer {stage.optimizer!r}; use one of "
                f"{', '.join(OPTIMIZER_NAMES)} or a callable lr -> optimizer.")
    schedule = str(stage.schedule or "none").lower().replace("-", "_")
    if schedule != "none" and schedule not in schedules.NAMES:
        return (f"unknown schedule {stage.schedule!r}; use None or one of "
                f"{', '.join(schedules.NAMES)}.")
    try:
        # The format only; its length against the stage's steps is checked
        # once the data's size is known.
        schedules.warmup_steps(stage.warmup, total_steps=sys.maxsize, steps_per_epoch=1)
    except KftError as error:
        return str(error)
    if stage.layer_decay is not None and not (
            is_number(stage.layer_decay) and 0 < stage.layer_decay <= 1):
        return f"layer_decay must be None or in (0, 1] (e.g. 0.9), got {stage.layer_decay!r}."
    if not (is_number(stage.weight_decay) and stage.weight_decay >= 0):
        return f"weight_decay must be a number >= 0, got {stage.weight_decay!r}."
    if not isinstance(stage.train_bn, bool):
        return f"train_bn must be True or False, got {stage.train_bn!r}."
    if stage.cache_features not in (None, True, False):
        return f"cache_features must be None, True or False, got {stage.cache_features!r}."
    if isinstance(stage.callbacks, (str, bytes)) or not all(
            callable(getattr(callback, "set_model", None)) for callback in stage.callbacks):
        return f"callbacks must be a list of Keras callbacks, got {stage.callbacks!r}."
    if stage.early_stopping is not None and (
            isinstance(stage.early_stopping, bool)
            or not isinstance(stage.early_stopping, numbers.Integral)
            or stage.early_stopping < 1):
        return ("early_stopping must be None or a patience in epochs >= 1, "
                f"got {stage.early_stopping!r}.")
    return _regularize_problem(stage)


def _regularize_problem(stage):
    from kft import regularizers
    from kft.runs.stages import unfreezes_gradually

    try:
        regularizer = regularizers.from_spec(stage.regularize)
    except KftError as error:
        return str(error)
    if regularizer is None:
        return None
    if regularizer.needs_inputs and stage.cache_features:
        return (f"regularize={stage.regularize!r} compares the model with the pretrained "
                "one on every batch, so the backbone must run: cache_features=True does "
                "not combine with it (leave it None).")
    if unfreezes_gradually(stage):
        return (f"regularize={stage.regularize!r} does not combine with GradualUnfreezing: "
                "a regulariser covers what trains when the stage starts.")
    return None


def recipe_digest(recipe):
    """The SHA-256 of the file `recipe` was loaded from, or `None` (no file)."""
    if not recipe.source or not os.path.isfile(recipe.source):
        return None
    return hashlib.sha256(pathlib.Path(recipe.source).read_bytes()).hexdigest()


def _split_assignment(item):
    key, sep, value = str(item).partition("=")
    if not sep or not key.strip():
        raise KftError(f"--set expects key=value, got {item!r}.")
    return key.strip(), value.strip()


def read_params(path, recipe):
    """Reads a JSON file of param values, e.g. the `best_params.json` of `kft tune`.

    Args:
        path: the JSON file: an object of param name -> value.
        recipe: the `Recipe` whose params the file sets.

    Returns:
        A dict of the file's values, for `Recipe.resolve`.
    """
    try:
        values = json.loads(pathlib.Path(path).read_text())
    except OSError as error:
        raise KftError(f"--params {path}: cannot read it ({error.strerror}).") from None
    except ValueError as error:
        raise KftError(f"--params {path}: not valid JSON ({error}).") from None
    if not isinstance(values, dict):
        raise KftError(f"--params {path}: expected a JSON object of param name -> value.")
    unknown = sorted(set(values) - set(recipe.defaults()))
    if unknown:
        raise KftError(
            f"--params {path} sets {', '.join(map(repr, unknown))}, not params of recipe "
            f"{recipe.name!r} (known: {', '.join(sorted(recipe.defaults()))})."
        )
    return values


def _convert(key, value, default):
    """Converts a `--set` string to the type of the param's default."""
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        # JSON writes 1.0 as 1.
        return float(value)
    if not isinstance(value, str):
        return value
    try:
        if isinstance(default, bool):
            lowered = value.lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError("expected true or false")
        if isinstance(default, int):
            return int(value)
        if isinstance(default, float):
            return float(value)
        if isinstance(default, (list, tuple, dict)):
            return type(default)(json.loads(value))
    except ValueError as error:
        raise KftError(
            f"--set {key}={value}: expected a {type(default).__name__} "
            f"like the default {default!r} ({error})."
        ) from None
    if default is None and value.lower() in ("none", "null"):
        return None
    return value


def load(path):
    """Loads the `recipe` object defined by a recipe file.

    Args:
        path: path to a Python file that defines `recipe = kft.Recipe(...)`.

    Returns:
        The `Recipe`.
    """
    path = os.path.abspath(path)
    if not os.path.isfile(path):
        raise KftError(f"Recipe file {path} does not exist.")
    module_name = "kft_recipe_" + os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except KftError:
        raise
    except Exception as error:
        line = _error_line(error, path)
        raise KftError(f"Recipe file {path}{line} failed to load: {type(error).__name__}: {error}") from error
    recipe = getattr(module, "recipe", None)
    if not isinstance(recipe, Recipe):
        raise KftError(f"Recipe file {path} must define `recipe = kft.Recipe(...)`.")
    recipe.source = path
    return recipe


def _error_line(error, path):
    if isinstance(error, SyntaxError):
        return f", line {error.lineno}"
    tb = error.__traceback__
    line = None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == path:
            line = tb.tb_lineno
        tb = tb.tb_next
    return f", line {line}" if line else ""
