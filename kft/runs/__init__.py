"""Run management: recipes and stages, the runner, run directories and what a run records."""

from kft.runs.recipe import Recipe
from kft.runs.recipe import Stage
