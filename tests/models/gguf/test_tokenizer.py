"""kft.models.gguf.tokenizer: byte-level BPE from GGUF metadata, special tokens kept whole."""

import pytest
import tensorflow as tf

from kft.errors import KftError
from kft.models.gguf.reader import GGUFFile
from kft.models.gguf.tokenizer import ChatBytePairTokenizer
from kft.models.gguf.tokenizer import tokenizer_from_gguf
from tests.helpers.gguf_files import CHAT_TEMPLATE
from tests.helpers.gguf_files import byte_level_vocabulary
from tests.helpers.gguf_files import tiny_llama_backbone
from tests.helpers.gguf_files import write_llama_gguf

TEXTS = [
    "Hello world",
    "the cat sat on the mat",
    "<|im_start|>user\nHello<|im_end|>\n",
    "In 2024, 3.5 cats sat (on 12 mats)!",
    "Café – naïve 🐈\ttabs\n\nand lines",
]


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory):
    return write_llama_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf", tiny_llama_backbone())


@pytest.fixture(scope="module")
def tokenizer(tiny_file):
    return tokenizer_from_gguf(GGUFFile(tiny_file))[0]


def _pieces(tokenizer, text):
    return [tokenizer.id_to_token(int(i)) for i in tokenizer(text)]


def test_words_merge_and_control_tokens_stay_whole(tokenizer):
    assert _pieces(tokenizer, "Hello world") == ["Hello", "Ġworld"]
    assert _pieces(tokenizer, "<|im_start|>user\nthe cat<|im_end|>") == [
        "<|im_start|>", "u", "s", "e", "r", "Ċ", "t", "h", "e", "Ġcat", "<|im_end|>"]
    # SmolLM's pre-tokenizer: every digit alone.
    assert _pieces(tokenizer, "x 12") == ["x", "Ġ", "1", "2"]
    for text in TEXTS:
        assert tokenizer.detokenize(tokenizer(text)) == text


def test_the_tf_data_path_tokenizes_like_the_eager_path(tokenizer):
    eager = [list(map(int, tokenizer(text))) for text in TEXTS]
    dataset = tf.data.Dataset.from_tensor_slices(TEXTS).map(tokenizer)
    in_graph = [list(map(int, ids)) for ids in dataset.as_numpy_iterator()]
    assert in_graph == eager


def test_special_tokens_and_chat_template_are_kept(tokenizer, tiny_file):
    assert tokenizer.chat_template == CHAT_TEMPLATE
    assert (tokenizer.start_token, tokenizer.start_token_id) == ("<|im_start|>", 1)
    assert (tokenizer.end_token, tokenizer.end_token_id) == ("<|im_end|>", 2)
    assert (tokenizer.end_of_turn_token, tokenizer.end_of_turn_token_id) == ("<|im_end|>", 2)
    # The file pads with its end token (as SmolLM2's does), which keras-hub's
    # generate would take for a finished sequence: kft pads with another.
    assert tokenizer.pad_token_id == 0
    assert tokenizer_from_gguf(GGUFFile(tiny_file))[1] is False  # add_bos_token


def test_an_end_of_turn_token_of_its_own_is_a_second_stop(tmp_path):
    path = write_llama_gguf(tmp_path / "eot.gguf", tiny_llama_backbone(), metadata={
        "tokenizer.ggml.eos_token_id": 0, "tokenizer.ggml.eot_token_id": 2,
        "tokenizer.ggml.padding_token_id": 1})
    tokenizer = tokenizer_from_gguf(GGUFFile(path))[0]
    assert (tokenizer.end_token_id, tokenizer.end_of_turn_token_id, tokenizer.pad_token_id) == (
        0, 2, 1)
    assert set(tokenizer.special_token_ids) == {0, 1, 2}


def test_padding_with_an_end_token_is_refused():
    tokens, merges, _ = byte_level_vocabulary()
    with pytest.raises(KftError, match="padding token '<|im_end|>' is also an end token"):
        ChatBytePairTokenizer({t: i for i, t in enumerate(tokens)}, merges,
                              end_token="<|im_end|>", pad_token="<|im_end|>")


def test_config_round_trip_keeps_everything(tokenizer):
    config = tokenizer.get_config()
    rebuilt = ChatBytePairTokenizer.from_config(config)
    rebuilt.set_vocabulary_and_merges(tokenizer.vocabulary, tokenizer.merges)
    for attribute in ("chat_template", "pre_tokenizer", "start_token_id", "end_token_id",
                      "end_of_turn_token_id", "pad_token_id", "unsplittable_tokens"):
        assert getattr(rebuilt, attribute) == getattr(tokenizer, attribute), attribute
    assert [list(map(int, rebuilt(t))) for t in TEXTS] == [list(map(int, tokenizer(t)))
                                                           for t in TEXTS]


REFUSED = [
    ("sentencepiece", dict(tokenizer_model="llama"), "has a 'llama' tokenizer"),
    ("unknown pre-tokenizer", dict(pre="deepseek-llm"), "pre-tokenizer 'deepseek-llm'"),
    ("no tokens", dict(skip=("tokenizer.ggml.tokens",)), "lacks the metadata key 'tokenizer.ggml.tokens'"),
    ("end token outside", dict(metadata={"tokenizer.ggml.eos_token_id": 5000}),
     "eos_token_id is 5000, outside the"),
]


@pytest.mark.parametrize("what, settings, message", REFUSED, ids=[r[0] for r in REFUSED])
def test_a_tokenizer_kft_cannot_reproduce_is_refused(what, settings, message, tmp_path):
    path = write_llama_gguf(tmp_path / "t.gguf", tiny_llama_backbone(), **settings)
    with pytest.raises(KftError, match=message):
        tokenizer_from_gguf(GGUFFile(path))


def test_whitespace_runs_split_as_the_original_tokenizer_on_the_eager_path(tokenizer):
    # Hugging Face's split for SmolLM (digits alone, then GPT-2's pattern): a
    # run of spaces before a digit or at the end is one piece; "\r" and "\n"
    # are two. (keras-hub's tf.data path splits these runs differently.)
    assert _pieces(tokenizer, "x  5") == ["x", "ĠĠ", "5"]
    assert _pieces(tokenizer, "the   ") == ["t", "h", "e", "ĠĠĠ"]
    assert _pieces(tokenizer, "a\r\nb") == ["a", "č", "Ċ", "b"]  # Though "č Ċ" is a merge.


def test_a_file_without_a_pre_tokenizer_name_splits_like_gpt2(tmp_path):
    path = write_llama_gguf(tmp_path / "old.gguf", tiny_llama_backbone(),
                            skip=("tokenizer.ggml.pre",))
    tokenizer = tokenizer_from_gguf(GGUFFile(path))[0]
    assert tokenizer.pre_tokenizer == "gpt2"
    assert _pieces(tokenizer, "x 12") == ["x", "Ġ", "1", "2"]  # No "Ġ1" merge here.


def test_without_a_vocabulary_the_pad_token_must_be_given():
    with pytest.raises(KftError, match="Give ChatBytePairTokenizer a pad_token"):
        ChatBytePairTokenizer(end_token="<|im_end|>")
