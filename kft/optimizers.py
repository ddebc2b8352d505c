"""Per-layer learning rates for any Keras optimizer.

`LayerwiseLR` wraps an optimizer (Adam, AdamW, SGD, Lion, ...) and gives each
variable its own learning rate: the wrapped optimizer's rate (a float or a
schedule) times a multiplier. Multipliers come from layer-wise decay over the
model's layer groups, a fastai-style geometric range, or explicit values per
group or variable path. The rate itself is scaled, not the gradient: adaptive
optimizers such as Adam normalise gradients, so scaling them changes nothing.
"""

import math
import numbers

import keras
from keras import backend
from keras import ops

from kft.errors import KftError
from kft.internal.checks import is_number
from kft.model_tree import layer_tree
from kft.select import Selection
from kft.select import as_selector
from kft.select import resolve
from kft.select import select_variables

# Variables left out of weight decay by default (a kft selection): biases,
# normalization parameters (BatchNorm/LayerNorm gamma and beta, RMSNorm
# scale) and position-embedding tables.
NO_DECAY = "biases,norms,position_embedding"


@keras.saving.register_keras_serializable(package="kft")
class LayerwiseLR(keras.optimizers.Optimizer):
    """Wraps a Keras optimizer to give each layer group its own learning rate.

    Each variable trains at the wrapped optimizer's learning rate times its
    multiplier. Multipliers are fixed when the optimizer is built, for every
    variable it is built with, trainable now or not: with gradual unfreezing
    (build the optimizer over every variable that may train), a group that
    starts training later gets its own rate.

    Where a variable's multiplier comes from, first match first:
    1. `multipliers`: keys are layer group names or selections in kft's
       selection language (`kft.select`: `"backbone/conv5_.*"`, `"norms"`,
       `"head_dense/bias"`). With `model`, selections are resolved on its
       layer tree; without, names are matched against Keras'
       `variable.path` (e.g. `"block1_conv/kernel"`).
    2. its group's rate from `layer_decay` or `lr_range`.
    3. 1.0 (variables outside every group).

    A multiplier of 0 leaves the variable exactly as it is (no update, no
    weight decay).

    Weight decay is decoupled (as in AdamW: `w -= lr * multiplier *
    weight_decay * w`, before the update) and skips the variables the
    `no_decay` selection picks: by default biases, normalization parameters
    and position-embedding tables. The wrapped optimizer's own
    weight decay (e.g. AdamW's) is taken over by this rule.

    When the learning rate is a `kft.schedules.OneCycle`, the optimizer's
    `beta_1` (Adam, AdamW, Lion, ...) or `momentum` (SGD) follows the
    schedule's momentum cycle.

    Args:
        optimizer: the Keras optimizer to wrap (not yet used), or its name.
        multipliers: dict of layer group name or selection -> multiplier.
        layer_decay: layer-wise rate decay: the group `k` groups below the
            top (the head) gets `layer_decay ** k`. Needs layer groups.
        lr_range: `(lowest, highest)` multipliers spread geometrically over
            the groups, input to output, like fastai's `slice(lo, hi)` (for
            rates 1e-5 .. 1e-3, use a learning rate of 1e-3 and
            `lr_range=(0.01, 1.0)`). Needs layer groups.
        weight_decay: decoupled weight decay; `None` takes the wrapped
            optimizer's (`AdamW`'s), 0 turns it off.
        no_decay: what weight decay skips, a selection (`"biases,norms"`,
            `["bias", "embeddings"]`); `()` decays every variable.
        model: the model, for its layer groups (`kft.layer_groups(model)`)
            and layer tree; not needed for `multipliers` by name alone.
        groups: explicit layer groups instead of the model's, input to
            output: each a `kft.LayerGroup`, a layer, or a list of layers or
            variables.
        variable_multipliers: resolved `{variable path: multiplier}`; written
            by `get_config` so a saved model reloads with its rates. Takes
            precedence over everything else for the paths it names.
        no_decay_variables: resolved variable paths that weight decay skips;
            written by `get_config` (a reloaded optimizer has no model to
            resolve `no_decay` on). Takes precedence over `no_decay`.
        name: optional name.

    Example:
    ```python
    optimizer = kft.optimizers.LayerwiseLR(
        keras.optimizers.AdamW(kft.schedules.WarmupDecay(5e-5, 1000, warmup=0.06)),
        layer_decay=0.9,
        model=model,
    )
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy")
    ```
    """

    def __init__(
        self,
        optimizer,
        multipliers=None,
        layer_decay=None,
        lr_range=None,
        weight_decay=None,
        no_decay=NO_DECAY,
        model=None,
        groups=None,
        variable_multipliers=None,
        no_decay_variables=None,
        name=None,
    ):
        super().__init__(learning_rate=0.0, name=name)
        optimizer = _inner_optimizer(optimizer)
        self.inner_optimizer = optimizer
        self.multipliers = _check_multipliers(multipliers)
        self.layer_decay = _check_layer_decay(layer_decay)
        self.lr_range = _check_lr_range(lr_range)
        if layer_decay is not None and lr_range is not None:
            raise KftError("LayerwiseLR: give layer_decay or lr_range, not both.")
        if weight_decay is None:
            weight_decay = optimizer.weight_decay or 0.0
        if not is_number(weight_decay) or weight_decay < 0:
            raise KftError(f"LayerwiseLR: weight_decay must be 0 or more, got {weight_decay!r}.")
        self.decoupled_weight_decay = float(weight_decay)
        self.no_decay = _check_no_decay(no_decay)
        self._no_decay_given = (
            None if no_decay_variables is None else {str(p) for p in no_decay_variables}
        )
        self._exempt = []
        if optimizer.weight_decay is not None:
            # This wrapper applies the decay, scaled per variable; an empty
            # pattern keeps the wrapped optimizer from decaying anything again.
            optimizer.exclude_from_weight_decay(var_names=[""])
        self._check_momentum_cycle()

        # Multipliers by variable identity (from groups), by path (restored
        # from a config, which knows no model), and everything resolved so far
        # by path, for get_config.
        self._by_id = {}
        self._given = _check_variable_multipliers(variable_multipliers)
        self._resolved = {}
        if model is not None and groups is not None:
            raise KftError("LayerwiseLR: give model or groups, not both.")
        needs_groups = (
            self.layer_decay is not None or self.lr_range is not None or bool(self.multipliers)
        )
        if groups is not None:
            groups = _explicit_groups(groups)
        elif model is not None and needs_groups:
            from kft.freezing import layer_groups

            groups = [(g.name, list(g.variables)) for g in layer_groups(model)]
        elif (self.layer_decay is not None or self.lr_range is not None) and not self._given:
            raise KftError(
                "LayerwiseLR: layer_decay and lr_range need the model's layer groups; pass "
                "model=... (uses kft.layer_groups) or groups=[...]."
            )
        self._group_names = [name for name, _ in groups or ()]
        # What each selection key and `no_decay` pick, by variable identity:
        # resolved on the model's tree now, or on bare variables at build.
        self._selected = {}
        self._no_decay_ids = None
        if model is not None:
            self._select_in_tree(layer_tree(model))
        if groups is not None:
            model_variables = model.variables if model is not None else ()
            self._resolve_groups(groups, model_variables)

        # Filled by build, keyed by the wrapped optimizer's variable keys.
        self._rates = {}
        self._decayed = set()
        object.__setattr__(self, "_plain_update_step", optimizer.update_step)
        # The wrapped optimizer calls update_step(gradient, variable, lr) once
        # per variable on every backend path (plain, tf.distribute merge
        # calls, XLA): the one place where a per-variable rate can go in.
        object.__setattr__(optimizer, "update_step", self._update_step)

    # Resolution of multipliers.

    def _select_in_tree(self, root):
        for key in self._selection_keys():
            try:
                chosen = resolve(key, root)
            except KftError as error:
                raise KftError(
                    f"LayerwiseLR: multipliers key {key!r} is no layer group name and "
                    f"selects nothing: {error}{self._groups_hint()}"
                ) from None
            self._selected[key] = set(chosen.variables)
        self._no_decay_ids = set(_lenient_resolve(self.no_decay, root).variables)

    def _select_variables(self, variables):
        """Resolves the keys not resolved on a tree, on Keras variable paths."""
        for key in self._selection_keys():
            if key in self._selected:
                continue
            chosen = select_variables(key, variables)
            if not chosen:
                examples = ", ".join(v.path for v in variables[:3])
                raise KftError(
                    f"LayerwiseLR: multipliers key {key!r} is no layer group name and "
                    f"matches no variable path (paths look like {examples})."
                    f"{self._groups_hint()}"
                )
            self._selected[key] = {id(v) for v in chosen}

    def _selection_keys(self):
        return [key for key in self.multipliers if key not in self._group_names]

    def _groups_hint(self):
        return f" Groups: {', '.join(self._group_names)}." if self._group_names else ""

    def _resolve_groups(self, groups, model_variables):
        variables = [v for _, group in groups for v in group] + list(model_variables)
        self._select_variables(variables)
        rates = self._group_rates(len(groups))
        for (name, group), rate in zip(groups, rates):
            for variable in group:
                if id(variable) not in self._by_id:
                    self._by_id[id(variable)] = self._explicit_rate(variable, name, rate)
        for variable in model_variables:
            if id(variable) not in self._by_id:
                self._by_id[id(variable)] = self._explicit_rate(variable, None, 1.0)
        for variable in variables:
            self._resolved[variable.path] = self._rate_for(variable)

    def _group_rates(self, count):
        if self.layer_decay is not None:
            return [self.layer_decay ** (count - 1 - i) for i in range(count)]
        if self.lr_range is not None:
            low, high = self.lr_range
            if count == 1:
                return [high]
            return [low * (high / low) ** (i / (count - 1)) for i in range(count)]
        return [1.0] * count

    def _explicit_rate(self, variable, group_name, default):
        for key, value in self.multipliers.items():
            if key == group_name or id(variable) in self._selected.get(key, ()):
                return value
        return default

    def _skips_decay(self, variable):
        if self._no_decay_given is not None:
            return variable.path in self._no_decay_given
        if not self.no_decay:
            return False
        if self._no_decay_ids is not None:  # resolved on the model's tree
            return id(variable) in self._no_decay_ids
        return bool(select_variables(self.no_decay, [variable]))

    def _rate_for(self, variable):
        if variable.path in self._given:
            return self._given[variable.path]
        if id(variable) in self._by_id:
            return self._by_id[id(variable)]
        return self._explicit_rate(variable, None, 1.0)

    @property
    def variable_multipliers(self):
        """`{variable path: multiplier}` of every variable resolved so far.

        Paths repeat only across nested models with equally named layers;
        such variables share one entry, so give those layers distinct names
        when their rates differ and the model is saved.
        """
        return {**self._resolved, **self._given}

    def multiplier(self, variable):
        """The learning-rate multiplier of `variable` (after `build`, exact).

        Args:
            variable: a model variable.

        Returns:
            A float.
        """
        if self.built:
            key = self.inner_optimizer._var_key(variable)
            if key in self._rates:
                return self._rates[key]
        return self._rate_for(variable)

    # Optimizer interface: the wrapped optimizer does the work.

    def build(self, var_list):
        if self.built:
            return
        var_list = list(var_list)
        if not self._by_id and not self._given:
            self._select_variables(var_list)
        inner = self.inner_optimizer
        for variable in var_list:
            key = inner._var_key(variable)
            self._rates[key] = self._rate_for(variable)
            if self.decoupled_weight_decay:
                if self._skips_decay(variable):
                    self._exempt.append(variable.path)
                else:
                    self._decayed.add(key)
            self._resolved[variable.path] = self._rates[key]
        inner.build(var_list)
        super().build(var_list)

    def apply(self, grads, trainable_variables=None):
        if not self.built and trainable_variables is not None:
            with keras.name_scope(self.name, caller=self):
                self.build(trainable_variables)
        self.inner_optimizer.apply(grads, trainable_variables)

    def _update_step(self, gradient, variable, learning_rate):
        inner = self.inner_optimizer
        key = inner._var_key(variable)
        multiplier = self._rates.get(key, 1.0)
        if multiplier == 0.0:
            return
        if multiplier != 1.0:
            learning_rate = learning_rate * multiplier
        if key in self._decayed:
            rate = ops.cast(learning_rate, variable.dtype)
            decay = ops.cast(self.decoupled_weight_decay, variable.dtype)
            inner.assign_sub(variable, variable * decay * rate)
        schedule = inner._learning_rate
        if not getattr(schedule, "cycles_momentum", False):
            return self._plain_update_step(gradient, variable, learning_rate)
        # Keras optimizers read beta_1 / momentum as a Python attribute inside
        # update_step; it holds the scheduled tensor only while the step is
        # traced, so the config and every later trace see the float. The
        # step is the one the learning-rate schedule sees.
        self._check_momentum_cycle()
        attribute = _momentum_attribute(inner)
        constant = getattr(inner, attribute)
        momentum = _ScheduledValue(schedule.momentum(inner._iterations))
        object.__setattr__(inner, attribute, momentum)
        try:
            return self._plain_update_step(gradient, variable, learning_rate)
        finally:
            object.__setattr__(inner, attribute, constant)

    def _check_momentum_cycle(self):
        schedule = self.inner_optimizer._learning_rate
        if getattr(schedule, "cycles_momentum", False) and _momentum_attribute(
            self.inner_optimizer
        ) is None:
            raise KftError(
                f"LayerwiseLR: {type(schedule).__name__} cycles momentum, but "
                f"{type(self.inner_optimizer).__name__} has no beta_1 or momentum; use "
                "moms=None in the schedule or an optimizer with momentum."
            )

    @property
    def variables(self):
        return self._variables[:] + self.inner_optimizer.variables

    def save_own_variables(self, store):
        # The wrapped optimizer is a child object that Keras saves on its own;
        # only this wrapper's own (unused) counters go here.
        for i, variable in enumerate(self._variables):
            store[str(i)] = variable.numpy()

    def load_own_variables(self, store):
        for i, variable in enumerate(self._variables):
            variable.assign(store[str(i)])

    def set_weights(self, weights):
        own = len(self._variables)
        for variable, value in zip(self._variables, weights[:own]):
            variable.assign(value)
        self.inner_optimizer.set_weights(weights[own:])

    @property
    def iterations(self):
        return self.inner_optimizer.iterations

    @property
    def learning_rate(self):
        return self.inner_optimizer.learning_rate

    @learning_rate.setter
    def learning_rate(self, learning_rate):
        self.inner_optimizer.learning_rate = learning_rate

    def scale_loss(self, loss):
        return self.inner_optimizer.scale_loss(loss)

    def finalize_variable_values(self, var_list):
        self.inner_optimizer.finalize_variable_values(var_list)

    def get_config(self):
        return {
            "name": self.name,
            "optimizer": keras.saving.serialize_keras_object(self.inner_optimizer),
            "multipliers": dict(self.multipliers) or None,
            "layer_decay": self.layer_decay,
            "lr_range": None if self.lr_range is None else list(self.lr_range),
            "weight_decay": self.decoupled_weight_decay,
            "no_decay": self.no_decay,
            "variable_multipliers": self.variable_multipliers or None,
            "no_decay_variables": (
                sorted(self._exempt) if self.built and self.decoupled_weight_decay
                else None if self._no_decay_given is None else sorted(self._no_decay_given)
            ),
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        config["optimizer"] = keras.saving.deserialize_keras_object(
            config["optimizer"], custom_objects=custom_objects
        )
        return cls(**config)


class _ScheduledValue:
    """Stands in for a Python-number hyperparameter that follows a schedule.

    Keras optimizers read `beta_1` / `momentum` as a Python number: they cast
    it to a tensor, do arithmetic with it and (SGD) compare it with 0 to pick
    a code path. This object does all three with the scheduled tensor; the
    cycle never reaches 0, so the comparison answers as the constant did.
    """

    def __init__(self, tensor):
        self.tensor = tensor

    def __tf_tensor__(self, dtype=None, name=None):
        return self.tensor if dtype is None else ops.cast(self.tensor, dtype)

    def __eq__(self, other):
        if isinstance(other, numbers.Real) and other == 0:
            return False
        return NotImplemented

    def __ne__(self, other):
        if isinstance(other, numbers.Real) and other == 0:
            return True
        return NotImplemented

    __hash__ = object.__hash__

    def __add__(self, other):
        return self.tensor + other

    def __radd__(self, other):
        return other + self.tensor

    def __sub__(self, other):
        return self.tensor - other

    def __rsub__(self, other):
        return other - self.tensor

    def __mul__(self, other):
        return self.tensor * other

    def __rmul__(self, other):
        return other * self.tensor

    def __truediv__(self, other):
        return self.tensor / other

    def __rtruediv__(self, other):
        return other / self.tensor

    def __pow__(self, other):
        return self.tensor**other

    def __rpow__(self, other):
        return other**self.tensor

    def __neg__(self):
        return -self.tensor


def _momentum_attribute(optimizer):
    if isinstance(getattr(optimizer, "beta_1", None), numbers.Real):
        return "beta_1"
    momentum = getattr(optimizer, "momentum", None)
    if isinstance(momentum, numbers.Real) and momentum != 0:
        return "momentum"
    return None


def _inner_optimizer(optimizer):
    if isinstance(optimizer, (str, dict)):
        try:
            optimizer = keras.optimizers.get(optimizer)
        except ValueError as error:
            raise KftError(f"LayerwiseLR: unknown optimizer {optimizer!r}: {error}") from None
    if not isinstance(optimizer, keras.optimizers.Optimizer):
        raise KftError(
            f"LayerwiseLR wraps a keras.optimizers.Optimizer, got {type(optimizer).__name__}."
        )
    if isinstance(
        optimizer,
        (LayerwiseLR, keras.optimizers.LossScaleOptimizer, keras.optimizers.MultiOptimizer),
    ):
        raise KftError(
            f"LayerwiseLR cannot wrap a {type(optimizer).__name__}; wrap the plain optimizer "
            "(for loss scaling: LossScaleOptimizer(LayerwiseLR(...)))."
        )
    if optimizer.built:
        raise KftError(
            "LayerwiseLR: the optimizer is already built; wrap a new optimizer before it "
            "is used, so every variable gets its rate."
        )
    if backend.backend() == "torch":
        raise KftError(
            "LayerwiseLR supports the TensorFlow and JAX backends; PyTorch's optimizers "
            "update all variables at once and bypass per-variable rates."
        )
    return optimizer


def _check_multipliers(multipliers):
    if multipliers is None:
        return {}
    if not isinstance(multipliers, dict):
        raise KftError(
            "LayerwiseLR: multipliers must be a dict of layer group name or selection -> "
            f"multiplier, got {type(multipliers).__name__}."
        )
    checked = {}
    for key, value in multipliers.items():
        if not isinstance(key, str):
            raise KftError(
                f"LayerwiseLR: multipliers key {key!r} must be a group name or a selection "
                "string (a saved model keeps its keys)."
            )
        try:
            as_selector(key)
        except KftError as error:
            raise KftError(f"LayerwiseLR: multipliers key {key!r}: {error}") from None
        if not is_number(value) or value < 0:
            raise KftError(
                f"LayerwiseLR: multiplier for {key!r} must be a number of 0 or more, got {value!r}."
            )
        checked[key] = float(value)
    return checked


def _check_layer_decay(layer_decay):
    if layer_decay is None:
        return None
    if not is_number(layer_decay) or not 0.0 < layer_decay <= 1.0:
        raise KftError(
            f"LayerwiseLR: layer_decay must be in (0, 1] (e.g. 0.9), got {layer_decay!r}."
        )
    return float(layer_decay)


def _check_lr_range(lr_range):
    if lr_range is None:
        return None
    try:
        low, high = (float(v) for v in lr_range)
    except (TypeError, ValueError):
        raise KftError(
            f"LayerwiseLR: lr_range must be a pair (lowest, highest), got {lr_range!r}."
        ) from None
    if not (math.isfinite(low) and math.isfinite(high) and 0.0 < low <= high):
        raise KftError(
            f"LayerwiseLR: lr_range needs 0 < lowest <= highest, got ({low}, {high})."
        )
    return (low, high)


def _check_no_decay(no_decay):
    if no_decay is None or (isinstance(no_decay, (list, tuple)) and not no_decay):
        return ()
    if isinstance(no_decay, tuple):
        no_decay = list(no_decay)
    parts = no_decay if isinstance(no_decay, list) else [no_decay]
    if not all(isinstance(part, str) for part in parts):
        raise KftError(
            f"LayerwiseLR: no_decay must be a selection string or a list of them, got "
            f"{no_decay!r} (a saved model keeps it)."
        )
    try:
        as_selector(no_decay)
    except KftError as error:
        raise KftError(f"LayerwiseLR: no_decay {no_decay!r}: {error}") from None
    return no_decay


def _lenient_resolve(select, root):
    """The variables `select` picks, where parts that match nothing are fine."""
    if select == ():
        return Selection({}, {})
    return as_selector(select).resolve(root)


def _explicit_groups(groups):
    resolved = []
    for i, group in enumerate(groups):
        name = getattr(group, "name", None) if not isinstance(group, (list, tuple)) else None
        items = group.variables if hasattr(group, "variables") else group
        if isinstance(items, keras.Variable) or not isinstance(items, (list, tuple)):
            items = [items]
        variables = []
        for item in items:
            if isinstance(item, keras.layers.Layer):
                variables.extend(item.weights)
            elif isinstance(item, keras.Variable):
                variables.append(item)
            else:
                raise KftError(
                    f"LayerwiseLR: group {i} holds a {type(item).__name__}; a group is a "
                    "LayerGroup, a layer, or a list of layers or variables."
                )
        resolved.append((name or f"group_{i}", variables))
    if not resolved:
        raise KftError("LayerwiseLR: groups is empty.")
    return resolved


def _check_variable_multipliers(variable_multipliers):
    if variable_multipliers is None:
        return {}
    checked = {}
    for path, value in dict(variable_multipliers).items():
        if not is_number(value) or value < 0:
            raise KftError(
                f"LayerwiseLR: multiplier for variable {path!r} must be 0 or more, got {value!r}."
            )
        checked[str(path)] = float(value)
    return checked
