"""kft.models.gguf.reader: metadata and tensors of GGUF files, and what a bad file says."""

import numpy as np
import pytest

from kft.errors import KftError
from kft.models.gguf.reader import GGUFFile
from kft.models.gguf.reader import is_gguf
from tests.helpers.gguf_files import byte_level_vocabulary
from tests.helpers.gguf_files import gguf_llama_tensors
from tests.helpers.gguf_files import tiny_llama_backbone
from tests.helpers.gguf_files import write_llama_gguf


@pytest.fixture(scope="module")
def backbone():
    return tiny_llama_backbone()


@pytest.fixture(scope="module")
def tiny_file(backbone, tmp_path_factory):
    return write_llama_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf", backbone)


def test_metadata_comes_back_as_python_values(tiny_file):
    file = GGUFFile(tiny_file)
    tokens, merges, types = byte_level_vocabulary()
    assert file.architecture == "llama"
    assert file.get("llama.block_count") == 2
    assert file.get("llama.rope.freq_base") == 500.0
    assert file.get("tokenizer.ggml.add_bos_token") is False
    assert file.get("tokenizer.ggml.tokens") == tokens
    assert file.get("tokenizer.ggml.merges") == merges
    assert file.get("tokenizer.ggml.token_type") == types
    assert file.get("no.such.key", "default") == "default"
    assert not any(key.startswith("GGUF.") for key in file.metadata)


def test_tensors_come_back_in_pytorch_order_exactly(tiny_file, backbone):
    file = GGUFFile(tiny_file)
    written = gguf_llama_tensors(backbone)
    assert file.tensor_names == list(written)
    for name, value in written.items():
        np.testing.assert_array_equal(file.tensor(name, value.shape), value)


def test_quantized_tensors_are_dequantized_within_their_step(backbone, tmp_path):
    import gguf

    path = write_llama_gguf(tmp_path / "q8.gguf", backbone, qtype="Q8_0")
    file = GGUFFile(path)
    assert file._tensors["blk.0.attn_q.weight"].tensor_type == gguf.GGMLQuantizationType.Q8_0
    for name, value in gguf_llama_tensors(backbone).items():
        loaded = file.tensor(name)
        assert loaded.dtype == np.float32 and loaded.shape == value.shape
        # Q8_0: one float16 scale per 32 weights, at most max |w| / 127; rounding
        # errs half a step, the float16 scale up to 127 * 2**-11 of one more.
        step = np.abs(value).max() / 127 if value.ndim == 2 else 0.0
        assert np.abs(loaded - value).max() <= 0.6 * step + 1e-7, name


def _truncated(fraction):
    def write(path, tiny_file):
        data = open(tiny_file, "rb").read()
        path.write_bytes(data[: int(len(data) * fraction)])
    return write


BAD_FILES = [
    ("missing", None, "does not exist"),
    ("empty", lambda path, _: path.write_bytes(b""), "is not a GGUF file"),
    ("text", lambda path, _: path.write_text("not a model\n"), "is not a GGUF file"),
    ("cut in the header", _truncated(0.05), "truncated"),
    ("cut in the tensors", _truncated(0.9), "truncated"),
    ("last byte missing", _truncated(1 - 1e-6), "truncated"),
]


@pytest.mark.parametrize("what, write, message", BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_a_bad_file_is_one_clear_error(what, write, message, tiny_file, tmp_path):
    path = tmp_path / "model.gguf"
    if write is not None:
        write(path, tiny_file)
    with pytest.raises(KftError, match=message) as error:
        GGUFFile(path)
    assert str(path) in str(error.value)


def test_is_gguf_reads_the_magic(tiny_file, tmp_path):
    (tmp_path / "other.gguf").write_text("GGU")
    assert is_gguf(tiny_file)
    assert not is_gguf(tmp_path / "other.gguf") and not is_gguf(tmp_path / "absent.gguf")


def test_a_missing_tensor_or_key_names_itself(tiny_file):
    file = GGUFFile(tiny_file)
    with pytest.raises(KftError, match="no tensor 'blk.9.attn_q.weight'"):
        file.tensor("blk.9.attn_q.weight")
    with pytest.raises(KftError, match="has shape .* but the metadata describe"):
        file.tensor("output_norm.weight", (33,))
    with pytest.raises(KftError, match="lacks the metadata key 'llama.expert_count'"):
        file.require("llama.expert_count")
