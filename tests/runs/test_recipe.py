import textwrap

import pytest

from kft.errors import KftError
from kft.freezing import GradualUnfreezing
from kft.regularizers import L2SP
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


@pytest.mark.parametrize(
    "options, message",
    [
        ({"epochs": -1}, r"Stage 'head': epochs must be a whole number >= 0, got -1"),
        ({"epochs": 1.5}, r"epochs must be a whole number >= 0, got 1.5"),
        ({"epochs": True}, r"epochs must be a whole number >= 0, got True"),
        ({"lr": 0.0}, r"lr must be a number > 0, got 0.0"),
        ({"lr": float("nan")}, r"lr must be a number > 0, got nan"),
        ({"lr": "fast"}, r"lr must be a number > 0, got 'fast'"),
        ({"optimizer": "adagrad"}, r"unknown optimizer 'adagrad'; use one of adam, adamw, sgd"),
        ({"schedule": "step"}, r"unknown schedule 'step'; use None or one of constant"),
        ({"warmup": -0.1}, r"warmup must be a number of steps or a fraction of 0 or more"),
        ({"warmup": 2.5}, r"warmup=2.5 is neither a whole number of steps nor a fraction"),
        ({"warmup": "soon"}, r"warmup='soon' is not a number of steps"),
        ({"layer_decay": 0.0}, r"layer_decay must be None or in \(0, 1\]"),
        ({"layer_decay": 1.5}, r"layer_decay must be None or in \(0, 1\]"),
        ({"weight_decay": -1e-4}, r"weight_decay must be a number >= 0"),
        ({"train_bn": "yes"}, r"train_bn must be True or False"),
        ({"cache_features": "auto"}, r"cache_features must be None, True or False"),
        ({"callbacks": ["not a callback"]}, r"callbacks must be a list of Keras callbacks"),
        ({"early_stopping": 0}, r"early_stopping must be None or a patience in epochs >= 1, got 0"),
        ({"early_stopping": 2.5}, r"early_stopping must be None or a patience in epochs >= 1"),
        ({"early_stopping": True}, r"early_stopping must be None or a patience in epochs >= 1"),
        ({"regularize": "l2sp"}, r"regularize='l2sp' is not a regulariser; use None, "
                                 r'"l2sp:ALPHA", "l2sp:ALPHA,BETA", "kl:WEIGHT", "features:WEIGHT"'),
        ({"regularize": "l2sp:0.01,-1"}, r"regularize='l2sp:0.01,-1' is not a regulariser"),
        ({"regularize": "kl:0"}, r"regularize='kl:0' is not a regulariser"),
        ({"regularize": "dropout:0.1"}, r"regularize='dropout:0.1' is not a regulariser"),
        ({"regularize": 0.01}, r"regularize=0.01 is not a regulariser"),
        ({"regularize": "kl:0.1", "cache_features": True},
         r"regularize='kl:0.1' compares the model .* cache_features=True does not combine"),
        ({"regularize": "features:0.1", "callbacks": [GradualUnfreezing(every_epochs=1)]},
         r"does not combine with GradualUnfreezing"),
    ],
)
def test_bad_stage_settings_fail_when_the_stage_is_made(options, message):
    with pytest.raises(KftError, match=message):
        Stage(**{"name": "head", "epochs": 1, **options})


@pytest.mark.parametrize("options", [
    {"epochs": 0}, {"warmup": 0.06}, {"warmup": 50}, {"warmup": "0.5 epochs"},
    {"optimizer": "AdamW", "weight_decay": 0.01, "layer_decay": 1.0, "schedule": "one-cycle"},
    {"optimizer": lambda lr: None},
    {"regularize": None}, {"regularize": "l2sp:0.01"}, {"regularize": "l2sp:0.01,0.001"},
    {"regularize": "l2sp:0.01", "cache_features": True},
    {"regularize": "kl:0.1", "cache_features": False}, {"regularize": "features:0.1"},
    {"regularize": L2SP(alpha=0.1)}, {"early_stopping": 3},
])
def test_good_stage_settings_are_accepted(options):
    Stage(**{"name": "head", "epochs": 1, **options})


def test_a_stage_needs_a_name():
    with pytest.raises(KftError, match="A Stage needs a non-empty name, got ''"):
        Stage("", epochs=1)


def test_an_error_in_a_recipe_function_names_its_file_function_and_line(tmp_path):
    path = tmp_path / "broken.py"
    path.write_text(textwrap.dedent("""\
        import kft

        def load_rows(p):
            return {"rows": 1}["labels"]

        recipe = kft.Recipe(name="broken", params={}, data=load_rows, model=None,
                            stages=lambda p: [kft.Stage("s", epochs=1)])
        """))
    recipe = load(path)
    with pytest.raises(KftError) as raised:
        recipe.build_data(recipe.resolve())
    assert str(raised.value) == (
        f"{path}, line 4, in load_rows: the recipe's data() raised KeyError: 'labels' "
        "(KFT_DEBUG=1 shows the traceback).")
    assert isinstance(raised.value.__cause__, KeyError)


def test_recipe_digest_follows_the_file(tmp_path):
    from kft.runs.recipe import recipe_digest

    path = tmp_path / "r.py"
    path.write_text("import kft\nrecipe = kft.Recipe(name='x', params={}, data=None, "
                    "model=None, stages=lambda p: [])\n")
    first = recipe_digest(load(path))
    assert len(first) == 64 and recipe_digest(load(path)) == first
    path.write_text(path.read_text() + "# changed\n")
    assert recipe_digest(load(path)) != first
    assert recipe_digest(_recipe()) is None
