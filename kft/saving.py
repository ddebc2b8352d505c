"""Saving and loading kft models: `load_model`, the one loader for `.keras` files.

`import kft` registers every kft Keras object (layers, optimizers, schedules,
callbacks, metrics, keras-hub tasks) with Keras, by importing the modules
that define them here, so `keras.saving.load_model` opens a model that holds
any of them.

`load_model` also restores what `keras.models.load_model` cannot: a keras-hub
`TransformerEncoder` builds its attention and feed-forward sublayers itself,
as plain `EinsumDense`/`Dense`/`Dropout`, so LoRA projections and bottleneck
adapters inside it come back plain and their saved weights do not fit.
kft's layers save a record of themselves with their weights
(`kft.layers.layer_record`); `load_model` rebuilds the model, puts the
recorded layers back, then loads the weights. Run directories, `kft export`
and resumed runs load through it.
"""

import io
import json
import zipfile

import h5py
import keras

# Every module that registers kft objects with Keras (see the docstring).
import kft.evaluation.entities  # noqa: F401  (EntityF1)
import kft.freezing.gradual  # noqa: F401  (GradualUnfreezing)
import kft.layers  # noqa: F401  (LoRA, bottleneck, soft prompt, image preprocessing)
import kft.models.gguf.preprocessor  # noqa: F401  (ChatCausalLMPreprocessor, ChatBytePairTokenizer)
import kft.models.token_classifier  # noqa: F401  (TokenClassifier and its preprocessor)
import kft.optimizers  # noqa: F401  (LayerwiseLR)
import kft.schedules  # noqa: F401  (WarmupDecay, OneCycle, PerUpdateSchedule, ...)
from kft.errors import KftError
from kft.layers import layer_record
from kft.layers.bottleneck_adapter import BottleneckAdapter
from kft.layers.lora_adapters import AdapterSpec
from kft.layers.lora_adapters import LoRAAdapters
from kft.layers.lora_conversion import LORA_CLASSES
from kft.layers.lora_conversion import add_lora_adapter
from kft.model_tree import reset_compiled_functions

_CONFIG = "config.json"
_WEIGHTS = "model.weights.h5"


def load_model(filepath, train_also=None, custom_objects=None, compile=True, safe_mode=True):
    """`keras.models.load_model` that restores kft PEFT layers in keras-hub blocks.

    A keras-hub text classifier also gets back kft's padding of each batch to
    its longest text (`kft.models.dynamic_padding`).

    After the layers are back, the model is frozen as PEFT leaves it
    (`freeze_base`: only adapters, soft prompts and `train_also` train; a
    reloaded keras-hub model would otherwise come back all trainable), then
    compiled from the saved compile config (so the optimizer has the saved
    variables) and the weights and optimizer state are loaded.

    Args:
        filepath: a `.keras` file.
        train_also: layers that trained fully besides the adapters (the
            head), as for `apply_lora`.
        custom_objects, compile, safe_mode: as `keras.models.load_model`.

    Returns:
        The model.

    Example:
    ```python
    classifier.save("tuned.keras")  # LoRA inside BertBackbone blocks
    classifier = kft.saving.load_model("tuned.keras", train_also=["logits"])
    ```
    """
    try:
        with zipfile.ZipFile(filepath) as archive:
            config = json.loads(archive.read(_CONFIG))
            weights = archive.read(_WEIGHTS)
    except (OSError, KeyError, zipfile.BadZipFile) as error:
        raise KftError(f"{filepath} is not a readable .keras file ({error}).") from None
    compile_config = config.pop("compile_config", None)
    model = keras.saving.deserialize_keras_object(
        config, custom_objects=custom_objects, safe_mode=safe_mode
    )
    _load_assets(filepath, model)
    records = _records(weights)
    by_path = {}
    for layer in model._flatten_layers(include_self=False):
        by_path.setdefault(layer.path, []).append(layer)
    for record in records:
        if record["kind"] == "lora":
            _restore_lora(_unique(by_path, record["path"]), record)
        elif record["kind"] == "bottleneck":
            _restore_bottleneck(_unique(by_path, record["parent"]), record)
    if records or train_also is not None:
        # kft.peft imports this module (its load_model is this one).
        from kft.peft.trainable import freeze_base

        freeze_base(model, train_also)
    if compile and compile_config:
        # Keras' compile_from_config skips models with a custom compile
        # (keras-hub tasks); their compile takes the same arguments.
        model.compile(**keras.saving.deserialize_keras_object(compile_config))
        model.optimizer.build(model.trainable_variables)
    model.load_weights(filepath)
    reset_compiled_functions(model)
    # The packer is rebuilt from the preprocessor's config, which does not record it.
    from kft.models.dynamic_padding import pad_to_batch_longest

    pad_to_batch_longest(model)
    return model


def _load_assets(filepath, model):
    """Loads the archive's assets (a keras-hub tokenizer's vocabulary).

    `load_weights` reads variables only; a keras-hub text task rebuilt from
    its config has an empty tokenizer until its assets are loaded. This is
    the asset half of what `keras.models.load_model` does (private Keras
    API, present in Keras 3.0 to 3.15).
    """
    from keras.src.saving import saving_lib

    with zipfile.ZipFile(filepath) as archive:
        if not any(name.startswith("assets/") for name in archive.namelist()):
            return
        store = saving_lib.DiskIOStore("assets", archive=archive, mode="r")
        try:
            saving_lib._load_state(
                model, weights_store=None, assets_store=store, inner_path="",
                visited_saveables=set(),
            )
        finally:
            store.close()


def _records(weights):
    found = []

    def visit(name, item):
        if isinstance(item, h5py.Dataset) and name.rsplit("/", 1)[-1] == layer_record.RECORD_KEY:
            found.append(layer_record.decode(item[()]))

    with h5py.File(io.BytesIO(weights), "r") as h5:
        h5.visititems(visit)
    return found


def _unique(by_path, path):
    layers = by_path.get(path, [])
    if len(layers) != 1:
        raise KftError(
            f"The saved model has a kft layer at Keras path '{path}', but the "
            f"rebuilt model has {len(layers)} layers there; load it where the "
            "layer paths are unique, or save adapters with kft.peft.save_adapter."
        )
    return layers[0]


def _restore_lora(layer, record):
    if isinstance(layer, LoRAAdapters):
        return  # Rebuilt from its own config already.
    if type(layer) not in LORA_CLASSES:
        raise KftError(
            f"The saved LoRA layer at '{record['path']}' came back as a "
            f"{type(layer).__name__}; the model's code changed since saving."
        )
    for name, spec in record["adapters"].items():
        add_lora_adapter(layer, name, AdapterSpec.from_config(spec))
    layer.set_active_adapter(record["active_adapter"])
    # The saved kernel is merged already; the weights restore the DoRA norm.
    object.__setattr__(layer, "_merged_adapter", record["merged_adapter"])
    layer._refresh_trainable()


def _restore_bottleneck(parent, record):
    if isinstance(getattr(parent, record["attribute"]), BottleneckAdapter):
        return
    adapter = BottleneckAdapter.from_config(record["config"])
    adapter.insert(parent, record["attribute"], record["input_dim"])
