"""BottleneckAdapter: a small residual MLP inserted into a frozen network (Houlsby)."""

import contextlib

import keras
from keras import ops

from kft.layers import layer_record


@keras.saving.register_keras_serializable(package="kft")
class BottleneckAdapter(keras.layers.Layer):
    """`x + up(activation(down(x)))`, starting as the identity.

    The down-projection maps the last axis to `bottleneck_dim`, the
    up-projection maps it back; the up-projection starts at zero so inserting
    the adapter leaves a pretrained network's outputs unchanged (Houlsby et
    al., 2019). Inserted into a transformer block, it replaces the dropout
    that follows the attention or feed-forward sublayer and applies that
    dropout first (`input_dropout`), as AdapterHub does.

    Args:
        bottleneck_dim: width of the bottleneck.
        activation: nonlinearity between the projections.
        dropout: dropout inside the adapter (after the nonlinearity).
        input_dropout: dropout applied to the input before the adapter
            (the dropout of the sublayer the adapter follows).
        **kwargs: `keras.layers.Layer` arguments.

    Example:
    ```python
    adapter = kft.layers.BottleneckAdapter(bottleneck_dim=16)
    y = adapter(np.ones((2, 10, 64)))  # == x at initialization
    ```
    """

    def __init__(
        self,
        bottleneck_dim=64,
        activation="gelu",
        dropout=0.0,
        input_dropout=0.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.bottleneck_dim = int(bottleneck_dim)
        self.activation = keras.activations.get(activation)
        self.dropout = float(dropout)
        self.input_dropout = float(input_dropout)
        if self.dropout > 0 or self.input_dropout > 0:
            self.seed_generator = keras.random.SeedGenerator()
        self.supports_masking = True

    def build(self, input_shape):
        hidden = input_shape[-1]
        self.down_kernel = self.add_weight(
            name="down_kernel", shape=(hidden, self.bottleneck_dim),
            initializer="glorot_uniform",
        )
        self.down_bias = self.add_weight(
            name="down_bias", shape=(self.bottleneck_dim,), initializer="zeros"
        )
        self.up_kernel = self.add_weight(
            name="up_kernel", shape=(self.bottleneck_dim, hidden),
            initializer="zeros",
        )
        self.up_bias = self.add_weight(
            name="up_bias", shape=(hidden,), initializer="zeros"
        )

    def call(self, inputs, training=None):
        x = inputs
        if training and self.input_dropout > 0:
            x = keras.random.dropout(x, self.input_dropout, seed=self.seed_generator)
        h = self.activation(ops.add(ops.matmul(x, self.down_kernel), self.down_bias))
        if training and self.dropout > 0:
            h = keras.random.dropout(h, self.dropout, seed=self.seed_generator)
        return ops.add(x, ops.add(ops.matmul(h, self.up_kernel), self.up_bias))

    def compute_output_shape(self, input_shape):
        return input_shape

    def insert(self, parent, attribute, input_dim):
        """Builds this adapter and puts it in place of `parent.<attribute>`.

        The adapter is built in the name scope of the parent's Keras path (so
        its variable paths are unique) and notes where it went: that record
        is saved with its weights, so `kft.saving.load_model` can insert it
        again into a block that Keras rebuilds without it.

        Args:
            parent: the built layer (a keras-hub transformer block) that
                holds the sublayer to replace.
            attribute: the attribute holding it (`"_feedforward_dropout"`).
            input_dim: the width of the hidden states the adapter sees.
        """
        with contextlib.ExitStack() as scopes:
            for part in parent.path.split("/"):
                scopes.enter_context(keras.name_scope(part))
            self.build((None, None, input_dim))
        object.__setattr__(self, "_insertion", {"parent": parent.path, "attribute": attribute})
        replaced = getattr(parent, attribute)
        # The parent is built, so its tracker is locked against new state.
        parent._tracker.unlock()
        try:
            parent._tracker.untrack(replaced)
            setattr(parent, attribute, self)
        finally:
            parent._tracker.lock()

    def save_own_variables(self, store):
        super().save_own_variables(store)
        insertion = getattr(self, "_insertion", None)
        if insertion is not None:
            store[layer_record.RECORD_KEY] = layer_record.encode({
                "kind": "bottleneck",
                **insertion,
                "config": self.get_config(),
                "input_dim": int(self.down_kernel.shape[0]),
            })

    def load_own_variables(self, store):
        super().load_own_variables(
            {k: store[k] for k in store.keys() if k != layer_record.RECORD_KEY}
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            bottleneck_dim=self.bottleneck_dim,
            activation=keras.activations.serialize(self.activation),
            dropout=self.dropout,
            input_dropout=self.input_dropout,
        )
        return config
