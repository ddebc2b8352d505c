"""Classification reports, confusion matrices and the linear-probe baseline."""

import keras
import numpy as np
import pytest

from kft import evaluation
from kft.data import images
from kft.errors import KftError
from tests.helpers.tiny_models import random_images, tiny_image_model


def test_report_matches_hand_counts():
    labels = np.array([0, 0, 0, 1, 1, 2])
    predicted = np.array([0, 0, 1, 1, 2, 0])
    probabilities = np.eye(3)[predicted]
    result = evaluation.report(labels, probabilities, ["a", "b", "c"])
    np.testing.assert_array_equal(result.confusion, [[2, 1, 0], [0, 1, 1], [1, 0, 0]])
    np.testing.assert_allclose(result.precision, [2 / 3, 1 / 2, 0])
    np.testing.assert_allclose(result.recall, [2 / 3, 1 / 2, 0])
    np.testing.assert_allclose(result.f1, [2 / 3, 1 / 2, 0])
    assert result.accuracy == pytest.approx(3 / 6)
    assert result.macro_f1 == pytest.approx((2 / 3 + 1 / 2) / 3)
    as_dict = result.as_dict()
    assert as_dict["per_class"]["a"]["support"] == 3
    assert "macro avg" in result.format()


def test_multi_label_report_thresholds_each_label():
    labels = np.array([[1, 0], [1, 1], [0, 1]])
    probabilities = np.array([[0.9, 0.2], [0.7, 0.4], [0.1, 0.8]])
    result = evaluation.report(labels, probabilities, ["x", "y"], multi_label=True)
    np.testing.assert_allclose(result.precision, [1.0, 1.0])
    np.testing.assert_allclose(result.recall, [1.0, 0.5])
    assert result.accuracy == pytest.approx(2 / 3) and result.confusion is None
    with pytest.raises(KftError, match="multi-label"):
        evaluation.plot_confusion_matrix(result, "unused.png")


def test_class_count_mismatch_is_a_clear_error():
    with pytest.raises(KftError, match="predicts 3 classes but the data has 2"):
        evaluation.report(np.array([0, 1]), np.ones((2, 3)), ["a", "b"])


def test_evaluate_and_confusion_png(tmp_path):
    x, y = random_images(24)
    data = images.from_arrays(x, y, batch_size=8, validation_split=0.5)
    model = tiny_image_model(3)
    result = evaluation.evaluate(model, data.validation, data.class_names)
    assert result.support.sum() == data.num_validation
    target = tmp_path / "confusion.png"
    evaluation.plot_confusion_matrix(result, target)
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_linear_probe_learns_and_leaves_the_model_alone():
    x, y = random_images(90, seed=1)
    data = images.from_arrays(x, y, batch_size=16, validation_split=0.3, seed=0)
    keras.utils.set_random_seed(0)
    model = tiny_image_model(3)
    before = [keras.ops.convert_to_numpy(v).copy() for v in model.weights]
    reports = evaluation.linear_probe(model, data, epochs=150, learning_rate=0.1, patience=150)
    assert set(reports) == {"validation"}
    # Brightness encodes the class: a head on frozen random conv features learns it.
    assert reports["validation"].accuracy >= 0.8
    for old, new in zip(before, model.weights):
        np.testing.assert_array_equal(old, keras.ops.convert_to_numpy(new))


def test_linear_probe_needs_held_out_data():
    x, y = random_images(12)
    data = images.from_arrays(x, y, batch_size=4, validation_split=0)
    with pytest.raises(KftError, match="validation or test"):
        evaluation.linear_probe(tiny_image_model(3), data)
