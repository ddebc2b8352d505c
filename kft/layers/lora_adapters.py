"""Named low-rank adapters on a frozen base projection: what LoRA layers share.

`LoRADense` and `LoRAEinsumDense` are a Keras `Dense` / `EinsumDense` (the
frozen base, quantized or not) plus any number of named adapters. Each adapter
is a pair of factors `A` (input dims x rank) and `B` (rank x output dims) whose
product, scaled, is added to the base projection; with DoRA it also has a
magnitude per output unit. One adapter is active at a time; it can be merged
into the base kernel (no adapter cost at inference) and unmerged again.

The base kernel is never trained and is saved unmerged next to the adapters,
so a saved model keeps both apart and training continues after loading.
"""

import collections
import contextlib
import dataclasses
import math
import numbers
import re
import threading

import keras
import numpy as np
from keras import ops

from kft.errors import KftError
from kft.layers import layer_record

_ADAPTER_NAME = re.compile(r"^[A-Za-z0-9_]+$")
_UNSET = "__unset__"
INITS = ("kaiming_uniform", "gaussian")
# Base quantization modes the adapters can sit on. gptq/awq keep no plain
# kernel to factorize against.
_LORA_MODES = (None, "int8", "int4")
_DORA_MODES = (None, "int8")
# Layers whose adapters are switched off (`adapters_switched_off`), per
# thread: under a MirroredStrategy each replica traces in its own thread.
_SWITCHED_OFF = threading.local()


@dataclasses.dataclass(frozen=True)
class AdapterSpec:
    """The hyperparameters of one low-rank adapter.

    Args:
        rank: the rank `r` of the update `A @ B`.
        alpha: the update is scaled by `alpha / rank` (`alpha / sqrt(rank)`
            with `rslora`).
        dropout: dropout rate on the adapter's input (training only).
        dora: DoRA: a trainable magnitude per output unit times the
            direction `W + scale * A @ B` normalized per output unit.
        rslora: rank-stabilized scaling `alpha / sqrt(rank)`.
        init: initialization of `A` (`B` starts at zero, so a new adapter
            leaves the outputs unchanged): `"kaiming_uniform"` (uniform in
            +-1/sqrt(fan_in), as PEFT) or `"gaussian"` (std 1/rank).
    """

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    dora: bool = False
    rslora: bool = False
    init: str = "kaiming_uniform"

    def __post_init__(self):
        if not isinstance(self.rank, (int, np.integer)) or self.rank < 1:
            raise KftError(f"LoRA rank must be a positive integer, got {self.rank!r}.")
        if not isinstance(self.alpha, numbers.Real) or self.alpha <= 0:
            raise KftError(f"LoRA alpha must be a positive number, got {self.alpha!r}.")
        if not 0.0 <= self.dropout < 1.0:
            raise KftError(f"LoRA dropout must be in [0, 1), got {self.dropout!r}.")
        if self.init not in INITS:
            raise KftError(
                f"Unknown LoRA init {self.init!r}; use one of {', '.join(INITS)}."
            )
        object.__setattr__(self, "rank", int(self.rank))
        object.__setattr__(self, "alpha", float(self.alpha))
        object.__setattr__(self, "dropout", float(self.dropout))
        object.__setattr__(self, "dora", bool(self.dora))
        object.__setattr__(self, "rslora", bool(self.rslora))

    @property
    def scaling(self):
        """The factor applied to `A @ B`."""
        if self.rslora:
            return self.alpha / math.sqrt(self.rank)
        return self.alpha / self.rank

    def get_config(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_config(cls, config):
        if isinstance(config, cls):
            return config
        return cls(**config)

    @classmethod
    def from_arguments(cls, spec=None, **shortcuts):
        """`spec`, or one built from the keyword shortcuts; not both.

        Args:
            spec: an `AdapterSpec`, its config dict, or `None`.
            **shortcuts: `rank=`, `alpha=`, `dropout=`, `dora=`, `rslora=`,
                `init=` (a value equal to the default counts as not given).

        Raises:
            KftError: an unknown keyword, or `spec` and a shortcut both given.
        """
        defaults = dataclasses.asdict(cls())
        unknown = sorted(set(shortcuts) - set(defaults))
        if unknown:
            raise KftError(
                f"Unknown LoRA hyperparameter {', '.join(unknown)}; use {', '.join(defaults)}."
            )
        if spec is None:
            return cls(**shortcuts)
        if not isinstance(spec, (cls, dict)):
            raise KftError(f"spec must be an AdapterSpec or its config dict, got {spec!r}.")
        changed = sorted(k for k, v in shortcuts.items() if v != defaults[k])
        if changed:
            raise KftError(
                f"Pass the LoRA hyperparameters either as spec= or as keywords, not both "
                f"(got spec= and {', '.join(changed)})."
            )
        return cls.from_config(spec)


class _Adapter:
    """One adapter's spec and variables; `merge_norm` is set while merged (DoRA)."""

    def __init__(self, spec, a, b, magnitude=None):
        self.spec = spec
        self.a = a
        self.b = b
        self.magnitude = magnitude
        self.merge_norm = None

    def variables(self):
        found = {"lora_a": self.a, "lora_b": self.b}
        if self.magnitude is not None:
            found["lora_magnitude"] = self.magnitude
        return found


def check_adapter_name(name):
    """Raises a KftError unless `name` can name an adapter (and a variable)."""
    if not isinstance(name, str) or not _ADAPTER_NAME.match(name):
        raise KftError(
            f"Adapter name {name!r} is not valid: use letters, digits and "
            "underscores (it becomes part of variable names)."
        )


class LoRAAdapters:
    """Mixin for a built `Dense`/`EinsumDense` subclass: named adapters on it.

    The host class defines the geometry: `adapter_shapes_for(layer, rank)`,
    `_apply_factors(x, a, b)`, `_factors_to_kernel(a, b)`, `_output_norm(w)`,
    `_scale_outputs(y, factor)`, `_scale_kernel(w, factor)` and
    `_dequant_scale()`. The base layer's activation is moved to
    `output_activation` so the base computes only `x W + b` and the adapter
    update lands before the activation.
    """

    _base_class = None  # keras.layers.Dense or keras.layers.EinsumDense

    # ----------------------------------------------------------------- state

    def _init_adapter_state(self, adapters, active, merged, activation):
        # Plain attributes: Keras' tracker must not wrap the registry, the
        # variables are tracked when they are created.
        object.__setattr__(self, "_adapters", {})
        object.__setattr__(self, "_pending_specs", dict(adapters))
        object.__setattr__(self, "_active_adapter", active)
        object.__setattr__(self, "_merged_adapter", merged)
        self.output_activation = keras.activations.get(activation)
        # The base computes x W + b only; get_config needs a serializable one.
        self.activation = keras.activations.linear

    @property
    def adapter_names(self):
        """Names of this layer's adapters, in creation order."""
        return list(self._adapters) + [
            n for n in self._pending_specs if n not in self._adapters
        ]

    @property
    def active_adapter(self):
        """The adapter added to the base output, or None (base only)."""
        return self._active_adapter

    @property
    def merged_adapter(self):
        """The adapter currently folded into the kernel, or None."""
        return self._merged_adapter

    def adapter_spec(self, name):
        """Returns the `AdapterSpec` of adapter `name`."""
        if name in self._adapters:
            return self._adapters[name].spec
        if name in self._pending_specs:
            return self._pending_specs[name]
        raise KftError(
            f"Layer '{self.name}' has no adapter {name!r}; it has "
            f"{self.adapter_names or 'none'}."
        )

    def adapter_variables(self, name):
        """Returns `{"lora_a": A, "lora_b": B[, "lora_magnitude": m]}`."""
        self.adapter_spec(name)
        if name not in self._adapters:
            raise KftError(
                f"Adapter {name!r} of layer '{self.name}' has no variables until "
                "the layer is built."
            )
        return self._adapters[name].variables()

    def base_variables(self):
        """The base layer's own variables (kernel, bias, quantization scales)."""
        adapter_ids = {
            id(v) for a in self._adapters.values() for v in a.variables().values()
        }
        own = self._trainable_variables + self._non_trainable_variables
        return [v for v in own if id(v) not in adapter_ids]

    # ------------------------------------------------------------ adapters

    def add_adapter(
        self,
        name,
        spec=None,
        **shortcuts,
    ):
        """Adds a new adapter (not activated) to the built layer.

        Args:
            name: the adapter's name (letters, digits, underscores).
            spec: its `AdapterSpec` (or config dict).
            **shortcuts: `rank=`, `alpha=`, ... instead of `spec` (see
                `AdapterSpec`).
        """
        spec = AdapterSpec.from_arguments(spec, **shortcuts)
        check_adapter_name(name)
        if name in self.adapter_names:
            raise KftError(f"Layer '{self.name}' already has an adapter {name!r}.")
        if not self.built:
            self._pending_specs[name] = spec
            return
        self._tracker.unlock()
        try:
            self._create_adapter(name, spec)
        finally:
            self._tracker.lock()
        self._refresh_trainable()

    def delete_adapter(self, name):
        """Removes adapter `name` and its variables."""
        self.adapter_spec(name)
        if self._merged_adapter == name:
            raise KftError(
                f"Adapter {name!r} is merged into layer '{self.name}'; unmerge it "
                "before deleting it."
            )
        self._pending_specs.pop(name, None)
        adapter = self._adapters.pop(name, None)
        if adapter is not None:
            for variable in adapter.variables().values():
                self._untrack_variable(variable)
        if self._active_adapter == name:
            object.__setattr__(self, "_active_adapter", None)

    def set_active_adapter(self, name):
        """Makes `name` the adapter in use (None: base only).

        A name this layer lacks also means base only, so one call can switch
        a whole model whose layers carry different adapter sets.
        """
        if name is not None:
            check_adapter_name(name)
        if self._merged_adapter is not None and name != self._merged_adapter:
            raise KftError(
                f"Layer '{self.name}' has adapter {self._merged_adapter!r} merged "
                "into its kernel; unmerge before switching adapters."
            )
        object.__setattr__(self, "_active_adapter", name)
        self._refresh_trainable()

    def _create_adapter(self, name, spec):
        mode = self.quantization_mode
        if mode not in _LORA_MODES:
            raise KftError(
                f"Layer '{self.name}' is quantized with mode {mode!r}; LoRA "
                "supports bases in float, int8 and int4."
            )
        if spec.dora and mode not in _DORA_MODES:
            raise KftError(
                f"DoRA needs the base kernel in float or int8; layer "
                f"'{self.name}' is quantized with mode {mode!r}."
            )
        a_shape, b_shape, magnitude_shape, fan_in = self._adapter_shapes(spec.rank)
        if spec.init == "kaiming_uniform":
            # PEFT's kaiming_uniform(a=sqrt(5)) bound: 1/sqrt(fan_in).
            bound = 1.0 / math.sqrt(fan_in)
            a_init = keras.initializers.RandomUniform(-bound, bound)
        else:
            a_init = keras.initializers.RandomNormal(stddev=1.0 / spec.rank)
        # Adapters stay float32 whatever the compute dtype, as Keras' own LoRA:
        # small updates would underflow in float16.
        a = self.add_weight(
            name=f"lora_a_{name}", shape=a_shape, initializer=a_init,
            dtype="float32",
        )
        b = self.add_weight(
            name=f"lora_b_{name}", shape=b_shape, initializer="zeros",
            dtype="float32",
        )
        magnitude = None
        if spec.dora:
            # Starting at the base column norms makes DoRA an identity too.
            norm = ops.convert_to_numpy(self._output_norm(self._float_kernel()))
            magnitude = self.add_weight(
                name=f"lora_magnitude_{name}", shape=magnitude_shape,
                initializer=keras.initializers.Constant(norm), dtype="float32",
            )
        if spec.dropout > 0 and getattr(self, "_adapter_seed", None) is None:
            self._adapter_seed = keras.random.SeedGenerator()
        self._adapters[name] = _Adapter(spec, a, b, magnitude)
        self._pending_specs.pop(name, None)

    def _build_adapters(self):
        for name, spec in list(self._pending_specs.items()):
            self._create_adapter(name, spec)
        self._refresh_trainable()

    # ----------------------------------------------------------- trainable

    @property
    def trainable(self):
        return self._trainable

    @trainable.setter
    def trainable(self, value):
        keras.layers.Layer.trainable.fset(self, value)
        self._refresh_trainable()

    def _refresh_trainable(self):
        """Base frozen; only the active, unmerged adapter trains."""
        if getattr(self, "_adapters", None) is None:
            return
        for variable in self.base_variables():
            variable.trainable = False
        for name, adapter in self._adapters.items():
            train = (
                self._trainable
                and name == self._active_adapter
                and self._merged_adapter is None
            )
            for variable in adapter.variables().values():
                variable.trainable = train

    # ------------------------------------------------------------- forward

    def call(self, inputs, training=None):
        return self._add_adapter_output(super().call(inputs), inputs, training)

    def quantized_call(self, inputs, training=None):
        outputs = super().quantized_call(inputs, training=training)
        return self._add_adapter_output(outputs, inputs, training)

    def _add_adapter_output(self, outputs, inputs, training):
        adapter = self._adapters.get(self._active_adapter)
        switched_off = id(self) in getattr(_SWITCHED_OFF, "counts", ())
        if adapter is not None and self._merged_adapter is None and not switched_off:
            spec = adapter.spec
            x = inputs
            if training and spec.dropout > 0:
                x = keras.random.dropout(x, spec.dropout, seed=self._adapter_seed)
            a = ops.cast(adapter.a, x.dtype)
            b = ops.cast(adapter.b, x.dtype)
            update = ops.multiply(self._apply_factors(x, a, b), spec.scaling)
            if spec.dora:
                outputs = self._dora_outputs(outputs, update, adapter)
            else:
                outputs = ops.add(outputs, ops.cast(update, outputs.dtype))
        return self.output_activation(outputs)

    def _dora_outputs(self, outputs, update, adapter):
        # As PEFT: the norm is a constant for the gradient (DoRA paper 4.3),
        # and the base output is reused instead of a second matmul.
        direction = ops.add(
            self._float_kernel(),
            ops.multiply(
                self._factors_to_kernel(adapter.a, adapter.b), adapter.spec.scaling
            ),
        )
        norm = ops.stop_gradient(self._output_norm(direction))
        factor = ops.cast(ops.divide(adapter.magnitude, norm), outputs.dtype)
        linear = outputs
        if self.bias is not None:
            linear = ops.subtract(linear, self.bias)
        scaled = self._scale_outputs(
            ops.add(linear, ops.cast(update, outputs.dtype)), factor
        )
        if self.bias is not None:
            scaled = ops.add(scaled, self.bias)
        return scaled

    # ------------------------------------------------------- merge/unmerge

    def delta_kernel(self, name=None):
        """The kernel-shaped scaled update `scale * A @ B` of adapter `name`."""
        adapter = self._adapter_or_active(name)
        return ops.multiply(
            self._factors_to_kernel(adapter.a, adapter.b), adapter.spec.scaling
        )

    def adapted_kernel(self):
        """The float kernel the layer computes with: the base plus the active,
        unmerged adapter's update (DoRA: `m * V / ||V||` per output unit,
        `V = W + scale * A @ B`), differentiable in the adapter's variables.

        The base must be float or int8.
        """
        kernel = self._float_kernel()
        adapter = self._adapters.get(self._active_adapter)
        if adapter is None or self._merged_adapter is not None:
            return kernel
        kernel = ops.add(kernel, self.delta_kernel())
        if adapter.spec.dora:
            kernel = self._scale_kernel(
                kernel, ops.divide(adapter.magnitude, self._output_norm(kernel))
            )
        return kernel

    def merge(self):
        """Folds the active adapter into the base kernel (float bases only)."""
        if self._merged_adapter is not None:
            return
        adapter = self._adapters.get(self._active_adapter)
        if adapter is None:
            return
        if self.quantization_mode is not None:
            raise KftError(
                f"Layer '{self.name}' has a {self.quantization_mode} kernel: "
                "merging would quantize the update again and change the "
                "outputs. Keep the adapter unmerged on a quantized base."
            )
        kernel = ops.add(self._kernel, self.delta_kernel())
        if adapter.spec.dora:
            norm = self._output_norm(kernel)
            adapter.merge_norm = ops.convert_to_numpy(norm)
            kernel = self._scale_kernel(kernel, ops.divide(adapter.magnitude, norm))
        self._kernel.assign(kernel)
        object.__setattr__(self, "_merged_adapter", self._active_adapter)
        self._refresh_trainable()

    def unmerge(self):
        """Takes the merged adapter back out of the kernel."""
        if self._merged_adapter is None:
            return
        adapter = self._adapters[self._merged_adapter]
        kernel = self._kernel
        if adapter.spec.dora:
            factor = ops.divide(adapter.magnitude, adapter.merge_norm)
            kernel = self._scale_kernel(kernel, ops.divide(1.0, factor))
            adapter.merge_norm = None
        self._kernel.assign(ops.subtract(kernel, self.delta_kernel(self._merged_adapter)))
        object.__setattr__(self, "_merged_adapter", None)
        self._refresh_trainable()

    def _adapter_or_active(self, name):
        name = self._active_adapter if name is None else name
        self.adapter_spec(name)
        return self._adapters[name]

    def _float_kernel(self):
        """The base kernel in float: dequantized for int8 bases."""
        mode = self.quantization_mode
        if mode is None:
            return ops.convert_to_tensor(self._kernel)
        if mode == "int8":
            return ops.divide(
                ops.cast(self._kernel, "float32"), self._dequant_scale()
            )
        raise KftError(
            f"Layer '{self.name}': no float view of a {mode} kernel."
        )

    # ------------------------------------------------------------- saving

    def save_own_variables(self, store):
        if not self.built:
            return
        super().save_own_variables(store)
        store[layer_record.RECORD_KEY] = layer_record.encode({
            "kind": "lora",
            "class": type(self).__name__,
            "path": self.path,
            "adapters": {n: a.spec.get_config() for n, a in self._adapters.items()},
            "active_adapter": self._active_adapter,
            "merged_adapter": self._merged_adapter,
        })
        for name, adapter in self._adapters.items():
            for key, variable in adapter.variables().items():
                store[f"{key}.{name}"] = variable
            if adapter.merge_norm is not None:
                store[f"merge_norm.{name}"] = adapter.merge_norm

    def load_own_variables(self, store):
        keys = list(store.keys())
        # The base layer's own loader reads "0", "1", ... in its fixed order.
        super().load_own_variables({k: store[k] for k in keys if k.isdigit()})
        adapter_keys = {k for k in keys if not k.isdigit() and k != layer_record.RECORD_KEY}
        if not adapter_keys:
            # Base weights only (saved before LoRA): adapters stay as they are.
            return
        expected, optional = set(), set()
        for name, adapter in self._adapters.items():
            optional.add(f"merge_norm.{name}")
            for key, variable in adapter.variables().items():
                expected.add(f"{key}.{name}")
                if f"{key}.{name}" in adapter_keys:
                    variable.assign(store[f"{key}.{name}"])
            if f"merge_norm.{name}" in adapter_keys:
                adapter.merge_norm = np.asarray(store[f"merge_norm.{name}"])
        missing = sorted(expected - adapter_keys)
        unknown = sorted(adapter_keys - expected - optional)
        if missing or unknown:
            raise KftError(
                f"LoRA layer '{self.name}': the saved adapters do not match the "
                f"layer's (missing {missing or 'none'}, unexpected "
                f"{unknown or 'none'}). Load into a model with the same "
                "adapters, or use kft.peft.load_adapter."
            )

    def _check_load_own_variables(self, store):
        base = self.base_variables()
        if len(store.keys()) != len(base):
            raise KftError(
                f"Layer '{self.name}' expected {len(base)} base variables "
                f"({[v.name for v in base]}) but the weights hold "
                f"{len(store.keys())}."
            )

    def get_config(self):
        config = super().get_config()
        config["activation"] = keras.activations.serialize(self.output_activation)
        for key in ("lora_rank", "lora_alpha"):
            config.pop(key, None)
        specs = {}
        for name in self.adapter_names:
            specs[name] = self.adapter_spec(name).get_config()
        config.update(
            adapters=specs,
            active_adapter=self._active_adapter,
            merged_adapter=self._merged_adapter,
        )
        return config

    # --------------------------------------------------- in-place conversion

    @classmethod
    def _check_convertible(cls, layer):
        if type(layer) is not cls._base_class:
            raise KftError(
                f"Layer '{layer.name}' is a {type(layer).__name__}; "
                f"{cls.__name__} wraps a plain {cls._base_class.__name__}."
            )
        if not layer.built:
            raise KftError(
                f"Layer '{layer.name}' is not built yet; build or call the "
                "model once before adding LoRA."
            )
        if layer.lora_enabled:
            raise KftError(
                f"Layer '{layer.name}' uses Keras' built-in enable_lora; kft's "
                "LoRA replaces it. Start from the layer without enable_lora."
            )

    @classmethod
    def convert_in_place(cls, layer, name, spec):
        """Turns a built base layer into this class, keeping the same object.

        The object stays where it is in every model graph and attribute that
        refers to it, which no replacement layer could do for layers nested
        in keras-hub blocks or functional graphs.

        Args:
            layer: a built, plain base layer.
            name: the first adapter's name.
            spec: its `AdapterSpec`.

        Returns:
            The same layer object, now an instance of `cls` with one adapter
            (active).
        """
        cls._check_convertible(layer)
        check_adapter_name(name)
        activation = layer.activation
        layer.__class__ = cls
        layer._init_adapter_state({}, None, None, activation)
        layer.add_adapter(name, spec)
        layer.set_active_adapter(name)
        return layer

    def revert_in_place(self):
        """Turns this layer back into its plain base class (adapters dropped).

        Merge first to keep the active adapter's update in the kernel.

        Returns:
            The same layer object, now a plain base layer.
        """
        self._tracker.unlock()
        try:
            for name in list(self._adapters):
                if name == self._merged_adapter:
                    object.__setattr__(self, "_merged_adapter", None)
                for variable in self._adapters.pop(name).variables().values():
                    self._untrack_variable(variable)
            seed = getattr(self, "_adapter_seed", None)
            if seed is not None:
                self._tracker.untrack(seed)
                object.__delattr__(self, "_adapter_seed")
        finally:
            self._tracker.lock()
        activation = self.output_activation
        for attribute in ("_adapters", "_pending_specs", "_active_adapter",
                          "_merged_adapter"):
            object.__delattr__(self, attribute)
        self.__class__ = self._base_class
        self.activation = activation
        del self.output_activation
        self.trainable = self.trainable
        return self

    @classmethod
    def from_layer(cls, layer, spec=None, adapter_name="default", **shortcuts):
        """A new layer of this class with `layer`'s weights (copied) and config.

        Args:
            layer: a built plain base layer (float or quantized).
            spec: the adapter's `AdapterSpec` (or config dict).
            adapter_name: the adapter's name.
            **shortcuts: `rank=`, `alpha=`, ... instead of `spec` (see
                `AdapterSpec`).

        Returns:
            A built layer of this class; `layer` itself is left unchanged.
        """
        cls._check_convertible(layer)
        # Checked here: from_config would bury a KftError in a TypeError.
        spec = AdapterSpec.from_arguments(spec, **shortcuts)
        check_adapter_name(adapter_name)
        config = layer.get_config()
        for key in ("lora_rank", "lora_alpha"):
            config.pop(key, None)
        config.update(spec.get_config(), adapter_name=adapter_name)
        new = cls.from_config(config)
        new.build_from_config(layer.get_build_config())
        sources = {v.name: v for v in layer.weights}
        for target in new.base_variables():
            target.assign(sources[target.name])
        if spec.dora:
            # The magnitude was initialized from the placeholder kernel.
            magnitude = new.adapter_variables(adapter_name)["lora_magnitude"]
            magnitude.assign(new._output_norm(new._float_kernel()))
        return new


@contextlib.contextmanager
def adapters_switched_off(layers):
    """Inside the `with`, `layers` (LoRA layers) compute their base only.

    Nothing about the layers changes (active adapter, trainable flags,
    traced functions): their `call` leaves the adapter out while the block
    runs, in this thread only. So a train step can run the same model with
    and without its adapters; a function traced inside keeps the base-only
    graph. `kft.peft.without_adapters(model)` is the model-level form.
    """
    counts = getattr(_SWITCHED_OFF, "counts", None)
    if counts is None:
        counts = _SWITCHED_OFF.counts = collections.Counter()
    keys = [id(layer) for layer in layers]
    counts.update(keys)
    try:
        yield
    finally:
        counts.subtract(keys)
        for key in keys:
            if counts[key] <= 0:
                del counts[key]


def adapter_init_args(
    rank, alpha, dropout, dora, rslora, init, adapter_name, adapters, active_adapter
):
    """Resolves a LoRA layer's constructor arguments to `(specs, active)`."""
    if adapters is None:
        check_adapter_name(adapter_name)
        adapters = {
            adapter_name: AdapterSpec(rank, alpha, dropout, dora, rslora, init)
        }
        if active_adapter == _UNSET:
            active_adapter = adapter_name
    else:
        adapters = {
            name: AdapterSpec.from_config(spec) for name, spec in adapters.items()
        }
        for name in adapters:
            check_adapter_name(name)
        if active_adapter == _UNSET:
            active_adapter = next(iter(adapters), None)
    return adapters, active_adapter
