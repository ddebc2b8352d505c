"""Soft prompts: trainable embeddings prepended to a sequence (prompt tuning)."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="kft")
class SoftPrompt(keras.layers.Layer):
    """Prepends `num_tokens` trainable vectors to `(batch, length, dim)` inputs.

    Prompt tuning (Lester et al., 2021) trains only these vectors: the
    frozen model reads them as if they were the embeddings of extra tokens.

    Args:
        num_tokens: number of soft-prompt vectors.
        initializer: initializer of the `(num_tokens, dim)` prompt
            (`kft.peft.apply_prompt_tuning` starts from vocabulary embeddings).
        **kwargs: `keras.layers.Layer` arguments.

    Example:
    ```python
    prompt = kft.layers.SoftPrompt(num_tokens=8)
    y = prompt(np.zeros((2, 16, 32)))  # shape (2, 24, 32)
    ```
    """

    def __init__(self, num_tokens, initializer="random_uniform", **kwargs):
        super().__init__(**kwargs)
        self.num_tokens = int(num_tokens)
        self.initializer = keras.initializers.get(initializer)

    def build(self, input_shape):
        self.prompt = self.add_weight(
            name="prompt", shape=(self.num_tokens, input_shape[-1]),
            initializer=self.initializer,
        )

    def call(self, inputs):
        prompt = ops.cast(self.prompt, inputs.dtype)
        batch = ops.shape(inputs)[0]
        prompt = ops.broadcast_to(
            ops.expand_dims(prompt, 0), (batch,) + tuple(self.prompt.shape)
        )
        return ops.concatenate([prompt, inputs], axis=1)

    def compute_output_shape(self, input_shape):
        length = input_shape[1]
        length = None if length is None else length + self.num_tokens
        return (input_shape[0], length) + tuple(input_shape[2:])

    def get_config(self):
        config = super().get_config()
        config.update(
            num_tokens=self.num_tokens,
            initializer=keras.initializers.serialize(self.initializer),
        )
        return config


@keras.saving.register_keras_serializable(package="kft")
class PrefixPadding(keras.layers.Layer):
    """Prepends `num_tokens` constant positions to `(batch, length)` inputs.

    Keeps per-token inputs (padding masks: value 1; segment ids: value 0) the
    length of a sequence that got a soft prompt.

    Args:
        num_tokens: positions to prepend.
        value: their value.
        **kwargs: `keras.layers.Layer` arguments.
    """

    def __init__(self, num_tokens, value=0, **kwargs):
        super().__init__(**kwargs)
        self.num_tokens = int(num_tokens)
        self.value = value

    def call(self, inputs):
        pad = ops.full((ops.shape(inputs)[0], self.num_tokens), self.value, dtype=inputs.dtype)
        return ops.concatenate([pad, inputs], axis=1)

    def compute_output_shape(self, input_shape):
        length = input_shape[1]
        return (input_shape[0], None if length is None else length + self.num_tokens)

    def get_config(self):
        config = super().get_config()
        config.update(num_tokens=self.num_tokens, value=self.value)
        return config
