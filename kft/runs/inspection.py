"""`kft info`: a recipe's layer groups and what each stage trains."""

import dataclasses

from kft import freezing
from kft.runs.stages import apply_stage_trainable


@dataclasses.dataclass
class Plan:
    """A recipe's model and stages, before anything trains.

    Attributes:
        model_name: the model's name.
        total: its parameters.
        groups: its `LayerGroup`s, input to output.
        stages: `(Stage, trainable parameters)` for each stage.
    """

    model_name: str
    total: int
    groups: list
    stages: list


def describe(recipe, params):
    """Builds the recipe's data and model and applies each stage's selection.

    Args:
        recipe: a `kft.Recipe`.
        params: the resolved params namespace.

    Returns:
        A `Plan` (`kft.console.Console.model_plan` prints it).
    """
    data = recipe.build_data(params)
    model = recipe.build_model(params, data)
    stages = recipe.build_stages(params)
    return Plan(
        model_name=model.name,
        total=model.count_params(),
        groups=freezing.layer_groups(model),
        stages=[(stage, apply_stage_trainable(model, stage)) for stage in stages],
    )
