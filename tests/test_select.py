"""Selectors: objects, string specs, combinations and their errors."""

import keras
import pytest

from kft.errors import KftError
from kft.freezing import All
from kft.freezing import Biases
from kft.freezing import Head
from kft.freezing import LastGroups
from kft.freezing import Name
from kft.freezing import Norms
from kft.freezing import TopLayers
from kft.freezing import Type
from kft.freezing import Where
from kft.freezing import parse_selector
from kft.model_tree import layer_tree
from kft.select import resolve
from tests.helpers.tiny_models import tiny_classifier


@pytest.fixture(scope="module")
def model():
    return tiny_classifier(blocks=4)


def _paths(model, select):
    return sorted(v.path for v in resolve(select, layer_tree(model)).variables.values())


def _bn(i):
    return [f"bn{i}/beta", f"bn{i}/gamma"]


def _conv(i):
    return [f"conv{i}/bias", f"conv{i}/kernel"]


HEAD = ["head_dense/bias", "head_dense/kernel"]


def test_all_selects_every_trainable_variable(model):
    assert _paths(model, "all") == sorted(v.path for v in model.trainable_variables)
    assert _paths(model, All()) == _paths(model, "all")


def test_head(model):
    assert _paths(model, "head") == HEAD
    assert _paths(model, Head()) == HEAD


def test_biases_are_bitfit_biases(model):
    expected = sorted([f"conv{i}/bias" for i in range(4)] + [f"bn{i}/beta" for i in range(4)])
    assert _paths(model, "biases") == sorted(expected + ["head_dense/bias"])
    assert _paths(model, Biases() - Head()) == expected


def test_norms_and_type(model):
    expected = sorted(p for i in range(4) for p in _bn(i))
    assert _paths(model, "norms") == expected
    assert _paths(model, "type:BatchNormalization") == expected
    assert _paths(model, Type(keras.layers.BatchNormalization)) == expected
    assert _paths(model, Norms()) == expected


def test_type_matches_subclasses(model):
    # Functional is a subclass of Model: the nested backbone is one (the root
    # itself is not a candidate).
    assert _paths(model, "type:Model") == _paths(model, "name:^backbone$")


def test_top_counts_weighted_layers_from_the_output(model):
    assert _paths(model, "top:1") == HEAD
    assert _paths(model, "top:3") == sorted(HEAD + _bn(3) + _conv(3))
    assert _paths(model, TopLayers(3)) == _paths(model, "top:3")


def test_groups_are_the_last_layer_groups(model):
    assert _paths(model, "groups:1") == HEAD
    assert _paths(model, "groups:2") == sorted(HEAD + _bn(3) + _conv(3))
    assert _paths(model, LastGroups(2)) == _paths(model, "groups:2")


def test_name_searches_paths_and_selects_whole_subtrees(model):
    assert _paths(model, "name:conv[23]$") == sorted(_conv(2) + _conv(3))
    assert _paths(model, "name:^backbone$") == sorted(
        p for i in range(4) for p in _bn(i) + _conv(i)
    )
    assert _paths(model, Name("bn1")) == _bn(1)


def test_callable_gets_path_and_layer(model):
    seen = []

    def pick(path, layer):
        seen.append(path)
        return isinstance(layer, keras.layers.Conv2D) and path.endswith("0")

    assert _paths(model, pick) == _conv(0)
    assert "backbone/conv0" in seen and "head_dense" in seen
    assert _paths(model, Where(pick)) == _conv(0)


def test_comma_is_a_union_and_regexes_may_hold_commas(model):
    assert _paths(model, "head,name:conv0") == sorted(HEAD + _conv(0))
    assert _paths(model, "name:conv[0-9]{1,1}$,head") == sorted(
        HEAD + [p for i in range(4) for p in _conv(i)]
    )
    assert _paths(model, ["head", Name("bn0")]) == sorted(HEAD + _bn(0))


def test_selectors_combine(model):
    assert _paths(model, Name("^backbone") & Biases()) == sorted(
        [f"conv{i}/bias" for i in range(4)] + [f"bn{i}/beta" for i in range(4)]
    )
    assert _paths(model, All() - Name("^backbone")) == HEAD
    assert _paths(model, Head() | Name("bn2")) == sorted(HEAD + _bn(2))
    assert repr(parse_selector("head,top:2")) == '("head" | "top:2")'


def test_matching_nothing_lists_candidates(model):
    root = layer_tree(model)
    with pytest.raises(KftError, match=r'"name:conv7" matches nothing.*backbone/conv0'):
        resolve("name:conv7", root)
    with pytest.raises(KftError, match=r"Layer types in this model: .*BatchNormalization"):
        resolve("type:LayerNormalization", root)
    with pytest.raises(KftError, match=r'"head" matches nothing.*top-level layers are: input'):
        resolve("head", layer_tree(model.get_layer("backbone")))
    # Every part of a union must match something: a typo is not hidden.
    with pytest.raises(KftError, match=r"name:typo"):
        resolve("head,name:typo", root)
    with pytest.raises(KftError, match=r"combination does not"):
        resolve(Head() & Norms(), root)


@pytest.mark.parametrize(
    "spec, message",
    [
        ("bogus:1", r"Unknown selection 'bogus:1'.*\"top:N\""),
        ("conv(", r"not a valid regular expression"),
        ("top:0", r"positive whole number"),
        ("groups:two", r"positive whole number"),
        ("name:(", r"not a valid regular expression"),
        ("", r"is empty"),
    ],
)
def test_bad_specs_are_clear_errors(spec, message):
    with pytest.raises(KftError, match=message):
        parse_selector(spec)


def test_bad_select_type_is_an_error(model):
    with pytest.raises(KftError, match="is not a selection"):
        resolve(42, layer_tree(model))


# One language in every argument that names layers.


def _letters_model():
    """Dense layers `a`, `b`, `q`, `v`, `bias_net` side by side, summed."""
    x = keras.Input((4,))
    names = ("a", "b", "q", "v", "bias_net")
    outputs = [keras.layers.Dense(2, name=name)(x) for name in names]
    return keras.Model(x, keras.layers.Add(name="sum")(outputs), name="letters")


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("a", ["a"]),
        ("q|v", ["q", "v"]),
        (["q", "v"], ["q", "v"]),
        ("name:q|v", ["q", "v"]),
        ("q,v", ["q", "v"]),
        ("bias_.*", ["bias_net"]),
        ("b", ["b"]),  # whole segments: not bias_net, not a variable named bias
    ],
)
def test_a_pattern_means_the_same_layers_in_every_argument(spec, expected):
    from kft import freeze, peft, unfreeze
    from kft.optimizers import LayerwiseLR

    names = ("a", "b", "q", "v", "bias_net")
    model = _letters_model()
    freeze(model)
    unfreeze(model, spec)
    assert sorted({v.path.split("/")[0] for v in model.trainable_variables}) == expected

    keys = [spec] if isinstance(spec, str) else spec
    for given_model in (model, None):  # resolved on the tree, or on Keras' variable paths
        scaled = LayerwiseLR(keras.optimizers.SGD(0.1), multipliers={key: 0.5 for key in keys},
                             model=given_model)
        scaled.build(model.variables)
        slow = sorted({n for n in names for v in model.get_layer(n).weights
                       if scaled.multiplier(v) == 0.5})
        assert slow == expected

    lora_model = _letters_model()
    peft.apply_lora(lora_model, targets=spec, rank=1)
    assert sorted(p for p, _ in peft.lora_layers(lora_model)) == expected


def test_patterns_that_match_no_whole_segment_match_nothing():
    model = _letters_model()
    root = layer_tree(model)
    # re.search would find "a" inside "bias"; whole segments do not.
    assert _paths(model, "a") == ["a/bias", "a/kernel"]
    assert _paths(model, "b/bias") == ["b/bias"]
    with pytest.raises(KftError, match=r'"name:ia" matches nothing'):
        resolve("ia", root)


def test_a_block_selects_every_layer_below_it(tiny_bert_dir):
    from kft import peft
    from kft.models import text

    classifier = text.text_classifier(tiny_bert_dir, num_classes=2, sequence_length=8)
    peft.apply_lora(classifier, targets="transformer_layer_0", rank=1)
    targeted = [p for p, _ in peft.lora_layers(classifier)]
    assert targeted and all("/transformer_layer_0/" in p for p in targeted)
    assert {p.rsplit("/", 1)[-1] for p in targeted} >= {
        "query", "key", "value", "attention_output", "feedforward_intermediate_dense",
        "feedforward_output_dense"}
