"""kft.models.dynamic_padding: each batch padded to its longest text gives the fixed-length results."""

import keras
import numpy as np
import tensorflow as tf

import kft
from kft import saving
from kft.data import text as text_data
from kft.models.dynamic_padding import BatchLongestPacker
from kft.models.dynamic_padding import predict_by_length
from kft.models.token_classifier import predict_words, token_classifier

SEQUENCE_LENGTH = 32
# Lengths spread over several widths; the last is cut at the sequence length.
TEXTS = ["good", "the film was not very good", "bad . awful !",
         "the food was great and the service was excellent , really loved it",
         " ".join(["the phone works"] * 20)]
LABELS = [1, 1, 0, 1, 0]


def classifier(tiny_bert_dir, pad_to_multiple_of):
    keras.utils.set_random_seed(0)
    model = kft.text.text_classifier(tiny_bert_dir, 2, sequence_length=SEQUENCE_LENGTH,
                                     dropout=0.0, pad_to_multiple_of=pad_to_multiple_of)
    for layer in model._flatten_layers():
        if isinstance(layer, keras.layers.Dropout):
            layer.rate = 0.0  # dropout masks depend on the shape: compare without them
    model.compile(keras.optimizers.SGD(0.5), "sparse_categorical_crossentropy")
    return model


def test_batches_are_padded_to_their_longest_text_in_multiples_of_eight(tiny_bert_dir):
    model = classifier(tiny_bert_dir, 8)
    assert isinstance(model.preprocessor.packer, BatchLongestPacker)
    fixed = classifier(tiny_bert_dir, None).preprocessor
    for texts in (TEXTS[:1], TEXTS[:3], TEXTS[:4], TEXTS):
        padded = model.preprocessor(tf.constant(texts))
        full = fixed(tf.constant(texts))
        longest = int(np.max(np.sum(full["padding_mask"], axis=1)))
        width = padded["token_ids"].shape[1]
        assert width % 8 == 0 and longest <= width < longest + 8 or width == SEQUENCE_LENGTH
        for name in ("token_ids", "padding_mask", "segment_ids"):
            np.testing.assert_array_equal(padded[name], full[name][:, :width])
            assert not np.any(full["padding_mask"][:, width:])
    assert model.preprocessor(tf.constant(TEXTS[:1]))["token_ids"].shape == (1, 8)
    assert model.preprocessor(tf.constant(TEXTS))["token_ids"].shape == (5, SEQUENCE_LENGTH)


def test_predictions_and_training_equal_the_fixed_length_model(tiny_bert_dir):
    dynamic, fixed = classifier(tiny_bert_dir, 8), classifier(tiny_bert_dir, None)
    for left, right in zip(dynamic.weights, fixed.weights):
        np.testing.assert_array_equal(left, right)
    texts = np.array(TEXTS, dtype=object)  # batches of 2: widths 8, 16 and 32
    expected = fixed.predict(texts, batch_size=2, verbose=0)
    np.testing.assert_allclose(dynamic.predict(texts, batch_size=2, verbose=0), expected,
                               atol=1e-6)
    # Sorted by length into batches, returned in the order given.
    shuffled = [4, 0, 3, 1, 2]
    np.testing.assert_allclose(predict_by_length(dynamic, texts[shuffled], batch_size=2),
                               expected[shuffled], atol=1e-6)

    batches = tf.data.Dataset.from_tensor_slices((TEXTS, LABELS)).batch(2)
    history = [model.fit(batches, epochs=2, verbose=0).history["loss"]
               for model in (dynamic, fixed)]
    np.testing.assert_allclose(*history, rtol=1e-5)
    start = classifier(tiny_bert_dir, None)
    still = []
    for left, right, before in zip(dynamic.trainable_weights, fixed.trainable_weights,
                                   start.trainable_weights):
        np.testing.assert_allclose(left, right, atol=1e-5)
        if np.allclose(left, before):
            still.append(left.path)
    # Every weight trained, the same way; attention's key biases get no
    # gradient (softmax ignores a shift shared by every key).
    assert still and all(path.endswith("key/bias") for path in still), still


def test_loading_restores_the_packer_and_plain_keras_gives_the_same_outputs(
        tiny_bert_dir, tmp_path):
    model = classifier(tiny_bert_dir, 8)
    texts = np.array(TEXTS, dtype=object)
    expected = model.predict(texts, verbose=0)
    model.save(tmp_path / "model.keras")
    reloaded = saving.load_model(tmp_path / "model.keras")
    assert isinstance(reloaded.preprocessor.packer, BatchLongestPacker)
    np.testing.assert_allclose(reloaded.predict(texts, verbose=0), expected, atol=1e-6)
    plain = keras.saving.load_model(tmp_path / "model.keras")  # keras-hub's own packer
    np.testing.assert_allclose(plain.predict(texts, verbose=0), expected, atol=1e-6)


def test_token_classifiers_pad_to_the_longest_sentence_with_labels_aligned(tiny_bert_dir):
    tags = ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
    keras.utils.set_random_seed(0)
    dynamic = token_classifier(tiny_bert_dir, tags, sequence_length=SEQUENCE_LENGTH)
    keras.utils.set_random_seed(0)
    fixed = token_classifier(tiny_bert_dir, tags, sequence_length=SEQUENCE_LENGTH)
    fixed.preprocessor.pad_to_multiple_of = None
    sentences = ["alice lives in paris", "bob works at acme in london"]
    words = [[3, 0, 0, 1], [3, 0, 0, 0, 0, 1]]
    labels = tf.ragged.constant(words).to_tensor(default_value=-1)
    x, y, weights = dynamic.preprocessor(tf.constant(sentences), labels, tf.ones([2]))
    full_x, full_y, full_weights = fixed.preprocessor(tf.constant(sentences), labels, tf.ones([2]))
    width = x["token_ids"].shape[1]
    assert width == 8 < SEQUENCE_LENGTH
    for name in x:
        np.testing.assert_array_equal(x[name], full_x[name][:, :width])
    np.testing.assert_array_equal(y, full_y[:, :width])
    assert np.all(full_y[:, width:] == -1)
    np.testing.assert_array_equal(weights, full_weights[:, :width])
    assert predict_words(dynamic, sentences) == predict_words(fixed, sentences)
    np.testing.assert_allclose(keras.Model.predict_on_batch(dynamic, x),
                               keras.Model.predict_on_batch(fixed, full_x)[:, :width],
                               atol=1e-6)


def test_length_grouped_batches_reshuffle_and_keep_every_text_once():
    rng = np.random.default_rng(0)
    texts = np.array(["w" * int(n) for n in rng.integers(1, 200, 1000)], dtype=object)
    targets = np.arange(len(texts), dtype="int32")  # the target says which text it is
    dataset = text_data.length_grouped_batches(texts, targets, 32, seed=0)
    assert dataset.cardinality() == 32

    epochs = [[(batch[0].numpy(), batch[1].numpy()) for batch in dataset] for _ in range(2)]
    for epoch in epochs:
        seen = np.concatenate([ids for _, ids in epoch])
        assert sorted(seen) == list(range(len(texts)))
        for strings, ids in epoch:
            assert [len(s) for s in strings] == [len(texts[i]) for i in ids]
    first, second = ([tuple(ids) for _, ids in epoch] for epoch in epochs)
    assert first != second and set(first) != set(second)  # new batches, new order

    def padded(batches):  # characters computed when each batch pads to its longest
        return sum(len(strings) * max(map(len, strings)) for strings in batches)

    plain = text_data.from_lists(list(texts), list(targets % 2), validation_split=0.0,
                                 group_by_length=False).train
    assert padded([strings for strings, _ in epochs[0]]) < 0.7 * padded(
        [x.numpy() for x, _ in plain])

    fixed = text_data.length_grouped_batches(texts, targets, 32)
    lengths = [len(s) for batch, _ in fixed for s in batch.numpy()]
    assert lengths == sorted(lengths)


def test_text_data_groups_by_length_by_default():
    texts = ["a" * n for n in range(1, 41)]
    data = text_data.from_lists(texts, [n % 2 for n in range(40)], validation_split=0.25,
                                batch_size=4)
    validation = [len(s) for batch, _ in data.validation for s in batch.numpy()]
    assert validation == sorted(validation)
    widths = [np.ptp([len(s) for s in batch.numpy()]) for batch, _ in data.train]
    assert max(widths) <= 8  # similar lengths in each training batch
