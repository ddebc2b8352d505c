import textwrap

import pytest

from kft.errors import KftError
from kft.runs.recipe import Recipe, Stage, load
from tests.helpers.process import REPO


def _recipe(**params):
    return Recipe(
        name="demo",
        params=params,
        data=lambda p: None,
        model=lambda p, data: None,
        stages=lambda p: [Stage("head", epochs=p.epochs)],
    )


def test_set_converts_to_the_type_of_the_default():
    recipe = _recipe(lr=1e-3, epochs=2, augment=True, backbone="resnet50", sizes=[1, 2], extra=None)
    params = recipe.resolve(
        ["lr=3e-5", "epochs=4", "augment=false", "backbone=vgg16", "sizes=[3, 4]", "extra=none"]
    )
    assert params.lr == 3e-5 and isinstance(params.lr, float)
    assert params.epochs == 4 and isinstance(params.epochs, int)
    assert params.augment is False
    assert params.backbone == "vgg16"
    assert params.sizes == [3, 4]
    assert params.extra is None


def test_defaults_are_kept_and_not_mutated():
    recipe = _recipe(lr=1e-3, epochs=2)
    recipe.resolve(["lr=0.5"])
    assert recipe.resolve().lr == 1e-3


def test_run_params_are_accepted_without_declaring_them():
    recipe = _recipe(lr=1e-3, accumulate=4)
    params = recipe.resolve()
    assert (params.strategy, params.precision, params.accumulate) == ("auto", "float32", 4)
    params = recipe.resolve(["strategy=mirrored", "precision=mixed_bfloat16", "accumulate=2"])
    assert (params.strategy, params.precision, params.accumulate) == ("mirrored", "mixed_bfloat16", 2)


def test_unknown_key_lists_the_known_ones():
    with pytest.raises(KftError, match=r"Unknown hyperparameter 'lrr'.*Known: accumulate, epochs, lr, precision, strategy"):
        _recipe(lr=1e-3, epochs=2).resolve(["lrr=1"])


@pytest.mark.parametrize(
    "item, message",
    [
        ("epochs=two", r"--set epochs=two: expected a int like the default 2"),
        ("augment=maybe", r"expected a bool"),
        ("lr", r"--set expects key=value"),
    ],
)
def test_bad_values_are_clear_errors(item, message):
    with pytest.raises(KftError, match=message):
        _recipe(lr=1e-3, epochs=2, augment=True).resolve([item])


def test_data_sets_the_data_param_and_needs_one():
    assert _recipe(data="a").resolve(data="b").data == "b"
    with pytest.raises(KftError, match="takes no --data"):
        _recipe(lr=1.0).resolve(data="b")


def test_load_reads_the_recipe_object(tmp_path):
    path = tmp_path / "r.py"
    path.write_text(textwrap.dedent("""
        import kft
        recipe = kft.Recipe(name="x", params={"a": 1}, data=None, model=None,
                            stages=lambda p: [kft.Stage("s", epochs=p.a)])
    """))
    recipe = load(path)
    assert recipe.name == "x"
    assert recipe.build_stages(recipe.resolve())[0].epochs == 1


@pytest.mark.parametrize(
    "source, message",
    [
        ("x = 1\n", r"must define `recipe = kft.Recipe"),
        ("def broken(:\n", r"line 1 failed to load: SyntaxError"),
        ("import kft\nraise RuntimeError('boom')\n", r"line 2 failed to load: RuntimeError: boom"),
    ],
)
def test_bad_recipe_files_are_clear_errors(tmp_path, source, message):
    path = tmp_path / "bad.py"
    path.write_text(source)
    with pytest.raises(KftError, match=message):
        load(path)


def test_missing_recipe_file():
    with pytest.raises(KftError, match="does not exist"):
        load("/nonexistent/recipe.py")


def test_stages_must_be_stages():
    recipe = Recipe(name="x", params={}, data=None, model=None, stages=lambda p: ["nope"])
    with pytest.raises(KftError, match="stages must be kft.Stage"):
        recipe.build_stages(recipe.resolve())


@pytest.mark.parametrize("path", sorted((REPO / "recipes").glob("*.py")), ids=lambda p: p.name)
def test_shipped_recipes_load_and_resolve_their_defaults(path):
    loaded = load(path)
    params = loaded.resolve()
    assert vars(params).keys() >= set(loaded.params)
    assert loaded.build_stages(params)
