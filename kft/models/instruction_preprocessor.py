"""Instruction tuning for keras-hub causal LMs: the loss on the response only.

keras-hub's GPT-2, Llama and OPT preprocessors take one string and train on
every token, so a fine-tuned chat model also learns to write the questions.
`InstructionCausalLMPreprocessor` takes `{"prompt": [...], "response": [...]}`
batches instead: it tokenizes prompt and response separately, joins them
(start token, prompt, response, end-of-turn token), shortens the prompt from
the left (never the response) when the example is too long, and returns
keras-hub's `(x, y, sample_weight)` with weight 0 on the prompt and on
padding and 1 on the response and its end token (`train_on_prompt=True`:
1 on the prompt too). Plain strings still train on every token, already
packed `{"token_ids", "padding_mask"}` batches pass through, and
`generate` works as before. `use_instruction_preprocessor(model)` puts one
in place of a `kft.text.causal_lm` model's own preprocessor.

Weighting by itself does not make the loss a mean over response tokens:
keras-hub compiles `SparseCategoricalCrossentropy` with Keras' default
`"sum_over_batch_size"`, which divides the weighted sum by every position of
the batch, prompt and padding included, so batches with short answers count
less. `response_loss()` divides by the weights instead (Hugging Face's mean
over labelled tokens).

Packing stays off. Packing puts several short examples into one sequence to
save padding, and is only correct if each example attends to itself alone.
keras-hub 0.32's `LlamaBackbone` and `GPT2Backbone` are functional models
whose only inputs are `token_ids` and `padding_mask`; every decoder layer is
called as `transformer_layer(x, decoder_padding_mask=padding_mask)` and
builds its mask as `min(padding mask, causal mask)`. The decoder layers
accept a `decoder_attention_mask`, but the backbone never passes one, and
positions (Llama's rotary embedding, GPT-2's position embedding) run from 0
over the whole sequence. So packed examples would attend to the examples
before them and see positions shifted by their offset: the model would
train on a task it never meets at generation. Instead kft pads each batch
only to its longest example (`pad_to_multiple_of`), which removes most of
the padding packing would.
"""

import threading

import keras
import keras_hub
import numpy as np
import tensorflow as tf
from keras_hub.src.utils.tensor_utils import preprocessing_function

from kft.errors import KftError
from kft.models import chat_format

# The keys of an instruction batch; keras-hub's Gemma 3 preprocessor names them in the plural.
_KEYS = (("prompt", "response"), ("prompts", "responses"))


class _Counts:
    """Examples seen, prompts shortened and examples left out, across tf.data threads."""

    def __init__(self):
        self._lock = threading.Lock()
        self.reset()

    def reset(self):
        with self._lock:
            self.values = np.zeros(3, "int64")

    def add(self, values):
        with self._lock:
            self.values += values
        return np.int64(0)

    def as_dict(self):
        with self._lock:
            examples, truncated, dropped = (int(v) for v in self.values)
        return {"examples": examples, "prompts_truncated": truncated, "dropped": dropped}


@keras.saving.register_keras_serializable(package="kft")
class InstructionCausalLMPreprocessor(keras_hub.models.CausalLMPreprocessor):
    """A causal-LM preprocessor that trains on the response and not on the prompt.

    Inputs to `call` (what `fit` maps over its data):
    - `{"prompt": strings, "response": strings}` (or `"prompts"` /
      `"responses"`): the loss covers each response and the end-of-turn
      token after it (the tokenizer's `end_token2_id` where it has one, as
      kft's chat tokenizers and keras-hub's Llama 3 do, else its end token;
      not added twice when a chat-formatted response already ends with
      it). A too-long example loses tokens from the start of its prompt;
      one whose response alone does not fit (with at least one prompt
      token) keeps weight 0 everywhere and counts as dropped.
    - strings: keras-hub's plain causal-LM packing, every token trained.
    - `{"token_ids", "padding_mask"}` with labels and weights (already
      packed, e.g. `kft.data.instructions` text chunks): passed through.

    `truncation_counts` says how many examples were seen, how many prompts
    were shortened and how many examples dropped (every pass counts again:
    two epochs count each example twice).

    Args:
        tokenizer: a keras-hub tokenizer (a `ChatBytePairTokenizer` for
            GGUF models).
        sequence_length: the most tokens the model sees per example.
        add_start_token: put the tokenizer's start token first (as the
            model's own preprocessor does; SmolLM2 says no).
        add_end_token: end each response with the end-of-turn token.
        train_on_prompt: weight the prompt tokens 1 too (plain next-token
            training on the whole conversation).
        apply_chat_template: the prompts and responses are plain text: render
            each prompt as a user turn and the response as the assistant's
            answer with the tokenizer's chat template (`format_chat`), also for
            `generate` prompts. `False`: they are already formatted.
        system_prompt: with `apply_chat_template`, a system message put
            before every prompt (`None`: the template's default, if any).
        pad_to_multiple_of: pad each instruction batch only to its longest
            example, rounded up to a multiple of this (`None`: to
            `sequence_length`).
        **kwargs: for keras-hub's `CausalLMPreprocessor`.

    Example:
    ```python
    model = kft.text.causal_lm("smollm2-135m-instruct", sequence_length=128)
    use_instruction_preprocessor(model, apply_chat_template=True)
    x, y, weights = model.preprocessor({"prompt": ["What is 2+2?"], "response": ["4"]})
    model.compile(optimizer="adam", loss=response_loss())
    model.fit(tf.data.Dataset.from_tensor_slices(
        {"prompt": prompts, "response": responses}).batch(8))
    model.generate("What is 2+2?", strip_prompt=True)
    ```
    """

    def __init__(self, tokenizer, sequence_length=1024, add_start_token=False,
                 add_end_token=True, train_on_prompt=False, apply_chat_template=False,
                 system_prompt=None, pad_to_multiple_of=None, **kwargs):
        super().__init__(tokenizer, sequence_length=sequence_length,
                         add_start_token=add_start_token, add_end_token=add_end_token, **kwargs)
        if pad_to_multiple_of is not None and int(pad_to_multiple_of) < 1:
            raise KftError(f"pad_to_multiple_of must be at least 1, got {pad_to_multiple_of}.")
        self.train_on_prompt = bool(train_on_prompt)
        self.apply_chat_template = bool(apply_chat_template)
        self.system_prompt = system_prompt
        self.pad_to_multiple_of = None if pad_to_multiple_of is None else int(pad_to_multiple_of)
        # A tokenizer being deserialized gets its vocabulary (and token ids) later.
        loading = hasattr(tokenizer, "vocabulary") and tokenizer.vocabulary is None
        if add_start_token and not loading and getattr(tokenizer, "start_token_id", None) is None:
            raise KftError("add_start_token=True, but the tokenizer has no start token.")
        # Plain Python state, not a Keras/TF variable: a variable made under a
        # distribution strategy would be mirrored, and it would land in the
        # saved model's weights.
        object.__setattr__(self, "_counts", _Counts())

    @classmethod
    def from_preprocessor(cls, preprocessor, **options):
        """The same tokenizer, sequence length and start/end settings as `preprocessor`."""
        settings = dict(sequence_length=preprocessor.sequence_length,
                        add_start_token=getattr(preprocessor, "add_start_token", False),
                        add_end_token=getattr(preprocessor, "add_end_token", True))
        settings.update(options)
        return cls(preprocessor.tokenizer, **settings)

    @property
    def truncation_counts(self):
        """`{"examples", "prompts_truncated", "dropped"}` since creation or `reset_counts`."""
        return self._counts.as_dict()

    def reset_counts(self):
        """Starts `truncation_counts` again from zero."""
        self._counts.reset()

    @property
    def chat_template(self):
        """The tokenizer's chat template (a Jinja string), or `None`."""
        return chat_format.chat_template_of(self.tokenizer)

    @property
    def response_end_token_id(self):
        """The token that closes every response: end of turn, else end of text."""
        end = getattr(self.tokenizer, "end_token2_id", None)
        return self.tokenizer.end_token_id if end is None else end

    def call(self, x, y=None, sample_weight=None, sequence_length=None):
        if isinstance(x, dict) and "token_ids" in x:
            return keras.utils.pack_x_y_sample_weight(x, y, sample_weight)
        if not isinstance(x, dict):
            return super().call(x, y=y, sample_weight=sample_weight,
                                sequence_length=sequence_length)
        for prompt_key, response_key in _KEYS:
            if prompt_key in x and response_key in x:
                pair = {"prompt": x[prompt_key], "response": x[response_key]}
                return self._pack_pairs(pair, sequence_length=sequence_length)
        raise KftError(
            f"An instruction batch is a dict with 'prompt' and 'response' strings; this one "
            f"has {', '.join(map(repr, x))}."
        )

    @preprocessing_function
    def _pack_pairs(self, x, sequence_length=None):
        if not self.built:
            self.build(None)
        prompts, responses = x["prompt"], x["response"]
        # One example (an unbatched tf.data map) is packed as a batch of one.
        single = prompts.shape.rank == 0
        prompts, responses = tf.reshape(prompts, [-1]), tf.reshape(responses, [-1])
        if self.apply_chat_template:
            prompts, responses = self._render(prompts, responses)
        # One tokenizer call for both: keras-hub's tf.data BPE costs per call.
        both = self._tokenize(tf.concat([prompts, responses], axis=0))
        half = tf.shape(prompts, out_type=tf.int64)[0]
        prompt_ids, response_ids = both[:half], both[half:]
        budget = int(sequence_length or self.sequence_length) + 1  # +1: the shifted label.
        rows = prompt_ids.nrows()
        prompt_lengths = prompt_ids.row_lengths()
        response_lengths = response_ids.row_lengths()

        start = _constant_rows(self.tokenizer.start_token_id, rows, self.add_start_token)
        end_id = self.response_end_token_id
        last = response_ids[:, -1:].to_tensor(default_value=-1, shape=[None, 1])[:, 0]
        ends_already = tf.reduce_any(tf.equal(last[:, None], tf.constant(
            [end_id, self.tokenizer.end_token_id], last.dtype)), axis=1)
        end = _constant_rows(end_id, rows, tf.logical_not(ends_already)
                             if self.add_end_token else False)

        # The prompt gives way, from its start: its end (the question, the
        # opened assistant turn) is what the response follows from.
        room = (budget - start.row_lengths() - response_lengths - end.row_lengths())
        keep = tf.clip_by_value(room, 0, prompt_lengths)
        dropped = room < tf.minimum(prompt_lengths, 1)
        truncated = tf.logical_and(keep < prompt_lengths, tf.logical_not(dropped))
        positions = tf.ragged.range(prompt_lengths)
        kept = tf.ragged.boolean_mask(prompt_ids, positions >= (prompt_lengths - keep)[:, None])

        ids = tf.concat([start, kept, response_ids, end], axis=1)
        prompt_weight = 1.0 if self.train_on_prompt else 0.0
        weights = tf.concat([
            tf.zeros_like(start, tf.float32),  # Never a label: nothing comes before it.
            tf.ones_like(kept, tf.float32) * prompt_weight,
            tf.ones_like(response_ids, tf.float32),
            tf.ones_like(end, tf.float32),
        ], axis=1)

        width = budget
        if self.pad_to_multiple_of:
            multiple = self.pad_to_multiple_of
            longest = tf.reduce_max(tf.concat([ids.row_lengths(), [2]], axis=0))
            inputs = tf.minimum((longest - 1 + multiple - 1) // multiple * multiple, budget - 1)
            width = tf.cast(inputs + 1, tf.int64)
        shape = tf.stack([tf.cast(rows, tf.int64), tf.cast(width, tf.int64)])
        token_ids = ids.to_tensor(default_value=self.tokenizer.pad_token_id, shape=shape)
        mask = tf.ones_like(ids, tf.int32).to_tensor(default_value=0, shape=shape)
        weights = weights.to_tensor(default_value=0.0, shape=shape)
        weights *= 1.0 - tf.cast(dropped, tf.float32)[:, None]
        static_width = None if self.pad_to_multiple_of else budget
        for tensor in (token_ids, mask, weights):
            tensor.set_shape([None, static_width])

        counted = tf.numpy_function(self._counts.add, [tf.stack([
            tf.cast(rows, tf.int64),
            tf.reduce_sum(tf.cast(truncated, tf.int64)),
            tf.reduce_sum(tf.cast(dropped, tf.int64)),
        ])], tf.int64, stateful=True)
        counted.set_shape([])
        # Tie the count into the outputs, so no graph optimisation prunes it.
        token_ids = token_ids + tf.cast(counted * 0, token_ids.dtype)
        x = {"token_ids": token_ids[:, :-1], "padding_mask": tf.cast(mask[:, :-1], tf.bool)}
        outputs = (x, token_ids[:, 1:], weights[:, 1:])
        if single:
            outputs = tf.nest.map_structure(lambda tensor: tensor[0], outputs)
        return keras.utils.pack_x_y_sample_weight(*outputs)

    def _tokenize(self, texts):
        ids = self.tokenizer(texts)
        if isinstance(ids, tf.RaggedTensor):
            return tf.cast(ids, tf.int32)
        if isinstance(ids, tf.Tensor):  # A tokenizer that pads: never the case for BPE.
            return tf.RaggedTensor.from_tensor(tf.cast(ids, tf.int32))
        rows = [list(map(int, row)) for row in ids]
        return tf.RaggedTensor.from_row_lengths(
            tf.constant([i for row in rows for i in row], tf.int32, shape=[sum(map(len, rows))]),
            tf.constant([len(row) for row in rows], tf.int64))

    def _render(self, prompts, responses):
        def render(prompt_values, response_values):
            pairs = [self._render_pair(_text(p), _text(r))
                     for p, r in zip(prompt_values, response_values)]
            return (np.array([p.encode("utf-8") for p, _ in pairs], dtype=object),
                    np.array([r.encode("utf-8") for _, r in pairs], dtype=object))

        prompts, responses = tf.numpy_function(render, [prompts, responses],
                                               [tf.string, tf.string], stateful=False)
        prompts.set_shape([None])
        responses.set_shape([None])
        return prompts, responses

    def _render_pair(self, prompt, response):
        return chat_format.prompt_and_response(
            self.tokenizer, chat_format.pair_messages(prompt, response, self.system_prompt))

    def _generate_preprocess_python(self, x, sequence_length=None):
        # keras-hub's version always prepends the start token, whatever
        # `add_start_token` says (see ChatCausalLMPreprocessor).
        if not self.built:
            self.build(None)
        if self.apply_chat_template:
            x = self._render_generation_prompts(x)
        token_ids, padding_mask = self.packer(
            self.tokenizer(x), sequence_length=sequence_length,
            add_start_value=self.add_start_token, add_end_value=False,
        )
        return {"token_ids": token_ids, "padding_mask": padding_mask}

    def _render_generation_prompts(self, x):
        def render(prompt):
            return chat_format.format_chat(self.tokenizer,
                                           chat_format.pair_messages(prompt, None,
                                                                     self.system_prompt),
                                           add_generation_prompt=True)

        if isinstance(x, str):
            return render(x)
        if isinstance(x, tf.Tensor):  # generate() over a tf.data dataset.
            rendered = tf.numpy_function(
                lambda values: np.vectorize(lambda v: render(_text(v)).encode("utf-8"),
                                            otypes=[object])(values),
                [x], tf.string, stateful=False)
            rendered.set_shape(x.shape)
            return rendered
        return [render(_text(v)) for v in x]

    def get_config(self):
        config = super().get_config()
        config.update({
            "train_on_prompt": self.train_on_prompt,
            "apply_chat_template": self.apply_chat_template,
            "system_prompt": self.system_prompt,
            "pad_to_multiple_of": self.pad_to_multiple_of,
        })
        return config


def use_instruction_preprocessor(model, train_on_prompt=False, apply_chat_template=False,
                                 system_prompt=None, pad_to_multiple_of=8):
    """Gives a keras-hub causal LM an `InstructionCausalLMPreprocessor`.

    The new preprocessor keeps the model's tokenizer, sequence length and
    start/end-token settings, so `generate` answers as before and `fit`
    takes `{"prompt", "response"}` batches with the loss on the responses.

    Args:
        model: a keras-hub `CausalLM` with a preprocessor (what
            `kft.text.causal_lm` returns).
        train_on_prompt, apply_chat_template, system_prompt,
            pad_to_multiple_of: as for `InstructionCausalLMPreprocessor`.

    Returns:
        The same model, its `preprocessor` replaced.

    Raises:
        KftError: the model has no preprocessor.

    Example:
    ```python
    model = use_instruction_preprocessor(kft.text.causal_lm("smollm2-135m-instruct"))
    model.compile(optimizer=keras.optimizers.AdamW(2e-5), loss=response_loss())
    ```
    """
    old = getattr(model, "preprocessor", None)
    if old is None or getattr(old, "tokenizer", None) is None:
        raise KftError("The model has no preprocessor with a tokenizer; build it with "
                       "kft.text.causal_lm or give it keras-hub's CausalLMPreprocessor.")
    if isinstance(old, InstructionCausalLMPreprocessor):
        old_config = {"add_start_token": old.add_start_token, "add_end_token": old.add_end_token}
    else:
        old_config = {}
    model.preprocessor = InstructionCausalLMPreprocessor.from_preprocessor(
        old, train_on_prompt=train_on_prompt, apply_chat_template=apply_chat_template,
        system_prompt=system_prompt, pad_to_multiple_of=pad_to_multiple_of, **old_config)
    return model


@keras.saving.register_keras_serializable(package="kft")
class ResponseLoss(keras.losses.Loss):
    """Cross-entropy on logits, averaged over the weighted tokens of the global batch.

    Under a strategy with several replicas, Keras averages each replica's
    loss: with a mean over each replica's own response tokens, a replica
    holding few of them would weigh as much as one holding many, and two
    replicas would train differently from one. This loss divides each
    replica's weighted sum by the weight of the whole global batch (one
    all-reduce of a scalar), so the summed gradients are those of one device
    exactly; on one device it is `sum(w * loss) / sum(w)`.

    Args:
        name: the loss' name.
    """

    def __init__(self, name="response_loss", **kwargs):
        kwargs.pop("reduction", None)
        # "sum" is the one reduction Keras does not divide by the replicas.
        super().__init__(name=name, reduction="sum", **kwargs)

    def call(self, y_true, y_pred):
        return keras.losses.sparse_categorical_crossentropy(y_true, y_pred, from_logits=True)

    def __call__(self, y_true, y_pred, sample_weight=None):
        total = super().__call__(y_true, y_pred, sample_weight)
        if sample_weight is None:
            count = keras.ops.cast(keras.ops.size(y_true), total.dtype)
        else:
            count = keras.ops.cast(keras.ops.sum(sample_weight), total.dtype)
        return keras.ops.divide_no_nan(total, _global_sum(count))

    def get_config(self):
        return {"name": self.name}


def _global_sum(value):
    """`value` summed over the replicas of the current strategy (itself on one device)."""
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return value
    return context.all_reduce(tf.distribute.ReduceOp.SUM, value)


def response_loss():
    """The causal-LM loss as a mean over weighted (response) tokens.

    keras-hub's default divides the weighted sum by every position of the
    batch (Keras' `"sum_over_batch_size"`); this one divides by the sum of
    the weights, so each response token counts the same whatever the
    prompt and padding lengths around it, and whatever replica it lands on
    (`ResponseLoss`).

    Returns:
        A `ResponseLoss`.

    Example:
    ```python
    model.compile(optimizer="adam", loss=response_loss(),
                  weighted_metrics=[keras.metrics.SparseCategoricalAccuracy()])
    ```
    """
    return ResponseLoss()


def _constant_rows(value, rows, present):
    """A ragged `[rows, 0 or 1]` tensor of `value`: one token where `present` holds."""
    present = tf.broadcast_to(tf.cast(present, tf.int64), tf.reshape(tf.cast(rows, tf.int32), [1]))
    values = tf.fill(tf.reshape(tf.reduce_sum(present), [1]),
                     tf.constant(-1 if value is None else value, tf.int32))
    return tf.RaggedTensor.from_row_lengths(values, present)


def _text(value):
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)
