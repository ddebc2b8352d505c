"""Every `kft.` name the README shows resolves, so a moved module keeps its public path."""

import importlib
import re

import pytest

from tests.helpers.process import REPO

README = (REPO / "README.md").read_text()
# `kft.peft.apply_lora(`, `kft.freezing.Name`, and `from kft.x import y` lines.
DOTTED = sorted(set(re.findall(r"\bkft(?:\.[A-Za-z_]\w*)+", README)))
FROM_IMPORTS = sorted(set(
    f"{module}.{name.strip()}"
    for module, names in re.findall(r"^\s*from (kft[\w.]*) import ([\w, ]+)$", README, re.M)
    for name in names.split(",")
))


def _resolve(dotted):
    parts = dotted.split(".")
    value = importlib.import_module(parts[0])
    for i, part in enumerate(parts[1:], start=1):
        if not hasattr(value, part):
            # A submodule not imported by its package's __init__.
            importlib.import_module(".".join(parts[: i + 1]))
        value = getattr(value, part)
    return value


def test_readme_names_public_api():
    assert len(DOTTED) > 30, DOTTED  # The pattern still finds the README's API.


@pytest.mark.parametrize("dotted", DOTTED + FROM_IMPORTS)
def test_readme_name_resolves(dotted):
    assert _resolve(dotted) is not None
