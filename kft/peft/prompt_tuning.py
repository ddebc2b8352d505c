"""Prompt tuning: a trainable soft prompt in front of a frozen keras-hub text model."""

import keras
import numpy as np

from kft.errors import KftError
from kft.layers.soft_prompt import PrefixPadding
from kft.layers.soft_prompt import SoftPrompt
from kft.peft.trainable import freeze_base

TOKEN_IDS = "token_ids"
PADDING_MASK = "padding_mask"
SEQUENCE_OUTPUT = "sequence_output"


def apply_prompt_tuning(backbone, num_tokens=20, init="vocabulary", train_also=None, seed=None):
    """A model that runs `backbone` with a soft prompt before the input embeddings.

    The new model shares every layer (and weight) of `backbone` and adds a
    `kft.layers.SoftPrompt` on the output of the backbone's token embedding:
    `num_tokens` trainable vectors go in front of the token embeddings (as in
    PEFT), the other per-token inputs are padded to match (padding mask 1,
    segment ids 0), and the prompt positions are cropped from
    `sequence_output` again, so outputs line up with the input tokens.
    Position embeddings then cover `num_tokens` more positions: keep the
    preprocessor's `sequence_length + num_tokens` within the backbone's
    `max_sequence_length`.

    Everything except the prompt (and `train_also` layers of the new model)
    is frozen, in `backbone` too since the layers are shared.

    Args:
        backbone: a keras-hub functional text backbone whose graph calls
            `backbone.token_embedding` on the `token_ids` input (BERT family).
        num_tokens: soft-prompt length.
        init: `"vocabulary"` (embeddings of random vocabulary tokens, which
            trains better than random vectors) or `"random"`.
        train_also: layers that train fully as well (paths in the new model).
        seed: seed of the vocabulary sample.

    Returns:
        The new `keras.Model`: same inputs and outputs as `backbone`.

    Example:
    ```python
    prompted = kft.peft.apply_prompt_tuning(backbone, num_tokens=16)
    pooled = prompted.output["pooled_output"]
    logits = keras.layers.Dense(2, name="head_dense")(pooled)
    model = keras.Model(prompted.input, logits)  # then train_also the head
    ```
    """
    if init not in ("vocabulary", "random"):
        raise KftError(f"Unknown soft-prompt init {init!r}; use 'vocabulary' or 'random'.")
    if int(num_tokens) < 1:
        raise KftError(f"num_tokens must be at least 1, got {num_tokens!r}.")
    embedding = getattr(backbone, "token_embedding", None)
    if not isinstance(backbone, keras.Model) or embedding is None or not isinstance(
        backbone.input, dict
    ) or TOKEN_IDS not in backbone.input:
        raise KftError(
            f"Prompt tuning needs a keras-hub text backbone with a "
            f"token_embedding layer and a '{TOKEN_IDS}' input; got "
            f"{type(backbone).__name__} '{getattr(backbone, 'name', backbone)}'."
        )
    prompt = SoftPrompt(num_tokens, name="soft_prompt")
    inputs = {
        name: keras.Input(shape=tensor.shape[1:], dtype=tensor.dtype, name=name)
        for name, tensor in backbone.input.items()
    }
    padded = {
        id(tensor): PrefixPadding(
            num_tokens, value=1 if name == PADDING_MASK else 0, name=f"{name}_prompt_padding"
        )(tensor)
        for name, tensor in inputs.items() if name != TOKEN_IDS
    }
    prompted = []

    def swap(value):
        return padded.get(id(value), value)

    def call_function(layer, *args, **kwargs):
        args = [swap(a) for a in args]
        kwargs = {k: swap(v) for k, v in kwargs.items()}
        outputs = layer(*args, **kwargs)
        if layer is embedding:
            prompted.append(layer)
            outputs = prompt(outputs)
        return outputs

    try:
        cloned = keras.models.clone_model(
            backbone, input_tensors=inputs, clone_function=lambda layer: layer,
            call_function=call_function,
        )
    except (ValueError, TypeError) as error:
        raise KftError(
            f"Could not put a soft prompt into '{backbone.name}' "
            f"({type(backbone).__name__}): {error}. Prompt tuning supports "
            "keras-hub backbones that pass the padding mask to their blocks "
            "as is (the BERT family)."
        ) from error
    if not prompted:
        raise KftError(
            f"'{backbone.name}' does not call its token_embedding layer in its "
            "functional graph (it sits inside another layer), so the soft "
            "prompt has no place to go."
        )
    outputs = cloned.output
    if isinstance(outputs, dict) and SEQUENCE_OUTPUT in outputs:
        outputs = dict(outputs)
        outputs[SEQUENCE_OUTPUT] = keras.layers.Cropping1D(
            (num_tokens, 0), name="soft_prompt_crop"
        )(outputs[SEQUENCE_OUTPUT])
    model = keras.Model(inputs, outputs, name=f"{backbone.name}_prompt_tuned")
    if init == "vocabulary":
        table = keras.ops.convert_to_numpy(embedding.embeddings)
        rows = np.random.default_rng(seed).choice(
            table.shape[0], num_tokens, replace=num_tokens > table.shape[0]
        )
        prompt.prompt.assign(table[rows])
    freeze_base(model, train_also)
    return model
