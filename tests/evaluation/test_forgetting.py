"""The forgetting probe: a linear probe on another labelled set, before and after."""

import numpy as np
import pytest

from kft.data import images
from kft.errors import KftError
from kft.evaluation import forgetting
from tests.helpers.tiny_models import IMAGE_SIZE, tiny_classifier, values


def _colour_digits(n=90, seed=0):
    """A reference set of 3 classes the tiny backbone separates: the bright channel."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 3
    x = rng.integers(0, 60, size=(n, IMAGE_SIZE, IMAGE_SIZE, 3))
    x[np.arange(n), :, :, labels] += 150
    return images.from_arrays(x.astype(np.uint8), labels, batch_size=16, seed=seed,
                              validation_split=0.3, class_names=["r", "g", "b"])


def test_the_probe_reads_the_features_and_sees_a_backbone_that_forgot():
    model = tiny_classifier()
    reference = _colour_digits()
    weights = values(model)

    before = forgetting.probe(model, reference)
    # The probe trains its own layer: the model is untouched.
    after_probe = values(model)
    for path, value in weights.items():
        np.testing.assert_array_equal(value, after_probe[path], err_msg=path)
    assert before.measure == "accuracy" and before.split == "validation"
    assert before.value > 0.7

    # A backbone that lost its convolutions maps every image to the same features.
    for layer in model.get_layer("backbone").layers:
        if layer.name.startswith("conv"):
            layer.kernel.assign(np.zeros(layer.kernel.shape))
    after = forgetting.probe(model, reference)
    assert after.value < 0.5
    result = forgetting.Forgetting("colours", before, after)
    assert result.lost == pytest.approx(before.value - after.value) and result.lost > 0.3
    saved = result.as_dict()
    assert saved["before"] == before.value and saved["measure"] == "accuracy"


def test_the_same_features_give_the_same_score_and_the_random_state_is_left_alone():
    import keras
    import tensorflow as tf

    model, reference = tiny_classifier(), _colour_digits()

    def draws():
        return (keras.ops.convert_to_numpy(keras.random.uniform((4,))),
                tf.random.uniform((4,)).numpy(), np.random.random(4))

    keras.utils.set_random_seed(5)
    first = forgetting.probe(model, reference).value
    after_probe = draws()
    keras.utils.set_random_seed(5)
    untouched = draws()
    assert forgetting.probe(model, reference).value == first
    # A run's dropout and augmentation draw what they would have drawn unmeasured.
    for probed, plain in zip(after_probe, untouched):
        np.testing.assert_array_equal(probed, plain)


def test_perplexity_rising_is_what_is_lost():
    lower = forgetting.Probe("perplexity", 20.0, "all", 1.0)
    higher = forgetting.Probe("perplexity", 26.5, "all", 1.0)
    assert forgetting.Forgetting("general", lower, higher).lost == pytest.approx(6.5)
    assert forgetting.Forgetting("general", higher, lower).lost == pytest.approx(-6.5)


@pytest.mark.parametrize("reference, message", [
    (object(), "labelled data"),
    (images.from_arrays(np.zeros((6, 8, 8, 3), np.uint8), np.arange(6) % 2, batch_size=2,
                        validation_split=0), "validation or test data"),
])
def test_a_reference_that_cannot_be_probed_is_one_clear_error(reference, message):
    with pytest.raises(KftError, match=message):
        forgetting.probe(tiny_classifier(), reference)
