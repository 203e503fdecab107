"""Evaluation: the runner (tasks x models x decode configs) and, later, reports."""
