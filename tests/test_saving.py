"""kft.saving: every kft object loads from a fresh `import kft`; `.keras` round trips
of keras-hub models with PEFT layers inside their blocks."""

import keras
import numpy as np
import pytest

from kft import peft
from kft import saving
from kft.errors import KftError
from kft.layers import BottleneckAdapter
from kft.layers import LoRAEinsumDense
from tests.helpers.peft_models import BERT_LAYERS
from tests.helpers.peft_models import compile_for_logits
from tests.helpers.peft_models import randomize_adapters
from tests.helpers.peft_models import snapshot
from tests.helpers.peft_models import tiny_bert
from tests.helpers.peft_models import token_batch
from tests.helpers.process import run_script
from tests.helpers.tiny_models import random_images
from tests.helpers.tiny_models import tiny_image_model


def _instances(tiny_bert_dir):
    """One instance of every kft class Keras can save, by registered name."""
    import kft
    from kft import schedules
    from kft.models.dynamic_padding import BatchLongestPacker
    from kft.models.gguf.preprocessor import ChatCausalLMPreprocessor
    from kft.models.gguf.tokenizer import ChatBytePairTokenizer
    from kft.models.instruction_preprocessor import InstructionCausalLMPreprocessor
    from tests.helpers.gguf_files import byte_level_vocabulary

    tokens, merges, _ = byte_level_vocabulary()
    chat_tokenizer = ChatBytePairTokenizer(
        {token: i for i, token in enumerate(tokens)}, merges, end_token="<|im_end|>",
        chat_template="{{ messages }}")
    warmup = schedules.WarmupDecay(0.01, 100, warmup=10)
    return {
        "BatchLongestPacker": BatchLongestPacker(sequence_length=8, start_value=1, end_value=2,
                                                 pad_value=0),
        "BottleneckAdapter": kft.layers.BottleneckAdapter(bottleneck_dim=4),
        "ChatBytePairTokenizer": chat_tokenizer,
        "ChatCausalLMPreprocessor": ChatCausalLMPreprocessor(chat_tokenizer, sequence_length=8),
        "CyclicalTriangular": schedules.CyclicalTriangular(1e-3, 1e-2, step_size=10),
        "EntityF1": kft.evaluation.entities.EntityF1(),
        "GradualUnfreezing": kft.GradualUnfreezing(every_epochs=1),
        "ImagePreprocessing": kft.layers.ImagePreprocessing(mode="tf"),
        "InstructionCausalLMPreprocessor": InstructionCausalLMPreprocessor(
            chat_tokenizer, sequence_length=8, train_on_prompt=True),
        "LayerwiseLR": kft.optimizers.LayerwiseLR(keras.optimizers.SGD(0.1)),
        "LoRADense": kft.layers.LoRADense(4, rank=2),
        "LoRAEinsumDense": kft.layers.LoRAEinsumDense("ab,bc->ac", output_shape=4, rank=2),
        "OneCycle": schedules.OneCycle(0.01, 100),
        "PerUpdateSchedule": schedules.PerUpdateSchedule(warmup, 2),
        "PrefixPadding": kft.layers.PrefixPadding(2),
        "ResponseLoss": kft.text.response_loss(),
        "SlantedTriangular": schedules.SlantedTriangular(0.01, 100),
        "SoftPrompt": kft.layers.SoftPrompt(2),
        "TokenClassifier": kft.text.token_classifier(
            tiny_bert_dir, ["O", "B-X", "I-X"], sequence_length=8),
        "TokenClassifierPreprocessor": kft.text.token_classifier(
            tiny_bert_dir, ["O", "B-X", "I-X"], sequence_length=8).preprocessor,
        "WarmupDecay": warmup,
    }


def test_every_kft_keras_object_loads_after_a_plain_import_kft(tmp_path, tiny_bert_dir):
    import importlib
    import json
    import pkgutil

    import kft

    # Import every kft module: whatever registers anywhere must be in the table.
    for module in pkgutil.walk_packages(kft.__path__, "kft."):
        if module.name != "kft.__main__":
            importlib.import_module(module.name)
    registered = {
        name.split(">", 1)[1] for name in keras.saving.get_custom_objects()
        if name.startswith("kft>")
    }
    instances = _instances(tiny_bert_dir)
    assert registered == set(instances)
    configs = {name: keras.saving.serialize_keras_object(obj) for name, obj in instances.items()}
    (tmp_path / "configs.json").write_text(json.dumps(configs))

    run_script(f"""
import json, pathlib
import keras
import kft
configs = json.loads(pathlib.Path({str(tmp_path / "configs.json")!r}).read_text())
for name, config in configs.items():
    loaded = keras.saving.deserialize_keras_object(config)
    assert type(loaded).__name__ == name, (name, type(loaded))
""")


def test_a_model_trained_with_accumulation_loads_with_plain_keras(tmp_path):
    from kft import Stage
    from kft.runs.compiling import compile_stage
    from kft.runs.recipe import Recipe

    recipe = Recipe(name="tiny", params={}, data=None, model=None, stages=None)
    stage = Stage("head", epochs=1, train="all", lr=0.01, schedule="cosine", warmup=0.1)
    model = tiny_image_model()
    images, labels = random_images(16)
    compile_stage(model, recipe, stage, steps_per_epoch=4, accumulate=2)
    model.fit(images, labels, batch_size=4, epochs=1, verbose=0)
    model.save(tmp_path / "model.keras")
    np.save(tmp_path / "images.npy", images)
    np.save(tmp_path / "expected.npy", model.predict(images, verbose=0))

    run_script(f"""
import numpy as np
import keras
import kft
folder = {str(tmp_path)!r}
model = keras.saving.load_model(folder + "/model.keras")
np.testing.assert_allclose(
    model.predict(np.load(folder + "/images.npy"), verbose=0), np.load(folder + "/expected.npy"),
    atol=1e-6)
assert type(model.optimizer._learning_rate).__name__ == "PerUpdateSchedule"
""")


def test_lora_and_adapters_in_keras_hub_blocks_round_trip(tmp_path):
    model = tiny_bert()
    features, labels = token_batch()
    peft.apply_lora(model, rank=2, dora=True, adapter_name="main")
    peft.add_adapter(model, "spare", rank=3)
    peft.apply_bottleneck_adapters(model, bottleneck_dim=4, train_also=["logits"])
    compile_for_logits(model)
    model.fit(features, labels, epochs=1, batch_size=8, verbose=0)
    outputs = model.predict(features, verbose=0)
    weights = snapshot(model)
    model.save(tmp_path / "tuned.keras")

    # Plain Keras rebuilds the blocks with plain sublayers: the weights do not fit.
    with pytest.raises(ValueError, match="could not be loaded"):
        keras.models.load_model(tmp_path / "tuned.keras")

    loaded = saving.load_model(tmp_path / "tuned.keras", train_also=["logits"])
    assert [p for p, _ in peft.lora_layers(loaded)] == BERT_LAYERS
    query = dict(peft.lora_layers(loaded))[BERT_LAYERS[0]]
    assert type(query) is LoRAEinsumDense
    assert query.adapter_names == ["main", "spare"] and query.active_adapter == "main"
    assert query.adapter_spec("main").dora
    block = loaded.backbone.get_layer("transformer_layer_1")
    assert isinstance(block._feedforward_dropout, BottleneckAdapter)
    for variable in loaded.weights:
        np.testing.assert_array_equal(variable.numpy(), weights[variable.path])
    np.testing.assert_allclose(loaded.predict(features, verbose=0), outputs, atol=1e-6)
    assert {v.path for v in loaded.trainable_weights} == {v.path for v in model.trainable_weights}
    assert int(loaded.optimizer.iterations.numpy()) == 2  # optimizer state came back

    # Training continues: adapters move, the base stays.
    loaded.fit(features, labels, epochs=1, batch_size=8, verbose=0)
    moved = {v.path for v in loaded.weights if not np.array_equal(v.numpy(), weights[v.path])}
    assert moved and all(
        "lora_" in p and "spare" not in p or "adapter/" in p or p.startswith("logits/")
        for p in moved
    )


def test_merged_state_survives_the_round_trip(tmp_path):
    model = tiny_bert()
    features, _ = token_batch()
    peft.apply_lora(model, rank=2, dora=True)
    randomize_adapters(model)
    unmerged = model.predict(features, verbose=0)
    base_kernel = np.array(dict(peft.lora_layers(model))[BERT_LAYERS[0]]._kernel.numpy())
    peft.merge(model)
    model.save(tmp_path / "merged.keras")
    loaded = saving.load_model(tmp_path / "merged.keras", compile=False)
    query = dict(peft.lora_layers(loaded))[BERT_LAYERS[0]]
    assert query.merged_adapter == "default"
    np.testing.assert_allclose(loaded.predict(features, verbose=0), unmerged, atol=1e-5)
    peft.unmerge(loaded)
    np.testing.assert_allclose(query._kernel.numpy(), base_kernel, atol=1e-6)
    np.testing.assert_allclose(loaded.predict(features, verbose=0), unmerged, atol=1e-5)


def test_not_a_keras_file_is_refused(tmp_path):
    (tmp_path / "model.keras").write_text("not a zip")
    with pytest.raises(KftError, match="is not a readable .keras file"):
        saving.load_model(tmp_path / "model.keras")
