"""kft.text.format_chat renders a model's own chat template as Hugging Face does."""

import pytest

import kft
from kft.errors import KftError
from kft.models.chat_format import DEFAULT_CHAT_TEMPLATE
from kft.models.chat_format import prompt_and_response

# SmolLM2-135M-Instruct's `tokenizer.chat_template`, copied from its GGUF file's
# metadata (tests/models/test_instruction_smollm2.py checks the file still says this).
SMOLLM2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
    "Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SMOLLM2_SYSTEM = ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by "
                  "Hugging Face<|im_end|>\n")
TWO_TURNS = [
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Paris."},
    {"role": "user", "content": "And of Japan?"},
    {"role": "assistant", "content": "Tokyo."},
]


class _Tokenizer:
    """What format_chat reads of a keras-hub tokenizer."""

    def __init__(self, chat_template=None, start_token="<s>", end_token="</s>"):
        self.chat_template = chat_template
        self.start_token, self.end_token = start_token, end_token


def test_smollm2_template_renders_as_hugging_face_does():
    tokenizer = _Tokenizer(SMOLLM2_TEMPLATE)
    # By hand from the template: the default system turn first (no system
    # message given), then each turn as <|im_start|>role\ncontent<|im_end|>\n.
    expected = (SMOLLM2_SYSTEM
                + "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
                + "<|im_start|>assistant\nParis.<|im_end|>\n"
                + "<|im_start|>user\nAnd of Japan?<|im_end|>\n"
                + "<|im_start|>assistant\nTokyo.<|im_end|>\n")
    assert kft.text.format_chat(tokenizer, TWO_TURNS) == expected
    # The generation prompt opens the assistant's turn; a given system message
    # replaces the default one.
    question = [{"role": "system", "content": "Be brief."}, TWO_TURNS[0]]
    assert kft.text.format_chat(tokenizer, question, add_generation_prompt=True) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n")


def test_the_prompt_is_a_prefix_and_the_response_ends_at_the_end_of_turn_token():
    tokenizer = _Tokenizer(SMOLLM2_TEMPLATE, end_token="<|im_end|>")
    prompt, response = prompt_and_response(tokenizer, TWO_TURNS)
    assert prompt == (SMOLLM2_SYSTEM
                      + "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
                      + "<|im_start|>assistant\nParis.<|im_end|>\n"
                      + "<|im_start|>user\nAnd of Japan?<|im_end|>\n<|im_start|>assistant\n")
    # The model stops at <|im_end|>, so the newline after it is never its to write.
    assert response == "Tokyo.<|im_end|>"
    with pytest.raises(KftError, match="end with an assistant"):
        prompt_and_response(tokenizer, TWO_TURNS[:3])


def test_blocks_are_trimmed_and_helpers_exist_as_in_transformers():
    # trim_blocks drops the newline after a block tag, lstrip_blocks the
    # indentation before one: a template written over several lines renders
    # the same as on one line.
    template = (
        "{% for message in messages %}\n"
        "    {% if message['role'] == 'user' %}\n"
        "[U] {{ message['content'] }}\n"
        "    {% else %}\n"
        "[A] {{ message['content'] | tojson }}\n"
        "    {% endif %}\n"
        "{% endfor %}\n"
        "{{ bos_token }}|{{ eos_token }}"
    )
    rendered = kft.text.format_chat(_Tokenizer(), TWO_TURNS[:2] + [
        {"role": "assistant", "content": "Café"}], chat_template=template)
    assert rendered == '[U] What is the capital of France?\n[A] "Paris."\n[A] "Café"\n<s>|</s>'
    refusing = ("{% if messages[0]['role'] != 'user' %}"
                "{{ raise_exception('Conversations must start with the user') }}{% endif %}")
    with pytest.raises(KftError, match="refused the messages: Conversations must start"):
        kft.text.format_chat(None, TWO_TURNS[1:], chat_template=refusing)
    with pytest.raises(KftError, match="not valid Jinja"):
        kft.text.format_chat(None, TWO_TURNS, chat_template="{% for m in messages %}")
    # The sandbox refuses attribute access to Python internals.
    with pytest.raises(KftError):
        kft.text.format_chat(None, TWO_TURNS, chat_template="{{ messages.__class__.__mro__ }}")


def test_a_model_without_a_template_gets_chatml():
    rendered = kft.text.format_chat(_Tokenizer(None), TWO_TURNS[:1], add_generation_prompt=True)
    assert rendered == ("<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
                        "<|im_start|>assistant\n")
    assert kft.text.format_chat(None, TWO_TURNS[:1]) == kft.text.format_chat(
        _Tokenizer(), TWO_TURNS[:1], chat_template=DEFAULT_CHAT_TEMPLATE)
