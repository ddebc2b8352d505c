"""Evaluation metrics beyond Keras' own: entity-level scores for taggers."""

from kft.metrics import entities
