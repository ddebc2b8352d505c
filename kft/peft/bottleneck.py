"""Bottleneck adapters inserted into keras-hub transformer blocks (Houlsby)."""

import keras

from kft.errors import KftError
from kft.layers.bottleneck_adapter import BottleneckAdapter
from kft.model_tree import describe_paths
from kft.model_tree import layer_paths
from kft.peft.trainable import freeze_base
from kft.model_tree import reset_compiled_functions

# Where an adapter goes: the dropout a keras-hub TransformerEncoder /
# TransformerDecoder applies to the sublayer output right before the
# residual sum.
POSITIONS = {
    "attention": "_self_attention_dropout",
    "feedforward": "_feedforward_dropout",
}


def apply_bottleneck_adapters(
    model,
    bottleneck_dim=64,
    activation="gelu",
    dropout=0.0,
    positions=("attention", "feedforward"),
    train_also=None,
):
    """Inserts bottleneck adapters after the attention and feed-forward blocks.

    Every keras-hub `TransformerEncoder`/`TransformerDecoder` under `model`
    gets a `kft.layers.BottleneckAdapter` on the output of its self-attention
    and feed-forward sublayers, before the residual sum. The adapter takes
    the place of the dropout there and applies that dropout first. Then
    everything except the adapters (and `train_also`) is frozen.

    Args:
        model: a model containing keras-hub transformer blocks.
        bottleneck_dim: the adapters' bottleneck width.
        activation: the adapters' nonlinearity.
        dropout: dropout inside the adapters.
        positions: any of `"attention"`, `"feedforward"`.
        train_also: layers that train fully as well (e.g. the head): a
            regular expression on layer paths or a list of name suffixes.

    Returns:
        A `ParameterCount`.

    Example:
    ```python
    counts = kft.peft.apply_bottleneck_adapters(
        classifier, bottleneck_dim=32, train_also=["logits"])
    classifier.compile(...)
    ```
    """
    unknown = [p for p in positions if p not in POSITIONS]
    if unknown or not positions:
        raise KftError(
            f"Unknown adapter positions {unknown or positions!r}; use any of "
            f"{sorted(POSITIONS)}."
        )
    paths = layer_paths(model)
    blocks = [(p, l) for p, l in paths.items() if _is_transformer_block(l)]
    if not blocks:
        raise KftError(
            f"Model '{model.name}' has no keras-hub transformer blocks "
            "(layers with _self_attention_dropout and _feedforward_dropout, "
            "such as TransformerEncoder) to put bottleneck adapters in. Its "
            "layer paths:\n  " + describe_paths(paths)
        )
    done = [
        p for p, l in blocks
        if isinstance(getattr(l, POSITIONS[positions[0]]), BottleneckAdapter)
    ]
    if done:
        raise KftError(f"Blocks {done[:5]} already have bottleneck adapters.")
    for _, block in blocks:
        hidden = block._feedforward_output_dense.units
        for position in positions:
            attribute = POSITIONS[position]
            replaced = getattr(block, attribute)
            adapter = BottleneckAdapter(
                bottleneck_dim=bottleneck_dim,
                activation=activation,
                dropout=dropout,
                input_dropout=replaced.rate,
                name=f"{position}_adapter",
                dtype=_plain_policy(block),
            )
            adapter.insert(block, attribute, hidden)
    reset_compiled_functions(model)
    return freeze_base(model, train_also)


def _is_transformer_block(layer):
    return all(hasattr(layer, a) for a in POSITIONS.values()) and hasattr(
        layer, "_feedforward_output_dense"
    )


def _plain_policy(layer):
    policy = layer.dtype_policy
    # A quantized backbone maps policies by path; the adapter stays float.
    if isinstance(policy, keras.dtype_policies.DTypePolicyMap):
        return None
    return policy
