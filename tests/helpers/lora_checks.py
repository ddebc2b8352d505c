"""The checks every LoRA layer type must pass, shared by the LoRADense and
LoRAEinsumDense tests (table-driven over `OPTIONS`)."""

import warnings

import keras
import numpy as np

from kft.layers import AdapterSpec


OPTIONS = {
    "lora": {},
    "rslora": {"rslora": True},
    "dora": {"dora": True},
    "dropout": {"dropout": 0.3},
    "gaussian_init": {"init": "gaussian"},
    "dora_rslora_dropout": {"dora": True, "rslora": True, "dropout": 0.1},
}


def randomize_adapter(layer, name="default", seed=1):
    """Gives B (and the DoRA magnitude) non-trivial values, as after training."""
    rng = np.random.default_rng(seed)
    for key, variable in layer.adapter_variables(name).items():
        noise = rng.normal(scale=0.3, size=variable.shape).astype("float32")
        if key == "lora_magnitude":
            variable.assign(variable.numpy() * (1.0 + noise))
        else:
            variable.assign(noise)


def functional(layer, inputs):
    x = keras.Input(inputs.shape[1:])
    return keras.Model(x, layer(x))


def snapshot(variables):
    return {v.path: np.array(v.numpy()) for v in variables}


def check_identity_at_init(lora_cls, make_base, inputs, options):
    base = make_base()
    lora = lora_cls.from_layer(base, rank=3, alpha=6, **options)
    np.testing.assert_allclose(lora(inputs), base(inputs), atol=1e-6)


def check_merged_equals_unmerged(lora_cls, make_base, inputs, options):
    lora = lora_cls.from_layer(make_base(), rank=3, alpha=6, **options)
    randomize_adapter(lora)
    kernel = np.array(lora._kernel.numpy())
    unmerged = np.array(lora(inputs))
    lora.merge()
    assert lora.merged_adapter == "default"
    assert not np.allclose(lora._kernel.numpy(), kernel)
    np.testing.assert_allclose(lora(inputs), unmerged, atol=2e-5)
    lora.unmerge()
    np.testing.assert_allclose(lora._kernel.numpy(), kernel, atol=1e-6)
    np.testing.assert_allclose(lora(inputs), unmerged, atol=2e-5)


def check_fit_changes_only_adapters(lora_cls, make_base, inputs, options):
    keras.utils.set_random_seed(0)
    lora = lora_cls.from_layer(make_base(), rank=3, alpha=6, **options)
    model = functional(lora, inputs)
    shape = model.predict(inputs, verbose=0).shape
    targets = np.random.default_rng(3).normal(size=shape).astype("float32")
    base = snapshot(lora.base_variables())
    adapters = snapshot(lora.adapter_variables("default").values())
    assert {v.path for v in model.trainable_weights} == set(adapters)
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss="mse")
    model.fit(inputs, targets, epochs=3, batch_size=len(inputs), verbose=0)
    for variable in lora.base_variables():
        np.testing.assert_array_equal(variable.numpy(), base[variable.path])
    for variable in lora.adapter_variables("default").values():
        assert not np.array_equal(variable.numpy(), adapters[variable.path]), variable.path


def check_keras_round_trip(lora_cls, make_base, inputs, options, tmp_path):
    keras.utils.set_random_seed(0)
    lora = lora_cls.from_layer(make_base(), rank=3, alpha=6, **options)
    randomize_adapter(lora)
    model = functional(lora, inputs)
    targets = np.zeros_like(model.predict(inputs, verbose=0))
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss="mse")
    model.fit(inputs, targets, epochs=1, batch_size=len(inputs), verbose=0)
    before = snapshot(model.weights)
    outputs = model.predict(inputs, verbose=0)
    model.save(tmp_path / "model.keras")

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = keras.models.load_model(tmp_path / "model.keras")
    assert not [w for w in caught if "Skipping variable loading" in str(w.message)]
    layer = loaded.get_layer(lora.name)
    assert type(layer) is lora_cls
    assert layer.adapter_names == ["default"]
    assert layer.adapter_spec("default") == lora.adapter_spec("default")
    # Base and adapters come back apart and unchanged, not merged.
    for variable in loaded.weights:
        np.testing.assert_array_equal(variable.numpy(), before[variable.path])
    np.testing.assert_allclose(loaded.predict(inputs, verbose=0), outputs, atol=1e-6)
    assert all(not v.trainable for v in layer.base_variables())

    # Training continues: the adapters move, the base does not.
    adapters = snapshot(layer.adapter_variables("default").values())
    loaded.fit(inputs, targets, epochs=2, batch_size=len(inputs), verbose=0)
    for variable in layer.base_variables():
        np.testing.assert_array_equal(variable.numpy(), before[variable.path])
    assert not np.array_equal(
        layer.adapter_variables("default")["lora_b"].numpy(),
        adapters[layer.adapter_variables("default")["lora_b"].path],
    )


def check_quantized_base(lora_cls, make_base, inputs, mode, dora, tmp_path):
    keras.utils.set_random_seed(0)
    base = make_base()
    x = keras.Input(inputs.shape[1:])
    model = keras.Model(x, base(x))
    model.quantize(mode)
    quantized_outputs = model.predict(inputs, verbose=0)
    quantized = snapshot(base.weights)
    lora_cls.convert_in_place(base, "default", AdapterSpec(rank=3, alpha=6, dora=dora))
    assert base.quantization_mode == mode
    np.testing.assert_allclose(model.predict(inputs, verbose=0), quantized_outputs, atol=1e-6)

    targets = np.ones_like(quantized_outputs)
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss="mse")
    model.fit(inputs, targets, epochs=3, batch_size=len(inputs), verbose=0)
    for variable in base.base_variables():
        np.testing.assert_array_equal(variable.numpy(), quantized[variable.path])
    trained = model.predict(inputs, verbose=0)
    assert not np.allclose(trained, quantized_outputs, atol=1e-3)
    model.save(tmp_path / "quantized.keras")
    loaded = keras.models.load_model(tmp_path / "quantized.keras")
    layer = loaded.get_layer(base.name)
    assert layer.quantization_mode == mode
    for variable in layer.base_variables():
        np.testing.assert_array_equal(variable.numpy(), quantized[variable.path])
    np.testing.assert_array_equal(loaded.predict(inputs, verbose=0), trained)
