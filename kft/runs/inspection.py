"""`kft info`: a recipe's layer groups and what each stage trains."""

import click

from kft import freezing
from kft.runs.runner import apply_stage_trainable


def describe(recipe, params):
    """Builds the recipe's data and model and prints groups and the stage plan.

    Args:
        recipe: a `kft.Recipe`.
        params: the resolved params namespace.
    """
    dataset = recipe.data(params)
    model = recipe.model(params, dataset)
    stages = recipe.build_stages(params)
    total = model.count_params()

    click.secho(f"\nModel {model.name!r}: {total:,} parameters", bold=True)
    click.secho("Layer groups (input to output):", bold=True)
    for group in freezing.layer_groups(model):
        click.echo(f"  {group.name:<24} {len(group.layers):>4} layers  {group.num_params:>12,} params")

    click.secho("Stages:", bold=True)
    for index, stage in enumerate(stages):
        trainable = apply_stage_trainable(model, stage)
        click.echo(
            f"  {index + 1}. {stage.name:<12} {stage.epochs} epoch(s), lr {stage.lr:g}, "
            f"trains {stage.train!r}: {trainable:,} of {total:,} "
            f"({100.0 * trainable / max(total, 1):.1f}%)"
        )
