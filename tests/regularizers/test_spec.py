"""`regularize=` strings name a regulariser, or fail listing the forms."""

import pytest

from kft.errors import KftError
from kft.regularizers import L2SP
from kft.regularizers import FeatureDistance
from kft.regularizers import OutputKL
from kft.regularizers import from_spec


@pytest.mark.parametrize("value, kind, settings", [
    ("l2sp:0.01", L2SP, {"alpha": 0.01, "beta": 0.0}),
    ("l2sp:0.01,0.001", L2SP, {"alpha": 0.01, "beta": 0.001}),
    (" L2SP: 1e-2 , 0 ", L2SP, {"alpha": 0.01, "beta": 0.0}),
    ("kl:0.1", OutputKL, {"weight": 0.1}),
    ("features:0.5", FeatureDistance, {"weight": 0.5}),
])
def test_forms(value, kind, settings):
    regularizer = from_spec(value)
    assert type(regularizer) is kind and not regularizer.bound
    assert {key: getattr(regularizer, key) for key in settings} == settings


def test_none_and_objects_pass_through():
    assert from_spec(None) is None
    regularizer = OutputKL(weight=0.2)
    assert from_spec(regularizer) is regularizer


@pytest.mark.parametrize("value", [
    "l2sp", "l2sp:", "l2sp:0", "l2sp:-1", "l2sp:0.1,-0.1", "l2sp:0.1,0.2,0.3", "l2sp:nan",
    "kl:0", "kl:0.1,0.2", "features:x", "ewc:0.1", "", 0.1, ["l2sp:0.1"],
])
def test_bad_values_list_the_forms(value):
    with pytest.raises(KftError) as error:
        from_spec(value)
    message = str(error.value)
    assert message.startswith(f"regularize={value!r} is not a regulariser")
    for form in ('"l2sp:ALPHA"', '"l2sp:ALPHA,BETA"', '"kl:WEIGHT"', '"features:WEIGHT"'):
        assert form in message
