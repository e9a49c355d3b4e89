"""Evaluation: evaluators and the results store."""
