"""What trains under parameter-efficient fine-tuning: the adapters, and `train_also`.

PEFT freezes through `kft.freeze`/`kft.unfreeze` like every other kft
feature, so the BatchNormalization policy, the selection language and the
refreshed train function are the same here as in a recipe stage.
"""

from kft.freezing.freeze import freeze
from kft.freezing.freeze import unfreeze
from kft.model_tree import count_parameters
from kft.model_tree import layer_tree
from kft.select import Adapters


def freeze_base(model, train_also=None):
    """Freezes everything except the PEFT layers and `train_also`.

    The PEFT layers are LoRA layers (only their active adapter trains),
    bottleneck adapters and soft prompts. `apply_lora` and friends do this
    already; `kft.saving.load_model` does it again after loading: Keras
    restores a frozen flag on the layers it rebuilds from config, but the
    sublayers that keras-hub blocks create in `build()` come back trainable.

    Args:
        model: the model.
        train_also: layers that train fully as well (a new head, say), in
            kft's selection language (`kft.select`): `["logits"]`,
            `"head"`, `"head_.*"`. BatchNormalization layers among them
            train too.

    Returns:
        A `ParameterCount`.

    Raises:
        KftError: `train_also` matches nothing (the message lists the
            model's layers).
    """
    freeze(model, "all")
    if Adapters().resolve(layer_tree(model)):
        unfreeze(model, Adapters())
    if train_also is not None:
        unfreeze(model, train_also, train_bn=True)
    return count_parameters(model)
