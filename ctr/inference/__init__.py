"""Predictions from an exported artifact: in process (`load(...).predict(rows)`) or over files (`scoring`)."""

from ctr.inference.predictor import BadRowError, Predictor, load

__all__ = ["BadRowError", "Predictor", "load"]
