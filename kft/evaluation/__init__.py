"""Evaluation beyond Keras metrics: per-class reports, confusion matrices,
entity-level scores for taggers, scores of generated text, baselines, forgetting."""

from kft.evaluation import entities
from kft.evaluation import forgetting
from kft.evaluation import generation

from kft.evaluation.classification import ClassificationReport
from kft.evaluation.classification import evaluate
from kft.evaluation.classification import plot_confusion_matrix
from kft.evaluation.classification import report
from kft.evaluation.linear_probe import linear_probe
