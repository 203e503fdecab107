"""Metrics: AUP (and, with the evaluation work, TPF/TPS aggregation). No model code here."""

from d3llm.metrics.aup import ALPHA, aup, aup_table, weight

__all__ = ["ALPHA", "aup", "aup_table", "weight"]
