"""`kft lr-find`: the learning-rate sweep for one stage of a recipe."""

import keras

from kft.errors import KftError
from kft.runs.compiling import compile_stage
from kft.runs.run_directory import RunDirectory
from kft.runs.stages import apply_stage_trainable
from kft.runs.stages import steps_per_epoch
from kft.training.lr_finder import find_lr


def find_learning_rate(recipe, stage_number, overrides=None, data=None, output=None, **sweep):
    """Runs `kft.find_lr` with stage `stage_number`'s trainable selection and
    optimizer, from the model's initial weights.

    Writes `lr_find.png` and `lr_find.json` into a new run directory.

    Args:
        recipe: a `kft.Recipe`.
        stage_number: the stage, 1-based.
        overrides, data, output: as for `kft.runs.runner.run`.
        **sweep: `find_lr` options (`num_steps`, `start_lr`, `end_lr`).

    Returns:
        `(LRFinderResult, RunDirectory)`.
    """
    params = recipe.resolve(overrides, data=data)
    stages = recipe.build_stages(params)
    if not 1 <= stage_number <= len(stages):
        raise KftError(f"--stage must be 1..{len(stages)} for recipe {recipe.name!r}.")
    stage = stages[stage_number - 1]
    keras.utils.set_random_seed(int(getattr(params, "seed", 0)))
    dataset = recipe.build_data(params)
    model = recipe.build_model(params, dataset)
    dataset = recipe.fit_data(dataset, model, params)
    apply_stage_trainable(model, stage)
    compile_stage(model, recipe, stage, steps_per_epoch=steps_per_epoch(dataset))
    run_dir = RunDirectory.create(f"{recipe.name}-lr-find", output)
    run_dir.write_json("params.json", vars(params))
    result = find_lr(model, dataset.train, **sweep)
    result.plot(run_dir.path / "lr_find.png")
    run_dir.write_json("lr_find.json", {
        "stage": stage.name, "suggestion": result.suggestion, "valley": result.valley,
        "diverged": result.diverged, "lrs": result.lrs.tolist(), "losses": result.losses.tolist(),
    })
    return result, run_dir
