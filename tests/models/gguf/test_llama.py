"""kft.models.gguf.llama: a llama.cpp file computes what the model it came from computed.

The tiny files are written from a random keras-hub LlamaBackbone the way llama.cpp's
converter writes them (tests/helpers/gguf_files.py), query and key rows permuted.
Two references: the original backbone, and llama.cpp's own computation (rotary on
adjacent pairs, on the permuted weights as stored) written out in NumPy.
"""

import keras
import numpy as np
import pytest

from kft.errors import KftError
from kft.models.gguf import llama
from kft.models.gguf.loader import load_causal_lm
from tests.helpers.gguf_files import gguf_llama_tensors
from tests.helpers.gguf_files import llama_cpp_logits
from tests.helpers.gguf_files import llama_cpp_permute
from tests.helpers.gguf_files import tiny_llama_backbone
from tests.helpers.gguf_files import write_llama_gguf

TOKENS = np.array([[5, 80, 120, 7, 263, 3, 9, 44, 270, 30]])


def _inputs(ids=TOKENS):
    return {"token_ids": ids, "padding_mask": np.ones_like(ids)}


def _logits(backbone, ids=TOKENS):
    return np.asarray(backbone.token_embedding(backbone(_inputs(ids)), reverse=True))


@pytest.mark.parametrize("heads, kv_heads", [(4, 4), (4, 2), (4, 1)])
def test_unpermute_inverts_llama_cpp_permute(heads, kv_heads):
    rng = np.random.default_rng(0)
    query = rng.standard_normal((heads * 8, 32))
    key = rng.standard_normal((kv_heads * 8, 32))
    np.testing.assert_array_equal(
        llama.unpermute_rotary(llama_cpp_permute(query, heads, heads), heads), query)
    np.testing.assert_array_equal(
        llama.unpermute_rotary(llama_cpp_permute(key, heads, kv_heads), kv_heads), key)
    assert not np.array_equal(llama_cpp_permute(query, heads, heads), query)


CONFIGURATIONS = {
    "tied, grouped-query": dict(tie=True, heads=4, kv_heads=2),
    "untied, multi-head": dict(tie=False, heads=4, kv_heads=4, seed=1),
    "one key/value head, 3 layers": dict(tie=True, heads=4, kv_heads=1, layers=3, seed=2,
                                         rope_theta=10000.0, epsilon=1e-6),
}


@pytest.mark.parametrize("settings", CONFIGURATIONS.values(), ids=CONFIGURATIONS)
def test_a_float32_file_reproduces_the_original_logits(settings, tmp_path):
    backbone = tiny_llama_backbone(**settings)
    path = write_llama_gguf(tmp_path / "tiny.gguf", backbone)
    model = load_causal_lm(path, sequence_length=16)

    assert model.backbone.tie_word_embeddings == settings["tie"]
    assert model.backbone.num_key_value_heads == settings["kv_heads"]
    assert model.backbone.rope_max_wavelength == backbone.rope_max_wavelength
    assert model.backbone.layer_norm_epsilon == pytest.approx(backbone.layer_norm_epsilon)
    expected = _logits(backbone)
    np.testing.assert_allclose(np.asarray(model(_inputs())), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(llama_cpp_logits(path, TOKENS[0]), expected[0], rtol=1e-4,
                               atol=1e-4)


def test_without_unpermuting_the_logits_are_wrong(tmp_path, monkeypatch):
    backbone = tiny_llama_backbone()
    path = write_llama_gguf(tmp_path / "tiny.gguf", backbone)
    monkeypatch.setattr(llama, "unpermute_rotary", lambda weight, heads: weight)
    wrong = np.asarray(load_causal_lm(path, sequence_length=16)(_inputs()))
    assert np.abs(wrong - _logits(backbone)).max() > 0.1


# 4 bits move a random tiny model far from its float32 self (SmolLM2's Q4_1 file is
# tested for what it says instead): there the file's own computation is the reference.
@pytest.mark.parametrize("qtype, tolerance", [("F16", 0.01), ("Q8_0", 0.06), ("Q4_1", None)])
def test_a_quantized_file_computes_what_its_dequantized_weights_say(qtype, tolerance, tmp_path):
    backbone = tiny_llama_backbone()
    path = write_llama_gguf(tmp_path / "tiny.gguf", backbone, qtype=qtype)
    got = np.asarray(load_causal_lm(path, sequence_length=16)(_inputs()))
    np.testing.assert_allclose(got, llama_cpp_logits(path, TOKENS[0])[None], rtol=1e-4,
                               atol=1e-4)
    expected = _logits(backbone)
    assert np.abs(got - expected).max() > 0  # The quantization did happen.
    if tolerance is not None:
        assert np.abs(got - expected).max() <= tolerance * np.abs(expected).max()


def _extra_tensor(name, shape):
    def tensors(backbone):
        written = gguf_llama_tensors(backbone)
        written[name] = np.ones(shape, "float32")
        return written
    return tensors


def _without(name):
    def tensors(backbone):
        return {key: value for key, value in gguf_llama_tensors(backbone).items() if key != name}
    return tensors


UNMAPPABLE = [
    ("mixture of experts", dict(metadata={"llama.expert_count": 4}), "mixture of 4 experts"),
    ("yarn rotary scaling", dict(metadata={"llama.rope.scaling.type": "yarn"}), "'yarn' scaling"),
    ("rope frequency factors", dict(tensors=_extra_tensor("rope_freqs.weight", (4,))),
     "per-frequency factors"),
    ("partial rotary", dict(metadata={"llama.rope.dimension_count": 4}),
     "rope.dimension_count is 4"),
    ("attention bias", dict(tensors=_extra_tensor("blk.0.attn_q.bias", (32,))),
     r"does not place \(blk.0.attn_q.bias\)"),
    ("missing tensor", dict(tensors=_without("blk.1.ffn_up.weight")),
     "no tensor 'blk.1.ffn_up.weight'"),
    ("missing metadata", dict(skip=("llama.block_count",)), "lacks the metadata key 'llama.block_count'"),
    ("shape against metadata", dict(metadata={"llama.feed_forward_length": 48}),
     r"'blk.0.ffn_gate.weight' .* shape \(64, 32\), but the metadata describe \(48, 32\)"),
]


@pytest.mark.parametrize("what, settings, message", UNMAPPABLE, ids=[u[0] for u in UNMAPPABLE])
def test_a_variant_keras_hub_cannot_compute_is_refused(what, settings, message, tmp_path):
    keras.utils.set_random_seed(0)
    backbone = tiny_llama_backbone()
    if "tensors" in settings:
        settings = dict(settings, tensors=settings["tensors"](backbone))
    path = write_llama_gguf(tmp_path / "variant.gguf", backbone, **settings)
    with pytest.raises(KftError, match=message) as error:
        load_causal_lm(path, sequence_length=16)
    assert str(path) in str(error.value)
