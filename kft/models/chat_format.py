"""Chat messages to the text a model was trained on: its own chat template (`kft.text.format_chat`).

A chat model learned one exact layout of turns (which tokens open and close
each turn, whether a default system prompt comes first). Hugging Face ships it
as a Jinja template (`chat_template` in `tokenizer_config.json`; GGUF files
carry the same string as `tokenizer.chat_template`, which
`ChatBytePairTokenizer` keeps). kft renders it the way `transformers`'
`apply_chat_template` does: a sandboxed, immutable Jinja environment with
`trim_blocks` and `lstrip_blocks`, the loop-control extension, the helpers
`raise_exception`, `strftime_now` and `tojson` (non-ASCII kept), a
`{% generation %}` block that only marks text, and the variables `messages`,
`add_generation_prompt`, `bos_token` and `eos_token`. A model without a
template gets `DEFAULT_CHAT_TEMPLATE`, ChatML (`<|im_start|>role\\ncontent<|im_end|>\\n`),
the format transformers used to fall back to.
"""

import datetime
import functools
import json

from kft.errors import KftError

# ChatML, as transformers' former `default_chat_template`; with
# `add_generation_prompt` it ends with an open assistant turn.
DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
ROLES = ("system", "user", "assistant")


def pair_messages(prompt, response=None, system_prompt=None):
    """The chat messages of one exchange: `[system?, user, assistant?]`.

    Args:
        prompt: the user's turn.
        response: the assistant's turn, or `None` for a prompt to answer.
        system_prompt: a system turn to put first, or `None`.

    Example:
    ```python
    pair_messages("Hi", "Hello!", system_prompt="Be brief.")
    # [{"role": "system", ...}, {"role": "user", ...}, {"role": "assistant", ...}]
    ```
    """
    messages = [{"role": "user", "content": prompt}]
    if system_prompt is not None:
        messages.insert(0, {"role": "system", "content": system_prompt})
    if response is not None:
        messages.append({"role": "assistant", "content": response})
    return messages


def format_chat(tokenizer_or_model, messages, add_generation_prompt=False, chat_template=None,
                **variables):
    """Renders chat messages with the model's own chat template.

    Args:
        tokenizer_or_model: a keras-hub `CausalLM`, its preprocessor or its
            tokenizer (its `chat_template`, `start_token` and `end_token`
            are used), or `None` for the default template without tokens.
        messages: a list of `{"role": "system" | "user" | "assistant",
            "content": str}` dicts.
        add_generation_prompt: end with the opening of an assistant turn, so
            the model's continuation is the answer (to `generate`).
        chat_template: a Jinja template that replaces the model's.
        **variables: more template variables (some templates read `tools`,
            `documents` or `date_string`).

    Returns:
        The rendered text, special tokens written out as text (keras-hub's
        tokenizers keep them whole).

    Raises:
        KftError: the template cannot be compiled, or refuses the messages
            (its `raise_exception`, e.g. roles out of order).

    Example:
    ```python
    model = kft.text.causal_lm("smollm2-135m-instruct")
    kft.text.format_chat(model, [{"role": "user", "content": "Hi"}], add_generation_prompt=True)
    # '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging '
    # 'Face<|im_end|>\\n<|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\n'
    ```
    """
    tokenizer = _tokenizer(tokenizer_or_model)
    template = chat_template or chat_template_of(tokenizer) or DEFAULT_CHAT_TEMPLATE
    context = {
        "bos_token": _token_text(tokenizer, "start_token"),
        "eos_token": _token_text(tokenizer, "end_token"),
        **variables,
    }
    import jinja2

    try:
        return _compiled(template).render(
            messages=[dict(message) for message in messages],
            add_generation_prompt=bool(add_generation_prompt), **context)
    except jinja2.TemplateError as error:
        raise KftError(f"The chat template refused the messages: {error}") from None


def prompt_and_response(tokenizer_or_model, messages, chat_template=None):
    """Splits a rendered conversation into the prompt and its final assistant turn.

    The prompt is every turn but the last, rendered with the generation
    prompt (exactly what `generate` will be given); the response is the rest
    of the full rendering: the last assistant turn's text and its closing
    token, without trailing whitespace after that token (the model stops
    generating at the token, so it never writes what follows).

    Args:
        tokenizer_or_model: as for `format_chat`.
        messages: chat messages whose last one is the assistant's.
        chat_template: a template that replaces the model's.

    Returns:
        `(prompt, response)` strings; `prompt + response` is the rendered
        conversation up to its end-of-turn token.

    Raises:
        KftError: the last message is not the assistant's, or the template
            renders earlier turns differently once an answer follows them
            (some reasoning templates drop earlier thinking), so no prompt
            prefix exists.

    Example:
    ```python
    prompt, response = prompt_and_response(model, [
        {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}])
    response  # 'Hello!<|im_end|>'
    ```
    """
    messages = list(messages)
    if not messages or messages[-1].get("role") != "assistant":
        raise KftError("A training conversation must end with an assistant message.")
    prompt = format_chat(tokenizer_or_model, messages[:-1], add_generation_prompt=True,
                         chat_template=chat_template)
    full = format_chat(tokenizer_or_model, messages, chat_template=chat_template)
    if not full.startswith(prompt):
        raise KftError(
            "The chat template renders the earlier turns differently once the answer follows, "
            "so the prompt is not a prefix of the conversation; pass chat_template= with one "
            "that renders turns independently."
        )
    response = full[len(prompt):]
    tokenizer = _tokenizer(tokenizer_or_model)
    ends = [_token_text(tokenizer, name) for name in ("end_token2", "end_token")]
    ends = [end for end in ends if end] or ["<|im_end|>"]
    if response.rstrip().endswith(tuple(ends)):
        response = response.rstrip()
    return prompt, response


def chat_template_of(tokenizer_or_model):
    """The model's chat template (a Jinja string), or `None` when it has none."""
    template = getattr(_tokenizer(tokenizer_or_model), "chat_template", None)
    return template or None


def _tokenizer(tokenizer_or_model):
    value = tokenizer_or_model
    if getattr(value, "preprocessor", None) is not None:
        value = value.preprocessor
    if getattr(value, "tokenizer", None) is not None:
        value = value.tokenizer
    return value


def _token_text(tokenizer, name):
    token = getattr(tokenizer, name, None)
    return token if isinstance(token, str) else ""


@functools.lru_cache(maxsize=16)
def _compiled(template):
    import jinja2
    from jinja2 import ext
    from jinja2 import sandbox

    def raise_exception(message):
        raise jinja2.TemplateError(message)

    def tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        # transformers' own filter: Jinja's built-in escapes HTML and non-ASCII.
        return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent,
                          separators=separators, sort_keys=sort_keys)

    def strftime_now(format):
        return datetime.datetime.now().strftime(format)

    environment = sandbox.ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True,
        extensions=[_generation_extension(), ext.loopcontrols])
    environment.filters["tojson"] = tojson
    environment.globals["raise_exception"] = raise_exception
    environment.globals["strftime_now"] = strftime_now
    try:
        return environment.from_string(template)
    except jinja2.TemplateSyntaxError as error:
        raise KftError(f"The chat template is not valid Jinja (line {error.lineno}): "
                       f"{error.message}") from None


def _generation_extension():
    from jinja2 import ext
    from jinja2 import nodes

    class Generation(ext.Extension):
        """`{% generation %}...{% endgeneration %}`: transformers marks the
        assistant's tokens with it; rendering keeps the text as it is."""

        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return nodes.Scope(body, lineno=lineno)

    return Generation

