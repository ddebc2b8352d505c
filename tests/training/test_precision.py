"""Mixed precision: policy set and restored, float32 outputs, loss scaling in use."""

import keras
import keras_hub
import numpy as np
import pytest

from kft.training import precision
from kft.runs import recipe as recipes
from kft.runs import runner
from kft.errors import KftError
from kft.optimizers import LayerwiseLR
from tests.helpers.process import REPO


def test_policy_is_restored_and_bad_names_are_errors():
    with precision.precision_policy("mixed_bfloat16"):
        assert keras.mixed_precision.global_policy().name == "mixed_bfloat16"
    assert keras.mixed_precision.global_policy().name == "float32"
    with pytest.raises(KftError, match="Unknown precision 'float8'"):
        with precision.precision_policy("float8"):
            pass


def test_keras_hub_classifier_output_is_made_float32(tiny_bert_dir):
    with precision.precision_policy("mixed_float16"):
        model = keras_hub.models.BertTextClassifier.from_preset(
            tiny_bert_dir, num_classes=2, preprocessor=None)
        kept = precision.float32_outputs(model)
        assert kept == [model.output_dense.name]
        assert precision.float32_outputs(model) == []
    batch = {"token_ids": np.array([[2, 10, 11, 3]]), "segment_ids": np.zeros((1, 4), "int32"),
             "padding_mask": np.ones((1, 4), bool)}
    assert keras.backend.standardize_dtype(model(batch).dtype) == "float32"


def test_mixed_float16_run_scales_the_loss_through_layerwise_rates(run_in_tmp):
    recipe = recipes.load(REPO / "tests/helpers/recipes/tiny_distributed.py")
    result = runner.run(recipe, overrides=[
        "precision=mixed_float16", "gradual=false", "finetune_epochs=2", "strategy=one_device"])
    model = result.model
    assert keras.mixed_precision.global_policy().name == "float32"
    assert model.get_layer("backbone").get_layer("block1_conv").compute_dtype == "float16"
    assert model.get_layer("head_dense").compute_dtype == "float32"
    # Keras' compile wrapped kft's LayerwiseLR (layer_decay) in loss scaling.
    optimizer = model.optimizer
    assert isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
    assert isinstance(optimizer.inner_optimizer, LayerwiseLR)
    assert int(optimizer.step_counter) > 0
    assert float(optimizer.scale_loss(1.0)) == float(optimizer.dynamic_scale) > 1.0
    losses = [row["metrics"]["loss"] for row in result.metrics["stages"]]
    assert losses[-1] < losses[0]


def test_mixed_bfloat16_trains():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4)).astype("float32")
    y = (x[:, 0] > 0).astype("int32")
    with precision.precision_policy("mixed_bfloat16"):
        keras.utils.set_random_seed(0)
        inputs = keras.Input((4,))
        outputs = keras.layers.Dense(2, activation="softmax", dtype="float32")(
            keras.layers.Dense(8, activation="relu")(inputs))
        model = keras.Model(inputs, outputs)
        model.compile(keras.optimizers.Adam(0.05), "sparse_categorical_crossentropy")
        history = model.fit(x, y, batch_size=16, epochs=5, verbose=0)
    assert model.layers[1].compute_dtype == "bfloat16"
    assert history.history["loss"][-1] < 0.5 * history.history["loss"][0]
