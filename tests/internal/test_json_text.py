import json

import numpy as np

from kft.internal import json_text


def test_non_finite_numbers_become_null_and_numpy_values_plain():
    text = json_text.dumps({"loss": float("nan"), "best": np.float32(0.5),
                            "curve": np.array([1.0, np.inf, -np.inf]), "steps": (np.int64(3),),
                            "path": json_text})
    assert json.loads(text, parse_constant=lambda name: 1 / 0) == {
        "loss": None, "best": 0.5, "curve": [1.0, None, None], "steps": [3],
        "path": str(json_text)}
    assert text.endswith("}\n")
